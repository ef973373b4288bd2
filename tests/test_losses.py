"""Losses against hand-computed values, torch's own cross-entropy and a brute-force Alg. 1 loop."""

import math

import pytest
import torch
import torch.nn.functional as F

from segcourse.losses import (
    BoundaryLoss,
    CombinedLoss,
    CrossEntropyLoss,
    DiceLoss,
    FocalLoss,
    LovaszSoftmaxLoss,
    boundary_loss,
    cross_entropy,
    dice_loss,
    focal_loss,
    lovasz_grad,
    lovasz_softmax,
)
from segcourse.metrics import confusion_matrix, iou_per_class

LOSSES = [cross_entropy, dice_loss, focal_loss, lovasz_softmax, boundary_loss]
LN2 = math.log(2)

# A 1 x 4 image with 3 classes whose softmax probabilities are chosen, so every loss can be worked
# out with a pencil (logits = log p gives softmax = p exactly). Pixel 3 is ignored; its
# probabilities are deliberately lopsided so that counting it anywhere would change every value.
PROBS = torch.tensor([[0.5, 0.25, 0.25],    # label 0: p_t = 1/2
                      [0.25, 0.5, 0.25],    # label 2: p_t = 1/4
                      [0.7, 0.1, 0.2],      # label 255: ignored
                      [0.25, 0.25, 0.5]],   # label 2: p_t = 1/2
                     dtype=torch.float64)
LOGITS = PROBS.log().T.reshape(1, 3, 1, 4)
TARGET = torch.tensor([[[0, 2, 255, 2]]])


# --- hand-computed values -----------------------------------------------------------------

def test_cross_entropy_hand_computed():
    # -log p_t over the 3 valid pixels: ln 2, ln 4, ln 2.
    assert cross_entropy(LOGITS, TARGET).item() == pytest.approx(4 * LN2 / 3)
    # weight [1, 1, 3]: (1 ln2 + 3 ln4 + 3 ln2) / (1 + 3 + 3).
    assert cross_entropy(LOGITS, TARGET, weight=[1.0, 1.0, 3.0]).item() == \
        pytest.approx(10 * LN2 / 7)


def test_focal_hand_computed():
    # (1 - p_t)^2 (-log p_t): 1/4 ln2, 9/16 * 2 ln2, 1/4 ln2; mean over 3 valid pixels.
    assert focal_loss(LOGITS, TARGET, gamma=2.0).item() == pytest.approx(1.625 * LN2 / 3)
    # alpha per class [1, 1, 3] multiplies the label-2 pixels; still divided by 3 pixels.
    assert focal_loss(LOGITS, TARGET, gamma=2.0, alpha=[1.0, 1.0, 3.0]).item() == \
        pytest.approx((0.25 + 3 * 1.125 + 3 * 0.25) * LN2 / 3)


def test_dice_hand_computed():
    # Valid pixels only. Class 0: sum p = 1, |g| = 1, intersection 1/2.
    # Class 2: sum p = 1, |g| = 2, intersection 1/4 + 1/2 = 3/4. Class 1 is absent: left out.
    assert dice_loss(LOGITS, TARGET, smooth=0.0).item() == pytest.approx(1 - (1 / 2 + 1 / 2) / 2)
    # smooth 1: dice_0 = (1 + 1) / (2 + 1), dice_2 = (3/2 + 1) / (3 + 1).
    assert dice_loss(LOGITS, TARGET, smooth=1.0).item() == pytest.approx(1 - (2 / 3 + 5 / 8) / 2)


def test_lovasz_hand_computed():
    # Two classes, three pixels: p(class 1) = 0.9, 0.4, 0.2 and labels 1, 1, 0.
    # Class 1: errors 0.1, 0.6, 0.2 -> sorted 0.6 (fg), 0.2 (bg), 0.1 (fg); Jaccard losses of the
    #   growing mispredicted set: 1/2, 2/3, 1 -> gradient 1/2, 1/6, 1/3
    #   -> 0.3 + 1/30 + 1/30 = 11/30.
    # Class 0: errors 0.1, 0.6, 0.2 -> sorted 0.6 (bg), 0.2 (fg), 0.1 (bg); Jaccard 1/2, 1, 1
    #   -> gradient 1/2, 1/2, 0 -> 0.3 + 0.1 = 2/5.
    p1 = torch.tensor([0.9, 0.4, 0.2], dtype=torch.float64)
    logits = torch.stack([(1 - p1).log(), p1.log()]).reshape(1, 2, 1, 3)
    target = torch.tensor([[[1, 1, 0]]])
    assert lovasz_softmax(logits, target).item() == pytest.approx((11 / 30 + 2 / 5) / 2)
    assert lovasz_grad(torch.tensor([1.0, 0.0, 1.0])).tolist() == \
        pytest.approx([1 / 2, 1 / 6, 1 / 3])


# --- independent formulations -------------------------------------------------------------

def _random_case(seed, shape=(2, 4, 6, 5), dtype=torch.float32, ignore_fraction=0.2):
    g = torch.Generator().manual_seed(seed)
    B, K, H, W = shape
    logits = torch.randn(shape, generator=g, dtype=dtype) * 2
    target = torch.randint(0, K, (B, H, W), generator=g)
    target[torch.rand(B, H, W, generator=g) < ignore_fraction] = 255
    return logits, target


@pytest.mark.parametrize("seed", range(3))
def test_cross_entropy_matches_torch(seed):
    logits, target = _random_case(seed, dtype=torch.float64)
    weight = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=torch.float64)
    torch.testing.assert_close(cross_entropy(logits, target),
                               F.cross_entropy(logits, target, ignore_index=255))
    torch.testing.assert_close(cross_entropy(logits, target, weight=weight),
                               F.cross_entropy(logits, target, weight=weight, ignore_index=255))


def _lovasz_brute_force(probs, target, classes="present", ignore=255):
    """Berman et al. Alg. 1 per class, explicit sets, one pixel at a time (lists, no tensors)."""
    K = probs.shape[0]
    pixels = [(i, int(t)) for i, t in enumerate(target.flatten().tolist()) if t != ignore]
    flat = probs.reshape(K, -1)
    if classes == "present":
        classes = sorted({t for _, t in pixels})
    elif classes == "all":
        classes = list(range(K))
    losses = []
    for c in classes:
        truth = {i for i, t in pixels if t == c}
        errors = {i: abs((1.0 if t == c else 0.0) - float(flat[c, i])) for i, t in pixels}
        order = sorted(errors, key=lambda i: -errors[i])
        loss, previous, mispredicted = 0.0, 0.0, set()
        for i in order:
            mispredicted.add(i)
            jaccard = 1 - len(truth - mispredicted) / len(truth | mispredicted)
            loss += errors[i] * (jaccard - previous)
            previous = jaccard
        losses.append(loss)
    return sum(losses) / len(losses) if losses else 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("classes", ["present", "all", [0, 3]])
def test_lovasz_matches_brute_force_alg1(dtype, classes):
    logits, target = _random_case(7, shape=(2, 4, 5, 6), dtype=dtype)
    target[target == 1] = 2  # class 1 absent: "present" and "all" must differ
    probs = logits.double().softmax(1)
    # Batch mode: sort over all valid pixels of both images together.
    joint = _lovasz_brute_force(probs.permute(1, 0, 2, 3), target, classes)
    assert lovasz_softmax(logits, target, classes=classes).item() == pytest.approx(joint, rel=1e-5)
    per_image = sum(_lovasz_brute_force(probs[b], target[b], classes) for b in range(2)) / 2
    assert lovasz_softmax(logits, target, classes=classes, per_image=True).item() == \
        pytest.approx(per_image, rel=1e-5)
    assert lovasz_softmax(logits, target, classes=classes).dtype == dtype


def test_lovasz_on_hard_predictions_is_one_minus_iou():
    # The Lovasz extension agrees with the set function on 0/1 vectors: with one-hot
    # probabilities the loss is exactly the mean over present classes of 1 - IoU.
    g = torch.Generator().manual_seed(3)
    target = torch.randint(0, 4, (2, 7, 9), generator=g)
    target[0, :2] = 255
    pred = torch.where(torch.rand(2, 7, 9, generator=g) < 0.3,
                       torch.randint(0, 4, (2, 7, 9), generator=g), target)
    pred[target == 255] = 1
    logits = F.one_hot(pred.clamp(max=3), 4).permute(0, 3, 1, 2).double() * 1000.0
    iou = iou_per_class(confusion_matrix(pred, target, 4))
    present = torch.bincount(target[target != 255], minlength=4) > 0
    expected = (1 - iou[present]).mean().item()
    assert lovasz_softmax(logits, target).item() == pytest.approx(expected, abs=1e-12)


def test_lovasz_per_image_skips_all_ignored_image():
    logits, target = _random_case(2, shape=(2, 3, 4, 4))
    target[1] = 255
    torch.testing.assert_close(lovasz_softmax(logits, target, per_image=True),
                               lovasz_softmax(logits[:1], target[:1], per_image=True))


# --- focal: alpha handling ----------------------------------------------------------------

def test_focal_gamma_zero_is_cross_entropy():
    logits, target = _random_case(4)
    torch.testing.assert_close(focal_loss(logits, target, gamma=0.0), cross_entropy(logits, target))


def test_focal_scalar_alpha_with_many_classes():
    # The binary [a, 1 - a] trick would index out of range with 5 classes; a scalar scales all.
    logits, target = _random_case(5, shape=(2, 5, 6, 6))
    torch.testing.assert_close(focal_loss(logits, target, alpha=0.25),
                               0.25 * focal_loss(logits, target))


def test_focal_alpha_vector_weights_each_class():
    logits, target = _random_case(6, shape=(1, 5, 8, 8))
    alpha = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5])
    valid = target != 255
    pixel = F.cross_entropy(logits, target, reduction="none", ignore_index=255)  # -log p_t
    pt = torch.exp(-pixel)
    safe = torch.where(valid, target, 0)
    expected = (alpha[safe] * (1 - pt) ** 2 * pixel)[valid].mean()
    torch.testing.assert_close(focal_loss(logits, target, alpha=alpha), expected)
    with pytest.raises(ValueError, match="one entry per class"):
        focal_loss(logits, target, alpha=[0.25, 0.75])


# --- boundaries ---------------------------------------------------------------------------

def test_boundary_loss_weights_boundary_pixels():
    logits, target = _random_case(8, shape=(1, 3, 8, 8), ignore_fraction=0.0)
    torch.testing.assert_close(boundary_loss(logits, target, boundary_weight=0.0),
                               cross_entropy(logits, target))
    # A ring around a square is the boundary; a pixel in the middle of a flat region is not.
    target = torch.zeros(1, 12, 12, dtype=torch.long)
    target[0, 4:8, 4:8] = 1
    logits = torch.zeros(1, 2, 12, 12, requires_grad=True)
    boundary_loss(logits, target, boundary_weight=4.0, radius=1).backward()
    grad = logits.grad.abs().sum(1)[0]
    assert grad[4, 4].item() == pytest.approx(5 * grad[0, 0].item())  # edge pixel: 1 + 4
    assert grad[5, 5].item() == pytest.approx(grad[0, 0].item())      # interior: 1


# --- robustness ---------------------------------------------------------------------------

@pytest.mark.parametrize("loss", LOSSES)
def test_all_ignored_is_zero_with_grad(loss):
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    value = loss(logits, torch.full((1, 4, 4), 255))
    assert value.item() == 0.0 and value.grad_fn is not None
    value.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_gradients_finite_with_absent_classes_and_saturated_logits(loss, scale):
    logits, target = _random_case(9, shape=(1, 5, 7, 7))
    target[target == 3] = 0  # class 3 absent
    logits = (logits * scale).requires_grad_()
    value = loss(logits, target)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()
    if scale == 1.0:  # (saturated softmax probabilities have exactly zero gradient in float32)
        assert logits.grad.abs().sum() > 0


def test_focal_small_gamma_gradient_finite_at_certainty():
    logits = torch.tensor([[[[100.0]], [[-100.0]]]], requires_grad=True)  # p_t == 1 in float32
    focal_loss(logits, torch.zeros(1, 1, 1, dtype=torch.long), gamma=0.5).backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("loss", LOSSES)
def test_bad_input_raises(loss):
    logits = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="shape"):
        loss(logits, torch.zeros(2, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        loss(logits[0], torch.zeros(4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        loss(logits, torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="labels must be in"):
        loss(logits, torch.full((2, 4, 4), 3))
    with pytest.raises(ValueError, match="labels must be in"):
        loss(logits, torch.full((2, 4, 4), 255), ignore_index=None)


def test_bad_options_raise():
    logits, target = _random_case(0)
    with pytest.raises(ValueError):
        lovasz_softmax(logits, target, classes="some")
    with pytest.raises(ValueError):
        lovasz_softmax(logits, target, classes=[4])
    with pytest.raises(ValueError):
        cross_entropy(logits, target, weight=[1.0, -1.0, 1.0, 1.0])
    with pytest.raises(ValueError):
        dice_loss(logits, target, smooth=-1.0)
    with pytest.raises(ValueError):
        focal_loss(logits, target, gamma=-1.0)


# --- modules ------------------------------------------------------------------------------

def test_modules_match_functions_and_combine():
    logits, target = _random_case(10)
    pairs = [(CrossEntropyLoss(weight=[1.0, 2.0, 3.0, 4.0]),
              cross_entropy(logits, target, [1.0, 2.0, 3.0, 4.0])),
             (DiceLoss(smooth=0.5), dice_loss(logits, target, smooth=0.5)),
             (FocalLoss(gamma=1.0, alpha=[1.0, 0.5, 0.5, 1.0]),
              focal_loss(logits, target, 1.0, [1.0, 0.5, 0.5, 1.0])),
             (LovaszSoftmaxLoss(per_image=True), lovasz_softmax(logits, target, per_image=True)),
             (BoundaryLoss(2.0, 1), boundary_loss(logits, target, 2.0, 1))]
    for module, expected in pairs:
        torch.testing.assert_close(module(logits, target), expected)
    combined = CombinedLoss([CrossEntropyLoss(), DiceLoss()], [1.0, 0.5])
    torch.testing.assert_close(combined(logits, target),
                               cross_entropy(logits, target) + 0.5 * dice_loss(logits, target))
    assert "weight" in dict(CrossEntropyLoss(weight=[1.0, 2.0]).named_buffers())
    with pytest.raises(ValueError):
        CombinedLoss([DiceLoss()], [1.0, 2.0])


@pytest.mark.parametrize("loss", LOSSES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("garbage", [float("nan"), float("inf"), -float("inf")])
def test_garbage_logits_at_ignored_pixels_change_nothing(loss, garbage):
    """Ignored means ignored: NaN or inf logits only where the target is 255 leave the loss and
    its gradient exactly as with any finite logits there (torch's F.cross_entropy agrees)."""
    logits, target = _random_case(3, shape=(2, 3, 6, 7), ignore_fraction=0.3)
    ignored = (target == 255)[:, None].expand_as(logits)
    clean = logits.clone().requires_grad_(True)
    dirty = logits.masked_fill(ignored, garbage).requires_grad_(True)
    expected, got = loss(clean, target), loss(dirty, target)
    assert torch.isfinite(got)
    torch.testing.assert_close(got, expected)
    expected.backward()
    got.backward()
    assert torch.isfinite(dirty.grad).all()
    assert (dirty.grad[ignored] == 0).all()
    torch.testing.assert_close(dirty.grad[~ignored], clean.grad[~ignored])


def test_all_ignored_batch_with_nan_logits_is_zero_with_a_gradient():
    logits = torch.full((1, 3, 4, 4), float("nan"), requires_grad=True)
    target = torch.full((1, 4, 4), 255)
    for loss in LOSSES:
        value = loss(logits, target)
        assert value.item() == 0.0, loss.__name__
        value.backward()
    assert (logits.grad == 0).all()
