import math

import pytest
import torch

from segcourse.data.shapes import ShapesDataset
from segcourse.data.targets import InstanceTargets
from segcourse.models.sam import sam
from segcourse.models.sam_training import (
    ClickTrainer,
    click_step,
    dice_loss,
    jitter_boxes,
    mask_iou,
    next_clicks,
    sample_points,
    select_min_loss,
    sigmoid_focal_loss,
)
from segcourse.train import fit


@pytest.fixture(scope="module")
def batch():
    data = InstanceTargets(ShapesDataset(num_samples=2, seed=3))
    return InstanceTargets.collate_fn([data[0], data[1]])


def tiny_sam():
    torch.manual_seed(0)
    return sam("tiny")


def test_focal_dice_iou_by_hand():
    logits = torch.tensor([[[0.0, 2.0]]])  # one mask of 1 x 2 pixels
    target = torch.tensor([[[1.0, 0.0]]])
    # pixel 1: p = 0.5, object: 0.25 * 0.5^2 * log 2; pixel 2: p_t = 1 - s(2), background
    s2 = 1 / (1 + math.exp(-2))
    f1 = 0.25 * 0.25 * math.log(2)
    f2 = 0.75 * s2 ** 2 * -math.log(1 - s2)
    assert sigmoid_focal_loss(logits, target).item() == pytest.approx((f1 + f2) / 2, rel=1e-6)
    dice = 1 - (2 * 0.5 + 1) / (0.5 + s2 + 1 + 1)
    assert dice_loss(logits, target).item() == pytest.approx(dice, rel=1e-6)
    pred = torch.tensor([[1, 1, 0, 0]], dtype=torch.bool)[None]
    gt = torch.tensor([[0, 1, 1, 0]], dtype=torch.bool)[None]
    assert mask_iou(pred, gt).item() == pytest.approx(1 / 3)
    assert mask_iou(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2)).item() == 1.0
    assert sigmoid_focal_loss(torch.zeros(3, 2, 4, 4), torch.ones(3, 2, 4, 4)).shape == (3, 2)


def test_sample_points_uniform_inside():
    region = torch.zeros(2, 5, 6, dtype=torch.bool)
    region[0, 1, 4] = region[0, 3, 2] = True
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(50):
        points, found = sample_points(region, g)
        assert found.tolist() == [True, False]
        seen.add(tuple(points[0].long().tolist()))
    assert seen == {(4, 1), (2, 3)}  # both pixels, as (x, y)


def test_next_click_positive_and_negative():
    target = torch.zeros(2, 8, 8, dtype=torch.bool)
    pred = torch.zeros(2, 8, 8, dtype=torch.bool)
    # object 0: target 4x4, prediction covers one row of it + 1 stray pixel -> positive (FN)
    target[0, 2:6, 2:6] = True
    pred[0, 2, 2:6] = True
    pred[0, 7, 7] = True
    # object 1: small target fully covered, large false positive -> negative
    target[1, 0, 0] = True
    pred[1, :3, :] = True
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        points, labels = next_clicks(pred, target, g)
        assert labels.tolist() == [1, 0]
        x, y = points.long().T
        assert target[0, y[0], x[0]] and not pred[0, y[0], x[0]]
        assert pred[1, y[1], x[1]] and not target[1, y[1], x[1]]
    _, labels = next_clicks(target, target, g)  # perfect: padding
    assert labels.tolist() == [-1, -1]
    with pytest.raises(ValueError, match="pred and target"):
        next_clicks(pred, target[:1], g)


def test_select_min_loss():
    mask_loss = torch.tensor([[3.0, 1.0, 2.0], [0.5, 4.0, 0.7]], requires_grad=True)
    iou_loss = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    m, i, best = select_min_loss(mask_loss, iou_loss)
    assert best.tolist() == [1, 0]
    assert m.tolist() == [1.0, 0.5] and i.tolist() == pytest.approx([0.2, 0.4])
    m.sum().backward()
    assert mask_loss.grad.tolist() == [[0, 1, 0], [1, 0, 0]]  # only the minimum back-propagates


def test_jitter_boxes_inside_and_bounded():
    boxes = torch.tensor([[10.0, 10.0, 30.0, 20.0], [0.0, 0.0, 64.0, 64.0]])
    g = torch.Generator().manual_seed(0)
    out = jitter_boxes(boxes, (64, 64), 0.1, generator=g)
    assert (out >= 0).all() and (out <= 64).all()
    assert (out[:, 2] > out[:, 0]).all() and (out[:, 3] > out[:, 1]).all()
    assert (out - boxes).abs().max() <= 20
    assert torch.equal(jitter_boxes(boxes, (64, 64), 0.0, generator=g), boxes)


def test_step_gradients_reach_encoder_and_decoder(batch):
    model = tiny_sam()
    out = ClickTrainer(num_rounds=2, seed=0)(model, batch)
    assert set(out) == {"loss_mask", "loss_iou"}
    assert all(torch.isfinite(v) and v.numel() == 1 for v in out.values())
    (out["loss_mask"] + out["loss_iou"]).backward()
    for part in (model.image_encoder, model.mask_decoder):
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_encoder_runs_once_decoder_per_click(batch):
    model = tiny_sam()
    calls = {"embed": 0, "decode": 0}
    for name in calls:
        orig = getattr(model, name)
        def counted(*a, _orig=orig, _name=name, **k):
            calls[_name] += 1
            return _orig(*a, **k)
        setattr(model, name, counted)
    click_step(model, batch, num_rounds=2, box_prob=1.0)  # one prompt group per image
    images_with_objects = sum(int(t["masks"].any()) for t in batch[1])
    assert calls == {"embed": 1, "decode": 3 * images_with_objects}


def test_boxes_only_and_points_only_are_finite(batch):
    model = tiny_sam()
    for box_prob in (0.0, 1.0):
        out = click_step(model, batch, num_rounds=1, box_prob=box_prob,
                         generator=torch.Generator().manual_seed(0))
        assert all(torch.isfinite(v) for v in out.values())


def test_no_object_image_zero_loss_with_grad(batch):
    model = tiny_sam()
    images = batch[0][:1]
    empty = [{"masks": torch.zeros(0, 64, 64, dtype=torch.bool), "boxes": torch.zeros(0, 4)}]
    out = click_step(model, (images, empty))
    assert out["loss_mask"].item() == 0 and out["loss_iou"].item() == 0
    assert out["loss_mask"].requires_grad
    out["loss_mask"].backward()


def test_fit_lowers_loss_on_a_fixed_batch(batch):
    model = tiny_sam()
    step = ClickTrainer(num_rounds=1, seed=0)

    def fixed(model, b):  # the same clicks every step: the loss change is the model's
        step.generator.manual_seed(0)
        return step(model, b)

    before = sum(v.item() for v in fixed(model, batch).values())
    data = [(batch[0][i], batch[1][i]) for i in range(2)]

    class Fixed(torch.utils.data.Dataset):
        collate_fn = staticmethod(InstanceTargets.collate_fn)
        def __len__(self):
            return 2
        def __getitem__(self, i):
            return data[i]

    history = fit(model, Fixed(), step=fixed, epochs=None, max_steps=3, batch_size=2, lr=1e-3,
                  scheduler=None, progress=False, device="cpu")
    assert history is not None
    after = sum(v.item() for v in fixed(model, batch).values())
    assert math.isfinite(after) and after < before


def test_fit_with_instance_targets():
    data = InstanceTargets(ShapesDataset(num_samples=2, seed=5))
    fit(tiny_sam(), data, step=ClickTrainer(num_rounds=1), epochs=None, max_steps=1,
        batch_size=2, progress=False, device="cpu")


def test_validation(batch):
    model = tiny_sam()
    with pytest.raises(ValueError, match="num_rounds"):
        ClickTrainer(num_rounds=-1)
    with pytest.raises(ValueError, match="box_prob"):
        ClickTrainer(box_prob=1.5)
    with pytest.raises(ValueError, match="max_objects"):
        click_step(model, batch, max_objects=0)
    with pytest.raises(ValueError, match="model must be a segcourse Sam"):
        click_step(torch.nn.Linear(2, 2), batch)
    with pytest.raises(ValueError, match="targets must be a list of 2"):
        click_step(model, (batch[0], batch[1][:1]))
    bad = [dict(t, masks=t["masks"][:, :32]) for t in batch[1]]
    with pytest.raises(ValueError, match=r"targets\[0\]\['masks'\]"):
        click_step(model, (batch[0], bad))
    with pytest.raises(ValueError, match="batch must be"):
        click_step(model, batch[0])


def test_one_box_round_matches_a_direct_decode(batch):
    """Boxes, no jitter, no corrective round: the step's losses are the mean over objects of
    20 focal + dice and of (predicted IoU - actual IoU)^2, computed here by hand."""
    from segcourse.models.sam import postprocess_masks, preprocess, scale_prompts
    model = tiny_sam()
    out = click_step(model, batch, num_rounds=0, max_objects=100, box_prob=1.0, box_noise=0.0)
    images, targets = batch
    mask_sum = iou_sum = n = 0
    for b, t in enumerate(targets):
        emb = model.embed(preprocess(images[b:b + 1], 64))
        _, boxes = scale_prompts((64, 64), 64, boxes=t["boxes"][None])
        dec = model.decode(emb, boxes=boxes, multimask_output=False)
        logits = postprocess_masks(dec["mask_logits"][0, :, 0], (64, 64), 64)
        gt = t["masks"].float()
        for k in range(len(gt)):
            p = logits[k].sigmoid()
            ce = torch.nn.functional.binary_cross_entropy_with_logits(logits[k], gt[k],
                                                                      reduction="none")
            p_t = torch.where(gt[k] > 0, p, 1 - p)
            a_t = torch.where(gt[k] > 0, 0.25, 0.75)
            focal = (a_t * (1 - p_t) ** 2 * ce).mean()
            dice = 1 - (2 * (p * gt[k]).sum() + 1) / (p.sum() + gt[k].sum() + 1)
            pred = logits[k] > 0
            iou = (pred & gt[k].bool()).sum() / (pred | gt[k].bool()).sum()
            mask_sum += 20 * focal + dice
            iou_sum += (dec["iou_scores"][0, k, 0] - iou) ** 2
            n += 1
    assert out["loss_mask"].item() == pytest.approx((mask_sum / n).item(), rel=1e-4)
    assert out["loss_iou"].item() == pytest.approx((iou_sum / n).item(), rel=1e-4, abs=1e-7)


def test_previous_logits_and_clicks_fed_back(batch):
    model = tiny_sam()
    seen = []
    orig = model.decode

    def spy(emb, points=None, point_labels=None, boxes=None, mask_inputs=None,
            multimask_output=True):
        out = orig(emb, points, point_labels, boxes, mask_inputs, multimask_output)
        seen.append((None if points is None else points.shape, mask_inputs, multimask_output,
                     out["mask_logits"].detach(), out["iou_scores"].detach()))
        return out

    model.decode = spy
    one = (batch[0][:1], batch[1][:1])
    click_step(model, one, num_rounds=2, box_prob=0.0, generator=torch.Generator().manual_seed(0))
    assert len(seen) == 3
    P = seen[0][0][1]
    assert [s[0] for s in seen] == [(1, P, 1, 2), (1, P, 2, 2), (1, P, 3, 2)]  # one click more
    assert [s[2] for s in seen] == [True, False, False]  # multimask only for the single point
    assert seen[0][1] is None
    best = seen[0][4][0].argmax(-1)  # the mask of highest predicted IoU is fed back
    assert torch.equal(seen[1][1][0], seen[0][3][0, torch.arange(P), best])
    assert torch.equal(seen[2][1][0], seen[1][3][0, :, 0])
    seen.clear()
    out = click_step(model, one, num_rounds=1, mask_rounds=1, box_prob=0.0,
                     generator=torch.Generator().manual_seed(0))
    assert [s[0] for s in seen] == [(1, P, 1, 2), (1, P, 2, 2), (1, P, 2, 2)]  # no new click
    assert torch.equal(seen[2][1][0], seen[1][3][0, :, 0])
    assert all(torch.isfinite(v) for v in out.values())
    with pytest.raises(ValueError, match="mask_rounds"):
        ClickTrainer(mask_rounds=-1)


def test_click_step_refuses_ddp_instead_of_training_unsynchronised(monkeypatch):
    """Under DDP the encoder-once / decoder-per-click calls would skip the gradient
    all-reduce: a clear error, not silently diverging replicas."""
    import torch.nn.parallel as parallel

    class FakeDDP(parallel.DistributedDataParallel):
        def __init__(self, module):  # no process group needed for the type check
            torch.nn.Module.__init__(self)
            self.module = module

    model = FakeDDP(sam("tiny"))
    with pytest.raises(ValueError, match="one process"):
        click_step(model, (torch.rand(1, 3, 64, 64), [{}]))


def test_centre_corrective_clicks_are_the_evaluation_protocol(monkeypatch):
    """With corrective="centre" every click after the first prompt is metrics.next_click of
    the shown prediction (spied), never a uniform draw; a bad value is a ValueError."""
    import segcourse.models.sam_training as st

    calls = {"centre": 0, "uniform": 0}
    real_centre, real_uniform = st.next_click, st.next_clicks

    def centre(pred, target, ignore=None):
        calls["centre"] += 1
        return real_centre(pred, target, ignore)

    def uniform(*args, **kwargs):
        calls["uniform"] += 1
        return real_uniform(*args, **kwargs)

    monkeypatch.setattr(st, "next_click", centre)
    monkeypatch.setattr(st, "next_clicks", uniform)
    torch.manual_seed(0)
    model = sam("tiny")
    data = InstanceTargets(ShapesDataset(num_samples=2, seed=0))
    batch = InstanceTargets.collate_fn([data[0], data[1]])
    out = ClickTrainer(num_rounds=2, seed=0, corrective="centre")(model, batch)
    assert calls["uniform"] == 0 and calls["centre"] > 0
    assert torch.isfinite(out["loss_mask"]) and "corrective='centre'" in repr(
        ClickTrainer(corrective="centre"))
    with pytest.raises(ValueError, match="corrective"):
        ClickTrainer(corrective="deepest")
