"""Semantic, panoptic and instance inference from mask-classification outputs.

References: hand-built cases (two or three queries with known masks, worked by hand), HF
transformers' ``Mask2FormerImageProcessor`` post-processing where its algorithm is the same
(at its fixed 384 x 384 working size; see the module docstring of mask_inference for where it
differs and the inputs below for how they avoid those differences), and segcourse's own
metrics as consumers of the outputs.
"""

import math
import types

import pytest
import torch
import torch.nn as nn

from segcourse.metrics import mask_average_precision, panoptic_quality
from segcourse.models.mask_inference import (
    MaskClassifier,
    instance_inference,
    panoptic_inference,
    semantic_inference,
)
from segcourse.models.panoptic_fpn import VOID

HF_SIZE = (384, 384)  # HF's post-processing works at this size


def hf_processor():
    """HF's image processor (its post-processing); a test using it is skipped without it."""
    return pytest.importorskip("transformers").Mask2FormerImageProcessor()


def hf_outputs(class_logits, mask_logits):
    return types.SimpleNamespace(class_queries_logits=class_logits,
                                 masks_queries_logits=mask_logits)


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def softmax(row):
    z = sum(math.exp(v) for v in row)
    return [math.exp(v) / z for v in row]


# ---------------------------------------------------------------- semantic

def test_semantic_hand_computed():
    # two queries, K = 2, masks of one row of two pixels (upsampling to the same size: identity)
    class_logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]]])
    mask_logits = torch.tensor([[[[1.0, -1.0]], [[0.0, 2.0]]]])
    scores = semantic_inference(class_logits, mask_logits, (1, 2))
    assert scores.shape == (1, 2, 1, 2)
    p = [softmax(r) for r in class_logits[0].tolist()]
    m = [[sigmoid(v) for v in q[0]] for q in mask_logits[0].tolist()]
    for k in range(2):
        for x in range(2):
            expected = p[0][k] * m[0][x] + p[1][k] * m[1][x]
            assert float(scores[0, k, 0, x]) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_semantic_equals_hf(seed):
    g = torch.Generator().manual_seed(seed)
    class_logits = 2 * torch.randn(2, 6, 5, generator=g)
    mask_logits = 3 * torch.randn(2, 6, 12, 16, generator=g)
    ours = semantic_inference(class_logits, mask_logits, HF_SIZE)
    theirs = hf_processor().post_process_semantic_segmentation(
        hf_outputs(class_logits, mask_logits))
    for b in range(2):
        assert torch.equal(ours[b].argmax(0), theirs[b])
    try:
        scores = hf_processor().post_process_semantic_segmentation(
            hf_outputs(class_logits, mask_logits), return_segmentation_scores=True)
    except TypeError:  # older transformers: maps only
        return
    for b in range(2):
        torch.testing.assert_close(ours[b], scores[b].segmentation_scores)


# ---------------------------------------------------------------- panoptic

def test_panoptic_hand_built():
    # 4 x 4 image, mask logits at full size. q0: thing 2 on columns 0-1, most confident;
    # q1: thing 3 on columns 1-3, less confident: it loses column 1 and keeps 8 of its 12
    # pixels (0.67); q2, q3: stuff 0 on row 3 and on (3, 3) again (merged); q4: "no object".
    strong, weak = 12.0, 8.0
    class_logits = torch.zeros(1, 5, 5)
    class_logits[0, 0, 2], class_logits[0, 1, 3] = strong, weak
    class_logits[0, 2, 0], class_logits[0, 3, 0], class_logits[0, 4, 4] = weak, weak, strong
    masks = torch.full((1, 5, 4, 4), -6.0)
    masks[0, 0, :3, :2] = 6
    masks[0, 1, :3, 1:] = 6
    masks[0, 2, 3, :2] = 6  # row 3, columns 0-1 (columns 2 stays void)
    masks[0, 3, 3, 3] = 6
    masks[0, 4] = 6  # confident everywhere, but "no object"
    (pan,) = panoptic_inference(class_logits, masks, (4, 4), thing_classes=(2, 3))
    assert pan.shape == (4, 4, 2) and pan.dtype == torch.int64
    category = [[2, 2, VOID, VOID]] * 3 + [[0, 0, VOID, 0]]
    instance = [[1, 1, 0, 0]] * 3 + [[0, 0, 0, 0]]
    assert pan[..., 0].tolist() == category and pan[..., 1].tolist() == instance
    # a laxer overlap threshold keeps q1's 8 pixels as instance 2
    (pan,) = panoptic_inference(class_logits, masks, (4, 4), (2, 3), overlap_threshold=0.5)
    assert pan[:3, 2:].tolist() == [[[3, 2], [3, 2]]] * 3
    # a stricter object threshold drops the weak queries (p = e^8 / (e^8 + 4) ~ 0.99866)
    (pan,) = panoptic_inference(class_logits, masks, (4, 4), (2, 3), object_mask_threshold=0.999)
    assert pan[..., 0].tolist() == [[2, 2, VOID, VOID]] * 3 + [[VOID] * 4]
    # nothing kept: all void
    (pan,) = panoptic_inference(class_logits, masks, (4, 4), (2, 3), object_mask_threshold=1.0)
    assert (pan[..., 0] == VOID).all() and (pan[..., 1] == 0).all()


def test_panoptic_pixels_below_one_half_are_void():
    # the only query covers the image with probability 0.4 on the right half: not its segment
    class_logits = torch.tensor([[[10.0, 0.0]]])
    masks = torch.tensor([[[[3.0, math.log(0.4 / 0.6)]]]])
    (pan,) = panoptic_inference(class_logits, masks, (1, 2), thing_classes=(0,))
    assert pan.tolist() == [[[0, 1], [VOID, 0]]]


def scene(seed, Q=8, h=24, w=32):
    """Queries built so that HF's post-processing follows the original rules: every pixel's
    most confident query has p >= 0.5 there (a stuff-0 query covers the image except the
    inside of the boxes at p ~ 0.95, the box queries win inside at p ~ 1); thing boxes (2, 3);
    a near-duplicate of the first thing; stuff 1; a second stuff-0 segment (last, so HF's reuse
    of segment ids after a merge is harmless); a "no object" and a low-score query."""
    g = torch.Generator().manual_seed(seed)
    jitter = torch.randint(0, 3, (4, 2), generator=g).tolist()
    corners = [(2, 2), (2, 16), (14, 4), (14, 20)]
    boxes = [(slice(y + dy, y + dy + 5), slice(x + dx, x + dx + 5))
             for (y, x), (dy, dx) in zip(corners, jitter)]
    class_logits = torch.randn(1, Q, 5, generator=g) * 0.5
    masks = torch.full((1, Q, h, w), -8.0) + 0.5 * torch.randn(1, Q, h, w, generator=g)
    masks[0, 0] += 11  # stuff 0 ...
    for ys, xs in boxes:  # ... except inside the boxes
        masks[0, 0, ys.start + 1: ys.stop - 1, xs.start + 1: xs.stop - 1] -= 11
    for q, c, b in ((1, 2, 0), (2, 3, 1), (4, 1, 2), (5, 0, 3)):
        masks[0, q][boxes[b]] += 16
        class_logits[0, q, c] = 12
    ys, xs = boxes[0]
    masks[0, 3, ys.start + 1: ys.stop, xs.start: xs.stop - 1] += 16  # inside the first box
    class_logits[0, 3, 2] = 7  # less confident than the first thing
    class_logits[0, 0, 0] = 12
    class_logits[0, 6, 4] = 12  # no object, everywhere
    masks[0, 6] += 16
    return class_logits, masks


def hf_panoptic_map(result, things):
    """HF's (segment id map, segments_info) as segcourse's [H, W, 2] map."""
    seg = result["segmentation"].long()
    category, instance = torch.full_like(seg, VOID), torch.zeros_like(seg)
    labels = {s["id"]: s["label_id"] for s in result["segments_info"]}
    next_id = 1
    for sid in sorted(labels):
        category[seg == sid] = labels[sid]
        if labels[sid] in things:
            instance[seg == sid] = next_id
            next_id += 1
    return torch.stack([category, instance], -1)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_panoptic_equals_hf(seed):
    things = (2, 3)
    class_logits, masks = scene(seed)
    (ours,) = panoptic_inference(class_logits, masks, HF_SIZE, things, 0.8, 0.8)
    (theirs,) = hf_processor().post_process_panoptic_segmentation(
        hf_outputs(class_logits, masks), threshold=0.8, mask_threshold=0.5,
        overlap_mask_area_threshold=0.8, label_ids_to_fuse={0, 1})
    assert torch.equal(ours, hf_panoptic_map(theirs, things))
    # the scene exercises the rules: two things, stuff 0 and 1 (0 merged from two queries),
    # the duplicate thing dropped (its few pixels void)
    assert {0, 1, 2, 3} <= set(ours[..., 0].unique().tolist())
    assert ours[..., 1].max() == 2 and (ours[..., 0] == VOID).float().mean() < 0.01


# ---------------------------------------------------------------- instance

def test_instance_hand_computed():
    class_logits = torch.tensor([[[2.0, 0.0, 1.0, 0.0], [0.0, 1.5, 0.0, 0.0]]])  # K = 3
    mask_logits = torch.tensor([[[[2.0, -1.0, 0.5]], [[-3.0, 1.0, 1.0]]]])  # [1, 2, 1, 3]
    things = (0, 1)  # class 2 is stuff: never detected
    (det,) = instance_inference(class_logits, mask_logits, (1, 3), things, top_k=3)
    p = [softmax(r) for r in class_logits[0].tolist()]
    mean0 = (sigmoid(2.0) + sigmoid(0.5)) / 2  # query 0's mask: pixels 0 and 2
    mean1 = (sigmoid(1.0) + sigmoid(1.0)) / 2  # query 1's mask: pixels 1 and 2
    # the top 3 (query, thing) pairs by class probability: (0, 0), (1, 1), (1, 0)
    pairs = sorted([(0, 0), (1, 1), (1, 0), (0, 1)], key=lambda qc: -p[qc[0]][qc[1]])[:3]
    expected = sorted([(p[q][c] * (mean0, mean1)[q], q, c) for q, c in pairs], reverse=True)
    assert det["scores"].tolist() == pytest.approx([e[0] for e in expected], rel=1e-5)
    assert det["categories"].tolist() == [e[2] for e in expected]
    assert det["labels"].tolist() == [e[2] + 1 for e in expected]
    rows = {0: [True, False, True], 1: [False, True, True]}
    assert det["masks"][:, 0].tolist() == [rows[e[1]] for e in expected]
    assert det["masks"].dtype == torch.bool
    (none,) = instance_inference(class_logits, mask_logits, (1, 3), thing_classes=())
    assert none["masks"].shape == (0, 1, 3) and len(none["scores"]) == len(none["labels"]) == 0


@pytest.mark.parametrize("seed", [0, 1])
def test_instance_equals_hf_when_every_class_is_a_thing(seed):
    g = torch.Generator().manual_seed(seed)
    Q, K = 6, 4
    class_logits = 2 * torch.randn(2, Q, K + 1, generator=g)
    mask_logits = 3 * torch.randn(2, Q, 12, 16, generator=g)
    mask_logits[0, 2] = -5  # an empty mask: HF drops it, we keep it with score 0
    ours = instance_inference(class_logits, mask_logits, HF_SIZE, tuple(range(K)), top_k=Q)
    theirs = hf_processor().post_process_instance_segmentation(
        hf_outputs(class_logits, mask_logits), threshold=0.0, return_binary_maps=True)
    for det, ref in zip(ours, theirs):
        kept = det["masks"].flatten(1).any(1)
        info = sorted(zip(ref["segments_info"], ref["segmentation"]), key=lambda s: -s[0]["score"])
        assert int(kept.sum()) == len(info)
        for i, (segment, mask) in zip(torch.where(kept)[0].tolist(), info):
            assert float(det["scores"][i]) == pytest.approx(segment["score"], abs=2e-6)
            assert int(det["categories"][i]) == segment["label_id"]
            assert torch.equal(det["masks"][i], mask.bool())
        assert (det["scores"][~kept] == 0).all()


# ---------------------------------------------------------------- consumers

def perfect_outputs(size=16):
    """A scene with two things (classes 2, 3) and stuff (0, 1), and outputs that predict it."""
    semantic = torch.zeros(size, size, dtype=torch.long)
    semantic[:, size // 2:] = 1
    objects = [(2, (slice(2, 7), slice(2, 7))), (3, (slice(9, 14), slice(3, 8))),
               (2, (slice(4, 10), slice(10, 15)))]
    masks = []
    for c, (ys, xs) in objects:
        semantic[ys, xs] = c
        masks.append(torch.zeros(size, size, dtype=torch.bool))
        masks[-1][ys, xs] = True
    masks = [m & (semantic == c) for m, (c, _) in zip(masks, objects)]
    segments = [(c, m) for (c, _), m in zip(objects, masks)] + [(0, semantic == 0),
                                                                 (1, semantic == 1)]
    Q = len(segments) + 2
    class_logits = torch.zeros(1, Q, 5)
    class_logits[0, :, 4] = 10  # unused queries: no object
    mask_logits = torch.full((1, Q, size, size), -10.0)
    for q, (c, m) in enumerate(segments):
        class_logits[0, q, 4], class_logits[0, q, c] = 0, 10
        mask_logits[0, q] = 20 * m.float() - 10
    return semantic, torch.stack(masks), [c for c, _ in objects], class_logits, mask_logits


def test_outputs_are_what_the_metrics_consume():
    semantic, masks, classes, class_logits, mask_logits = perfect_outputs()
    things = (2, 3)
    (pan,) = panoptic_inference(class_logits, mask_logits, semantic.shape, things)
    instance = torch.zeros_like(semantic)
    for k, m in enumerate(masks):
        instance[m] = k + 1
    target = torch.stack([semantic, instance], -1)
    pq = panoptic_quality(pan[None], target[None], things, (0, 1))
    assert pq["pq"] == pytest.approx(1.0) and pq["things"]["n"] == 2 and pq["stuff"]["n"] == 2
    (det,) = instance_inference(class_logits, mask_logits, semantic.shape, things)
    labels = torch.tensor([things.index(c) + 1 for c in classes])
    ap = mask_average_precision([det], [{"masks": masks, "labels": labels}])
    assert ap["ap"] == pytest.approx(1.0)
    assert torch.equal(semantic_inference(class_logits, mask_logits, semantic.shape)[0]
                       .argmax(0), semantic)


class Toy(nn.Module, MaskClassifier):
    """A stand-in model: fixed class logits, masks from a stride-4 conv, dropout to show the
    mode used."""

    def __init__(self, Q=4, K=3, thing_classes=(1, 2)):
        super().__init__()
        self.thing_classes = thing_classes
        self.class_logits = nn.Parameter(torch.randn(Q, K + 1,
                                                     generator=torch.Generator().manual_seed(0)))
        self.conv = nn.Conv2d(3, Q, 4, stride=4)
        self.drop = nn.Dropout(0.9)

    def forward(self, images):
        masks = self.drop(self.conv(images))
        return {"class_logits": self.class_logits.expand(len(images), -1, -1),
                "mask_logits": masks}


def test_mask_classifier_mixin():
    torch.manual_seed(0)
    model = Toy().train()
    images = torch.randn(2, 3, 33, 47)
    scores = model.semantic(images)
    assert model.training and not scores.requires_grad
    model.eval()
    out = model(images)
    torch.testing.assert_close(scores, semantic_inference(out["class_logits"],
                                                          out["mask_logits"], (33, 47)))
    results = model.segment(images)
    assert not model.training  # eval stays eval too
    pans = panoptic_inference(out["class_logits"], out["mask_logits"], (33, 47), (1, 2))
    dets = instance_inference(out["class_logits"], out["mask_logits"], (33, 47), (1, 2))
    for r, pan, det in zip(results, pans, dets):
        assert set(r) == {"masks", "scores", "labels", "categories", "panoptic"}
        assert torch.equal(r["panoptic"], pan)
        for k in det:
            assert torch.equal(r[k], det[k])
    model.top_k, model.object_mask_threshold = 3, 0.0
    assert all(len(r["scores"]) == 3 for r in model.segment(images))
    model.overlap_threshold = 2.0
    with pytest.raises(ValueError, match="overlap_threshold"):
        model.segment(images)


@pytest.mark.parametrize("call, match", [
    (lambda c, m: semantic_inference(c[0], m, (8, 8)), "class_logits"),
    (lambda c, m: semantic_inference(c, m[:, :2], (8, 8)), "share"),
    (lambda c, m: semantic_inference(c, m.long(), (8, 8)), "floating"),
    (lambda c, m: semantic_inference(c, m, (0, 8)), "size"),
    (lambda c, m: panoptic_inference(c, m, (8, 8), thing_classes=(4,)), "thing_classes"),
    (lambda c, m: panoptic_inference(c, m, (8, 8), object_mask_threshold=1.5),
     "object_mask_threshold"),
    (lambda c, m: panoptic_inference(c, m, (8, 8), overlap_threshold=-0.1), "overlap_threshold"),
    (lambda c, m: instance_inference(c, m, (8, 8), (1,), top_k=0), "top_k"),
    (lambda c, m: instance_inference(c, m, (8, 8), ("car",)), "thing_classes"),
])
def test_errors(call, match):
    c, m = torch.zeros(2, 3, 5), torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match=match):
        call(c, m)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda():
    semantic, _, _, class_logits, mask_logits = perfect_outputs()
    class_logits, mask_logits = class_logits.cuda(), mask_logits.cuda()
    (pan,) = panoptic_inference(class_logits, mask_logits, semantic.shape, (2, 3))
    (det,) = instance_inference(class_logits, mask_logits, semantic.shape, (2, 3))
    assert pan.is_cuda and torch.equal(pan[..., 0].cpu().clamp(min=0), semantic)
    assert all(v.is_cuda for v in det.values())
