"""Panoptic quality on hand-computed examples and against a literal panopticapi-style loop;
panoptic fusion rules on constructed cases; the semantic FPN head's size against Detectron2's;
Panoptic FPN forward in train and eval mode."""

import pytest
import torch

from segcourse.data import InstanceTargets, ShapesDataset
from segcourse.metrics import panoptic_quality
from segcourse.models.panoptic_fpn import (
    PAPER,
    VOID,
    PanopticFPN,
    SemanticFPNHead,
    panoptic_fpn,
    panoptic_fusion,
)

THINGS, STUFFS = [1], [0]


def pan(category, instance):
    return torch.stack([torch.as_tensor(category), torch.as_tensor(instance)], dim=-1)


# 4 x 4 scene: a thing (category 1, id 1) in the two left columns, stuff 0 elsewhere
CAT = torch.tensor([[1, 1, 0, 0]] * 4)
INST = torch.tensor([[1, 1, 0, 0]] * 4)


def test_perfect_prediction_is_one():
    target = pan(CAT, INST)
    r = panoptic_quality(target, target, THINGS, STUFFS)
    assert (r["pq"], r["sq"], r["rq"], r["n"]) == (1.0, 1.0, 1.0, 2)
    # instance ids are labels, not values: renumbering the objects changes nothing; stuff
    # pixels' instance ids are ignored
    renumbered = pan(CAT, INST * 7 + (CAT == 0) * 3)
    assert panoptic_quality(renumbered, target, THINGS, STUFFS)["pq"] == 1.0


def test_split_segment_by_hand():
    # the prediction splits the thing: rows 0-2 (6 px, id 1) and row 3 (2 px, id 2)
    inst = INST.clone()
    inst[3, :2] = 2
    r = panoptic_quality(pan(CAT, inst), pan(CAT, INST), THINGS, STUFFS)
    # id 1: IoU 6 / 8 = 0.75 > 0.5 -> TP; id 2: IoU 2 / 8 -> FP. Thing: SQ 0.75, RQ 1 / 1.5.
    thing = r["per_class"][1]
    assert (thing["tp"], thing["fp"], thing["fn"]) == (1, 1, 0)
    assert thing["sq"] == pytest.approx(0.75)
    assert thing["rq"] == pytest.approx(2 / 3)
    assert thing["pq"] == pytest.approx(0.5)
    assert r["per_class"][0]["pq"] == 1.0
    assert r["pq"] == pytest.approx((0.5 + 1.0) / 2)
    assert r["sq"] == pytest.approx((0.75 + 1.0) / 2)
    assert r["rq"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert r["things"]["pq"] == pytest.approx(0.5) and r["stuff"]["pq"] == 1.0


def test_void_pixels_leave_the_union_and_excuse_false_positives():
    # target: column 2 is void (category 9 is neither thing nor stuff)
    cat, inst = CAT.clone(), INST.clone()
    cat[:, 2] = 9
    target = pan(cat, inst)
    # prediction: the thing spreads over the void column (12 px) -> union = 12 + 8 - 8 - 4 = 8
    pcat, pinst = CAT.clone(), INST.clone()
    pcat[:, 2], pinst[:, 2] = 1, 1
    r = panoptic_quality(pan(pcat, pinst), target, THINGS, STUFFS)
    assert r["per_class"][1]["sq"] == 1.0 and r["pq"] == 1.0
    # a second predicted thing lying 3/4 on void is not a false positive ...
    pinst[:3, 2] = 2
    pcat[3, 2], pinst[3, 2] = 1, 2
    pcat[3, 3], pinst[3, 3] = 1, 2  # 3 void px + 1 stuff px
    r = panoptic_quality(pan(pcat, pinst), target, THINGS, STUFFS)
    assert r["per_class"][1]["fp"] == 0
    # ... but one lying half on void (2 of 4 px, not more than half) is
    pinst[:, 2], pcat[:, 2] = 0, 0  # void column predicted as stuff
    pcat[2:4, 2:4], pinst[2:4, 2:4] = 1, 2
    r = panoptic_quality(pan(pcat, pinst), target, THINGS, STUFFS)
    assert r["per_class"][1]["fp"] == 1


def test_missed_thing_and_unlabelled_prediction_pixels():
    cat, inst = CAT.clone(), INST.clone()
    cat[:, 3], inst[:, 3] = 1, 2  # a second thing in the last column
    target = pan(cat, inst)
    pcat = CAT.clone()
    pcat[:, 3] = -1  # fusion left these pixels void: no segment, the object is missed
    r = panoptic_quality(pan(pcat, INST), target, THINGS, STUFFS)
    thing = r["per_class"][1]
    assert (thing["tp"], thing["fp"], thing["fn"]) == (1, 0, 1)
    assert thing["rq"] == pytest.approx(1 / 1.5) and thing["pq"] == pytest.approx(2 / 3)


def test_classes_absent_from_both_maps_are_not_averaged():
    target = pan(CAT, INST)
    r = panoptic_quality(target, target, [1, 5], [0, 6])
    assert r["n"] == 2 and set(r["per_class"]) == {0, 1}
    only_stuff = pan(torch.zeros(4, 4, dtype=torch.long), torch.zeros(4, 4, dtype=torch.long))
    r = panoptic_quality(only_stuff, only_stuff.clone(), [1], [0])
    assert r["things"]["n"] == 0 and r["things"]["pq"] != r["things"]["pq"]  # NaN: no things at all


def test_batch_accumulates_counts_over_images():
    perfect = pan(CAT, INST)
    inst = INST.clone()
    inst[3, :2] = 2
    r = panoptic_quality(torch.stack([perfect, pan(CAT, inst)]), torch.stack([perfect, perfect]),
                         THINGS, STUFFS)
    thing = r["per_class"][1]
    # TPs with IoU 1 and 0.75, one FP: SQ 0.875, RQ 2 / 2.5, PQ 1.75 / 2.5
    assert (thing["tp"], thing["fp"]) == (2, 1)
    assert thing["pq"] == pytest.approx(1.75 / 2.5)


def panoptic_quality_reference(preds, target, things, stuffs):
    """panopticapi's pq_compute_single_core + pq_average, with dicts, one image at a time."""
    known = set(things) | set(stuffs)
    stat = {c: [0.0, 0, 0, 0] for c in known}
    for p_img, t_img in zip(preds.reshape(-1, *preds.shape[-3:]),
                            target.reshape(-1, *target.shape[-3:])):
        def segments(img):  # per pixel its segment (None: void / unlabelled), and segment areas
            labels = [(c, 0 if c in stuffs else i) if c in known else None
                      for c, i in img.reshape(-1, 2).tolist()]
            area = {}
            for lab in labels:
                if lab is not None:
                    area[lab] = area.get(lab, 0) + 1
            return labels, area
        p_lab, p_area = segments(p_img)
        t_lab, t_area = segments(t_img)
        joint = {}
        for a, b in zip(p_lab, t_lab):
            joint[(a, b)] = joint.get((a, b), 0) + 1
        p_matched, t_matched = set(), set()
        for (a, b), inter in joint.items():
            if a is None or b is None or a[0] != b[0]:
                continue
            union = p_area[a] + t_area[b] - inter - joint.get((a, None), 0)
            if inter / union > 0.5:
                stat[b[0]][0] += inter / union
                stat[b[0]][1] += 1
                p_matched.add(a)
                t_matched.add(b)
        for b in t_area:
            if b not in t_matched:
                stat[b[0]][3] += 1
        for a in p_area:
            if a not in p_matched and joint.get((a, None), 0) / p_area[a] <= 0.5:
                stat[a[0]][2] += 1
    pqs, sqs, rqs = [], [], []
    for iou, tp, fp, fn in stat.values():
        if tp + fp + fn == 0:
            continue
        pqs.append(iou / (tp + fp / 2 + fn / 2))
        sqs.append(iou / tp if tp else 0.0)
        rqs.append(tp / (tp + fp / 2 + fn / 2))
    return sum(pqs) / len(pqs), sum(sqs) / len(sqs), sum(rqs) / len(rqs)


@pytest.mark.parametrize("seed", range(6))
def test_matches_a_literal_panopticapi_loop_on_random_maps(seed):
    g = torch.Generator().manual_seed(seed)

    def blocky(void):  # 3 x 4 blocks of 4 x 4 pixels, 15% of pixels re-drawn at random
        def blocks(high):
            return torch.randint(0, high, (2, 3, 4), generator=g).repeat_interleave(4, 1) \
                .repeat_interleave(4, 2)
        cat, inst = blocks(5 + void), blocks(3)
        noise = torch.rand(cat.shape, generator=g) < 0.15
        cat = torch.where(noise, torch.randint(0, 5 + void, cat.shape, generator=g), cat)
        return torch.stack([torch.where(cat == 5, -1, cat), inst], dim=-1)

    target = blocky(1)
    preds = torch.where(torch.rand(target.shape[:-1] + (1,), generator=g) < 0.3, blocky(1), target)
    things, stuffs = [2, 3, 4], [0, 1]
    r = panoptic_quality(preds, target, things, stuffs)
    pq, sq, rq = panoptic_quality_reference(preds, target, things, stuffs)
    assert (r["pq"], r["sq"], r["rq"]) == (pytest.approx(pq), pytest.approx(sq), pytest.approx(rq))


def test_panoptic_quality_rejects_bad_input():
    good = pan(CAT, INST)
    with pytest.raises(ValueError, match="H, W, 2"):
        panoptic_quality(CAT, CAT, THINGS, STUFFS)
    with pytest.raises(ValueError, match="integer"):
        panoptic_quality(good.float(), good.float(), THINGS, STUFFS)
    with pytest.raises(ValueError, match="same shape"):
        panoptic_quality(good[:2], good, THINGS, STUFFS)
    with pytest.raises(ValueError, match="disjoint"):
        panoptic_quality(good, good, [0, 1], [1])


# --- panoptic fusion --------------------------------------------------------------------------

def box_mask(y0, y1, x0, x1, shape=(8, 8)):
    m = torch.zeros(shape, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def test_fusion_higher_score_wins_overlaps_and_duplicates_are_dropped():
    masks = torch.stack([box_mask(0, 4, 0, 4),    # score 0.6
                         box_mask(2, 6, 2, 6),    # score 0.9: placed first
                         box_mask(2, 6, 3, 6),    # score 0.8: 12 px, all under the 0.9 one:
                         #                          dropped
                         box_mask(6, 8, 6, 8)])   # score 0.3: below the score threshold
    scores = torch.tensor([0.6, 0.9, 0.8, 0.3])
    semantic = torch.zeros(8, 8, dtype=torch.long)
    out = panoptic_fusion(masks, scores, torch.tensor([2, 3, 3, 4]), semantic, [0],
                          stuff_area_limit=1)
    category, instance = out[..., 0], out[..., 1]
    assert (instance[2:6, 2:6] == 1).all() and (category[2:6, 2:6] == 3).all()
    # the 0.6 instance overlaps the placed one on 4 of 16 px (25% <= 50%): kept, minus the overlap
    expected = box_mask(0, 4, 0, 4) & ~box_mask(2, 6, 2, 6)
    assert torch.equal(instance == 2, expected) and (category[expected] == 2).all()
    assert not (instance == 3).any() and not (category == 4).any()
    # stuff fills the rest with instance id 0
    free = ~(box_mask(0, 4, 0, 4) | box_mask(2, 6, 2, 6))
    assert (category[free] == 0).all() and (instance[free] == 0).all()


def test_fusion_overlap_threshold_boundary():
    big, half = box_mask(0, 4, 0, 4), box_mask(0, 4, 2, 6)  # half of `half` lies under `big`
    args = (torch.stack([big, half]), torch.tensor([0.9, 0.8]), torch.tensor([2, 2]),
            torch.full((8, 8), 7), [0])
    # 0.5 is not > 0.5
    assert (panoptic_fusion(*args, overlap_threshold=0.5)[..., 1] == 2).sum() == 8
    assert (panoptic_fusion(*args, overlap_threshold=0.49)[..., 1] == 2).sum() == 0


def test_fusion_small_stuff_regions_and_leftovers_are_void():
    semantic = torch.zeros(8, 8, dtype=torch.long)
    semantic[:, 6:] = 1      # stuff 1: 16 px, 8 of them under the object -> 8 free px
    semantic[0, 0:2] = 7     # the semantic head's "thing" class: never used to fill
    masks = box_mask(4, 8, 4, 8)[None]
    def fuse(limit):
        return panoptic_fusion(masks, torch.tensor([0.9]), torch.tensor([2]), semantic, [0, 1],
                               stuff_area_limit=limit)

    out = fuse(8)
    # the object keeps its pixels
    assert (out[4:, 4:, 0] == 2).all() and (out[4:, 4:, 1] == 1).all()
    assert (out[:4, 6:, 0] == 1).all()                                   # 8 free px >= 8: filled
    assert (out[0, 0:2] == torch.tensor([VOID, 0])).all()                # "thing" class: void
    out = fuse(9)
    assert (out[:4, 6:] == torch.tensor([VOID, 0])).all()                # 8 < 9: left void
    assert (out[1:4, 0:6, 0] == 0).all()                                 # stuff 0 is big enough


def test_fusion_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="must agree"):
        panoptic_fusion(torch.zeros(2, 8, 8, dtype=torch.bool), torch.zeros(1), torch.zeros(2),
                        torch.zeros(8, 8), [0])


# --- the model --------------------------------------------------------------------------------

def test_semantic_head_size_matches_detectron2():
    # Detectron2 SemSegFPNHead on P2..P5 (256 channels), conv_dims 128, GroupNorm(32), 54 COCO
    # panoptic classes (53 stuff + "things"): P2 and P3 one 3x3 conv each, P4 two, P5 three, no
    # conv bias under GN: 4 * 256*128*9 + 3 * 128*128*9 + 7 GN * 256 + (128*54 + 54) = 1,630,774.
    head = SemanticFPNHead(256, 54, 128)
    assert sum(p.numel() for p in head.parameters()) == 1_630_774
    assert [len(h) for h in head.scale_heads] == [1, 1, 2, 3]
    out = head([torch.rand(1, 256, 24 // s, 32 // s) for s in (1, 2, 4, 8)])
    assert out.shape == (1, 54, 96, 128)  # stride 4 -> input size


def test_paper_panoptic_fpn_is_mask_rcnn_plus_the_semantic_head():
    # COCO panoptic: 80 things, 53 stuff. Mask R-CNN with 81 classes is torchvision's 44,401,393
    # minus 10 classes of predictors: box scores 10 * (1024 + 1), box deltas 40 * (1024 + 1),
    # mask logits 10 * (256 + 1) = 53,820; plus Detectron2's semantic head above (1,630,774).
    with torch.device("meta"):
        net = panoptic_fpn(range(53, 133), range(53), paper=True)
    assert sum(p.numel() for p in net.parameters()) == 44_401_393 - 53_820 + 1_630_774
    assert (PAPER.semantic_channels, PAPER.stuff_area_limit, PAPER.depth) == (128, 4096, 50)
    assert PAPER.frozen_batchnorm and PanopticFPN.returns_losses


def test_panoptic_fpn_config_overrides_and_errors():
    net = panoptic_fpn((2, 3, 4), (0, 1), semantic_channels=16, stuff_area_limit=5)
    assert net.semantic_head.predictor.in_channels == 16 and net.config.stuff_area_limit == 5
    assert net.mask_rcnn.config is net.config and net.config.num_classes == 4
    with pytest.raises(ValueError, match="unknown PanopticFPNConfig field"):
        panoptic_fpn((2, 3, 4), (0, 1), semantic_chanels=16)
    with pytest.raises(ValueError, match="must not share"):
        panoptic_fpn((1, 2), (0, 1))
    with pytest.raises(ValueError, match="num_classes"):
        PanopticFPN((2, 3), (0, 1), PAPER)  # PAPER has Mask R-CNN's default 4 classes, not 3


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return panoptic_fpn((2, 3, 4), (0, 1))


def test_panoptic_fpn_train_mode(model):
    ds = ShapesDataset(num_samples=2, size=64, seed=0, void_border=1)
    images, targets = InstanceTargets.collate_fn([InstanceTargets(ds)[i] for i in range(2)])
    losses = model.train()(images, targets)
    assert "loss_semantic" in losses and len(losses) == 6
    assert all(torch.isfinite(v) for v in losses.values())
    del targets[0]["semantic"]
    with pytest.raises(ValueError, match="'semantic'"):
        model.train()(images, targets)


@pytest.mark.parametrize("size", [(97, 131), (33, 47)])
def test_panoptic_fpn_eval_mode_on_odd_sizes(model, size):
    with torch.no_grad():
        (out,) = model.eval()(torch.rand(1, 3, *size))
    assert out["panoptic"].shape == (*size, 2)
    assert out["semantic_logits"].shape == (3, *size)
    assert set(out["panoptic"][..., 0].unique().tolist()) <= {VOID, 0, 1, 2, 3, 4}
    assert set(out["categories"].tolist()) <= {2, 3, 4}
