"""Target masks, Hungarian matching and Mask2Former's losses (point sampling:
test_ops_point_sampling.py).

References: hand-computed values (bilinear reads, cross-entropies, perfect predictions), loop
formulations independent of the vectorised code, and HF transformers' Mask2Former (random
inputs, no download): ``Mask2FormerHungarianMatcher`` and ``Mask2FormerLoss`` draw their random
points from torch's default generator, so the same seed gives both sides the same points.
"""

import importlib
import math

import pytest
import torch
import torch.nn.functional as F

from segcourse.models.set_criterion import HungarianMatcher, SetCriterion, mask_targets
from segcourse.ops.point_sampling import point_sample

criterion_module = importlib.import_module("segcourse.models.set_criterion")


def hf():
    """HF transformers' Mask2Former modelling module; a test using it is skipped without it."""
    return pytest.importorskip("transformers.models.mask2former.modeling_mask2former")


K = 4  # classes 0..3, "no object" = 4


def semantic_batch(seed, B=2, H=32, W=40, block=8, ignore=False):
    g = torch.Generator().manual_seed(seed)
    sem = torch.randint(0, K, (B, H // block, W // block), generator=g)
    sem = sem.repeat_interleave(block, 1).repeat_interleave(block, 2)
    if ignore:
        sem[:, :block] = 255
    return sem


def predictions(seed, B=2, Q=6, h=8, w=10, layers=1):
    g = torch.Generator().manual_seed(seed)
    out = [{"class_logits": torch.randn(B, Q, K + 1, generator=g),
            "mask_logits": 3 * torch.randn(B, Q, h, w, generator=g)} for _ in range(layers)]
    return {**out[-1], "aux_outputs": out[:-1]} if layers > 1 else out[0]


def leaves(outputs):
    """The logits of every layer, final first."""
    return [layer[k] for layer in (outputs, *outputs.get("aux_outputs", []))
            for k in ("class_logits", "mask_logits")]


def hf_targets(targets):
    return [t["masks"].float() for t in targets], [t["labels"] for t in targets]


def pixel_centres(h, w):
    ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w,
                            indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], -1)  # [h * w, 2] (x, y)


# ---------------------------------------------------------------- target masks

def test_mask_targets_from_a_semantic_map():
    sem = torch.tensor([[[0, 0, 3], [255, 3, 3]], [[1, 1, 1], [1, 1, 1]]])
    a, b = mask_targets(sem, K)
    assert a["labels"].tolist() == [0, 3] and b["labels"].tolist() == [1]
    assert a["masks"].tolist() == [[[True, True, False], [False, False, False]],
                                   [[False, False, True], [False, True, True]]]
    assert a["ignore"].tolist() == [[False, False, False], [True, False, False]]
    assert not b["ignore"].any() and b["masks"].all() and a["masks"].dtype == torch.bool


def test_mask_targets_from_instance_targets():
    things = (2, 3)  # object label 1 -> class 2, label 2 -> class 3; classes 0, 1 are stuff
    semantic = torch.tensor([[0, 2, 2], [3, 3, 255], [1, 1, 0]])
    masks = torch.stack([semantic == 2, semantic == 3, torch.zeros(3, 3, dtype=torch.bool)])
    target = {"labels": torch.tensor([1, 2, 2]), "masks": masks, "semantic": semantic}
    (t,) = mask_targets([target], K, things)
    assert t["labels"].tolist() == [2, 3, 3, 0, 1]  # things in order, then stuff by class
    assert torch.equal(t["masks"][:3], masks)
    assert torch.equal(t["masks"][3], semantic == 0) and torch.equal(t["masks"][4], semantic == 1)
    assert torch.equal(t["ignore"], semantic == 255)
    (t,) = mask_targets([{"labels": target["labels"], "masks": masks}], K, things, (3, 3))
    assert t["labels"].tolist() == [2, 3, 3] and not t["ignore"].any()  # no semantic: no stuff


def inst(labels=(1,), masks=None, **extra):
    """A one-object instance target (masks: [1, 4, 4] empty by default), as a batch."""
    masks = torch.zeros(1, 4, 4, dtype=torch.bool) if masks is None else masks
    return [{"labels": torch.tensor(labels), "masks": masks, **extra}]


@pytest.mark.parametrize("targets, things, match", [
    ([{"labels": torch.tensor([1])}], (2,), "masks"),
    ([{"masks": torch.zeros(1, 4, 4, dtype=torch.bool)}], (2,), "labels"),
    (inst((3,)), (2, 3), "labels"),
    (inst((0,)), (2,), "background"),
    (inst(masks=torch.zeros(1, 4, 5, dtype=torch.bool)), (2,), "image size"),
    (inst((1, 1)), (2,), "agree"),
    (inst(masks=torch.full((1, 4, 4), 0.5)), (2,), "boolean"),
    (inst(semantic=torch.full((4, 4), 7)), (2,), "semantic"),
    (torch.full((1, 4, 4), 9), (), "targets"),
    (torch.zeros(4, 4, dtype=torch.long), (), "B, H, W"),
    ([], (), "non-empty"),
    (inst(), (7,), "thing_classes"),
])
def test_mask_targets_errors(targets, things, match):
    with pytest.raises(ValueError, match=match):
        mask_targets(targets, K, things, (4, 4))


# ---------------------------------------------------------------- matching

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matcher_equals_hf(seed):
    out = predictions(seed, B=3, Q=7)
    targets = mask_targets(semantic_batch(seed, B=3), K)
    targets[1] = {"labels": targets[1]["labels"][:0], "masks": targets[1]["masks"][:0],
                  "ignore": targets[1]["ignore"]}  # an image without targets
    matcher = HungarianMatcher(2.0, 5.0, 5.0, num_points=300)
    reference = hf().Mask2FormerHungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0,
                                               num_points=300)
    torch.manual_seed(seed)
    expected = reference(out["mask_logits"], out["class_logits"], *hf_targets(targets))
    torch.manual_seed(seed)
    got = matcher(out["class_logits"], out["mask_logits"], targets)
    torch.manual_seed(seed)  # the same points, passed explicitly
    coords = torch.cat([torch.rand(1, 300, 2) for _ in range(3)])
    given = matcher(out["class_logits"], out["mask_logits"], targets, point_coords=coords)
    for (r, c), (hr, hc), (pr, pc) in zip(got, expected, given):
        assert r.tolist() == hr.tolist() == pr.tolist() and c.tolist() == hc.tolist() == pc.tolist()
    assert len(got[1][0]) == 0


def test_matcher_cost_equals_hf_terms():
    out = predictions(3)
    (t,) = mask_targets(semantic_batch(3, B=1), K)
    coords = torch.rand(1, 250, 2, generator=torch.Generator().manual_seed(0))
    x = hf().sample_point(out["mask_logits"][0][:, None], coords.repeat(6, 1, 1),
                        align_corners=False)[:, 0]
    y = hf().sample_point(t["masks"][:, None].float(), coords.repeat(len(t["masks"]), 1, 1),
                        align_corners=False)[:, 0]
    expected = (5 * hf().pair_wise_sigmoid_cross_entropy_loss(x, y)
                - 2 * out["class_logits"][0].softmax(-1)[:, t["labels"]]
                + 5 * hf().pair_wise_dice_loss(x, y))
    cost = HungarianMatcher().cost(out["class_logits"][0], out["mask_logits"][0], t, coords)
    torch.testing.assert_close(cost, expected)


def test_matcher_cost_with_ignore_equals_a_loop():
    out = predictions(4)
    (t,) = mask_targets(semantic_batch(4, B=1, ignore=True), K)
    coords = torch.rand(1, 120, 2, generator=torch.Generator().manual_seed(1))
    cost = HungarianMatcher(1.0, 3.0, 2.0).cost(out["class_logits"][0], out["mask_logits"][0],
                                               t, coords)
    x = point_sample(out["mask_logits"][0][None], coords)[0]
    y = point_sample(t["masks"][None].float(), coords)[0]
    w = point_sample(1 - t["ignore"][None, None].float(), coords, mode="nearest")[0, 0]
    assert 0 < float(w.sum()) < 120
    prob = out["class_logits"][0].softmax(-1)
    for q in range(6):
        for j in range(len(t["labels"])):
            bce = -(y[j] * F.logsigmoid(x[q]) + (1 - y[j]) * F.logsigmoid(-x[q]))
            s = x[q].sigmoid()
            dice = 1 - (2 * (w * s * y[j]).sum() + 1) / ((w * s).sum() + (w * y[j]).sum() + 1)
            expected = (-prob[q, t["labels"][j]] + 3 * (w * bce).sum() / w.sum() + 2 * dice)
            assert float(cost[q, j]) == pytest.approx(float(expected), abs=1e-5)


def test_matcher_finds_the_perfect_queries_and_refuses_nan():
    sem = semantic_batch(5, B=1, H=16, W=16, block=4)
    (t,) = mask_targets(sem, K)
    n = len(t["labels"])
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))[:n]  # query per target
    mask_logits = -20 * torch.ones(1, 8, 16, 16)
    class_logits = torch.zeros(1, 8, K + 1)
    for j, q in enumerate(perm.tolist()):
        mask_logits[0, q] = 40 * t["masks"][j].float() - 20
        class_logits[0, q, t["labels"][j]] = 10
    torch.manual_seed(0)
    ((rows, cols),) = HungarianMatcher(num_points=400)(class_logits, mask_logits, [t])
    assert dict(zip(cols.tolist(), rows.tolist())) == dict(enumerate(perm.tolist()))
    class_logits[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="diverged"):
        HungarianMatcher()(class_logits, mask_logits, [t])


# ---------------------------------------------------------------- losses

def hf_loss(outputs, targets, num_points, seed, no_object_weight=0.1):
    config = hf().Mask2FormerConfig(
        num_labels=K, train_num_points=num_points, class_weight=2.0, mask_weight=5.0,
        dice_weight=5.0, no_object_weight=no_object_weight, oversample_ratio=3.0,
        importance_sample_ratio=0.75)
    aux = [{"masks_queries_logits": a["mask_logits"], "class_queries_logits": a["class_logits"]}
           for a in outputs.get("aux_outputs", [])]
    torch.manual_seed(seed)
    losses = hf().Mask2FormerLoss(config, {})(outputs["mask_logits"], outputs["class_logits"],
                                              *hf_targets(targets), aux or None)
    # HF returns each layer's unweighted loss; the model weights them (2, 5, 5) and sums
    total = {name: 0.0 for name in ("loss_class", "loss_mask", "loss_dice")}
    for key, value in losses.items():
        name, weight = {"loss_cross_entropy": ("loss_class", 2.0), "loss_mask": ("loss_mask", 5.0),
                        "loss_dice": ("loss_dice", 5.0)}[key.rstrip("0123456789").rstrip("_")]
        total[name] = total[name] + weight * value
    return total


@pytest.mark.parametrize("seed, layers", [(0, 1), (1, 1), (2, 3), (3, 4)])
def test_losses_equal_hf(seed, layers):
    outputs = predictions(seed, B=2, Q=6, layers=layers)
    targets = mask_targets(semantic_batch(seed + 10), K)
    expected = hf_loss(outputs, targets, 200, seed)
    torch.manual_seed(seed)
    got = SetCriterion(K, num_points=200)(outputs, targets)
    assert set(got) == {"loss_class", "loss_mask", "loss_dice"}
    for name in got:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6)


def test_losses_equal_hf_with_instance_targets_and_gradients():
    things = (2, 3)
    sem = semantic_batch(7, B=2)
    targets = []
    for s in sem:
        masks = torch.stack([s == 2, s == 3, (s == 3) & (torch.arange(40) < 20)])
        targets.append({"labels": torch.tensor([1, 2, 2]), "masks": masks, "semantic": s})
    targets = mask_targets(targets, K, things)
    outputs = predictions(7, layers=2)
    for v in leaves(outputs):
        v.requires_grad_(True)
    torch.manual_seed(7)
    got = SetCriterion(K, num_points=150)(outputs, targets)
    expected = hf_loss(outputs, targets, 150, 7)
    for name in got:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6)
    sum(got.values()).backward()
    mine = [v.grad.clone() for v in leaves(outputs)]
    for v in leaves(outputs):
        v.grad = None
    sum(expected.values()).backward()
    theirs = [v.grad for v in leaves(outputs)]
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_perfect_prediction_has_no_mask_loss(monkeypatch):
    H = W = 16
    (t,) = mask_targets(semantic_batch(8, B=1, H=H, W=W, block=4), K)
    n, Q = len(t["labels"]), 6
    mask_logits = -30 * torch.ones(1, Q, H, W)
    class_logits = torch.zeros(1, Q, K + 1)
    class_logits[0, :, K] = 30  # every query: "no object" ...
    for j in range(n):  # ... except query j, which predicts target j exactly
        mask_logits[0, j] = 60 * t["masks"][j].float() - 30
        class_logits[0, j, K], class_logits[0, j, t["labels"][j]] = 0, 30
    # read the masks at pixel centres, where the bilinear labels are exactly 0 or 1
    monkeypatch.setattr(criterion_module, "uncertain_points",
                        lambda logits, *a, **k: pixel_centres(H, W).expand(len(logits), -1, -1))
    losses = SetCriterion(K, num_points=64)({"class_logits": class_logits,
                                             "mask_logits": mask_logits}, [t])
    assert float(losses["loss_mask"]) < 1e-6 and float(losses["loss_class"]) < 1e-6
    # dice: 1 - (2 * area + 1) / (2 * area + 1) up to sigmoid(30)'s rounding
    assert float(losses["loss_dice"]) < 1e-5
    # one query, one target, the mask inverted: every point wrong by 30 logits, BCE 30 each,
    # weight 5 -> 150
    one = {"labels": t["labels"][:1], "masks": t["masks"][:1], "ignore": t["ignore"]}
    inverted = {"class_logits": class_logits[:, :1], "mask_logits": -mask_logits[:, :1]}
    bad = SetCriterion(K, num_points=64)(inverted, [one])
    assert float(bad["loss_mask"]) == pytest.approx(150.0, rel=1e-4)


def test_class_loss_and_the_no_object_weight():
    Q = 3
    (t,) = mask_targets(torch.full((1, 8, 8), 1), K)  # one target: class 1, the whole image
    mask_logits = torch.full((1, Q, 8, 8), -5.0)
    mask_logits[0, 2] = 5.0  # query 2 is the only one that fits
    class_logits = torch.tensor([[[0.0, 1.0, 0.0, 0.0, 2.0],
                                  [1.0, 0.0, 0.0, 0.0, 0.0],
                                  [0.0, 3.0, 0.0, 1.0, 0.0]]])

    def ce(row, c):  # -log softmax, by hand
        return math.log(sum(math.exp(v) for v in row)) - row[c]

    rows = class_logits[0].tolist()
    for w in (0.1, 1.0, 0.0):
        expected = (ce(rows[2], 1) + w * (ce(rows[0], K) + ce(rows[1], K))) / (1 + 2 * w)
        losses = SetCriterion(K, num_points=32, no_object_weight=w)(
            {"class_logits": class_logits, "mask_logits": mask_logits}, [t])
        assert float(losses["loss_class"]) == pytest.approx(2.0 * expected, rel=1e-5)


def test_ignored_pixels_do_not_count(monkeypatch):
    H = W = 12
    sem = torch.zeros(1, H, W, dtype=torch.long)
    sem[0, :, 6:] = 2
    sem[0, :4] = 255  # top rows ignored
    (t,) = mask_targets(sem, K)
    mask_logits = torch.stack([60 * m.float() - 30 for m in t["masks"]])[None]
    mask_logits[0, :, :4] *= -1  # wrong everywhere in the ignored rows
    class_logits = torch.zeros(1, 2, K + 1)
    class_logits[0, 0, 0] = class_logits[0, 1, 2] = 10
    monkeypatch.setattr(criterion_module, "uncertain_points",
                        lambda logits, *a, **k: pixel_centres(H, W).expand(len(logits), -1, -1))
    outputs = {"class_logits": class_logits, "mask_logits": mask_logits}
    losses = SetCriterion(K, num_points=64)(outputs, [t])
    assert float(losses["loss_mask"]) < 1e-6 and float(losses["loss_dice"]) < 1e-5
    seen = SetCriterion(K, num_points=64)(outputs, [{**t, "ignore": None}])
    # without ignore: a third of the points wrong by 30 logits, weight 5, two masks summed and
    # divided by the two target masks
    assert float(seen["loss_mask"]) == pytest.approx(5 * 30 / 3, rel=1e-4)
    everything = {**t, "ignore": torch.ones(H, W, dtype=torch.bool)}
    none_seen = SetCriterion(K, num_points=64)(outputs, [everything])
    assert float(none_seen["loss_mask"]) == 0 and float(none_seen["loss_dice"]) == 0


def test_empty_targets_give_finite_losses_with_gradient():
    outputs = predictions(9, B=2, layers=2)
    for v in leaves(outputs):
        v.requires_grad_(True)
    targets = mask_targets(torch.full((2, 32, 40), 255), K)  # every pixel ignored: no targets
    assert all(len(t["labels"]) == 0 for t in targets)
    losses = SetCriterion(K, num_points=100)(outputs, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    assert float(losses["loss_mask"].detach()) == 0 and float(losses["loss_dice"].detach()) == 0
    sum(losses.values()).backward()
    grad = outputs["class_logits"].grad
    assert (grad[..., K] < 0).all() and (grad[..., :K] > 0).all()  # towards "no object"
    assert outputs["mask_logits"].grad is not None and not outputs["mask_logits"].grad.any()
    # class loss alone: CE towards class K of every query, 2 layers, weight 2
    both = torch.cat([outputs["class_logits"], outputs["aux_outputs"][0]["class_logits"]])
    expected = 2 * 2 * F.cross_entropy(both.reshape(-1, K + 1), torch.full((24,), K))
    torch.testing.assert_close(losses["loss_class"], expected)
    unweighted = SetCriterion(K, num_points=100, no_object_weight=0.0)(outputs, targets)
    assert all(float(v.detach()) == 0 for v in unweighted.values())  # 0, not 0 / 0


def test_half_precision_logits_give_float32_losses():
    outputs = {k: v.bfloat16() for k, v in predictions(12).items()}
    targets = mask_targets(semantic_batch(12), K)
    losses = SetCriterion(K, num_points=64)(outputs, targets)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())


def test_num_masks_is_averaged_over_processes(monkeypatch):
    outputs = predictions(10)
    targets = mask_targets(semantic_batch(10), K)
    n = sum(len(t["labels"]) for t in targets)
    torch.manual_seed(0)
    alone = SetCriterion(K, num_points=100)(outputs, targets)
    dist = criterion_module.dist
    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_reduce", lambda x: x.add_(3.0))  # the other process: 3
    criterion = SetCriterion(K, num_points=100)
    assert float(criterion.num_masks(targets, "cpu")) == (n + 3) / 2
    torch.manual_seed(0)
    shared = criterion(outputs, targets)
    torch.testing.assert_close(shared["loss_mask"], alone["loss_mask"] * n / ((n + 3) / 2))
    torch.testing.assert_close(shared["loss_class"], alone["loss_class"])


def test_criterion_errors():
    criterion = SetCriterion(K, num_points=16)
    outputs = predictions(11)
    targets = mask_targets(semantic_batch(11), K)
    bad_outputs = [{"class_logits": outputs["class_logits"]},
                   {**outputs, "class_logits": outputs["class_logits"][..., :-1]},
                   {**outputs, "mask_logits": outputs["mask_logits"][:, :3]},
                   {**outputs, "aux_outputs": [{"class_logits": outputs["class_logits"]}]}]
    for bad in bad_outputs:
        with pytest.raises(ValueError, match="class_logits|mask_logits"):
            criterion(bad, targets)
    with pytest.raises(ValueError, match="list of 2"):
        criterion(outputs, targets[:1])
    with pytest.raises(ValueError, match="labels"):
        criterion(outputs, [{**targets[0], "labels": targets[0]["labels"] + K}, targets[1]])
    with pytest.raises(ValueError, match="mask_targets"):
        criterion(outputs, [{"masks": targets[0]["masks"]}, targets[1]])
    for kwargs, match in [({"no_object_weight": -1}, "no_object_weight"),
                          ({"class_weight": 0, "mask_weight": 0, "dice_weight": 0}, "not all 0"),
                          ({"mask_weight": float("nan")}, "finite"),
                          ({"num_points": 0}, "num_points"),
                          ({"importance_sample_ratio": 2.0}, "importance"),
                          ({"matcher": "hungarian"}, "matcher")]:
        with pytest.raises(ValueError, match=match):
            SetCriterion(K, **kwargs)
    with pytest.raises(ValueError, match="point_coords"):
        HungarianMatcher()(outputs["class_logits"], outputs["mask_logits"], targets,
                           point_coords=torch.rand(2, 5, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda():
    outputs = {k: v.cuda() for k, v in predictions(13).items()}
    targets = [{k: v.cuda() for k, v in t.items()}
               for t in mask_targets(semantic_batch(13, ignore=True), K)]
    indices = HungarianMatcher(num_points=64)(outputs["class_logits"], outputs["mask_logits"],
                                              targets)
    assert all(r.device == outputs["mask_logits"].device for r, _ in indices)
    with torch.autocast("cuda", dtype=torch.float16):
        losses = SetCriterion(K, num_points=64)(outputs, targets)
    assert all(v.is_cuda and v.dtype == torch.float32 and torch.isfinite(v)
               for v in losses.values())
