"""Segmentation losses: cross-entropy, Dice, Focal, Lovasz-Softmax and a boundary-weighted CE.

Every loss takes **logits** ``[B, K, H, W]`` and integer **targets** ``[B, H, W]`` and returns a
scalar. Conventions shared by all of them (chapter 6 derives each one):

- Pixels labelled ``ignore_index`` (255 by default) count nowhere: not in a numerator, not in a
  denominator, not in a one-hot encoding. They are masked *before* any one-hot or indexing, which
  is exactly where a naive implementation crashes (``F.one_hot`` and ``alpha[target]`` of 255).
- If every pixel of the batch is ignored the loss is ``0``, not NaN (``F.cross_entropy``'s mean
  is ``0 / 0`` there), and it is still connected to the graph, so ``backward()`` works and gives
  zero gradients.
- Bad input -- wrong shapes, float targets, labels ``>= K`` other than ``ignore_index`` -- raises
  a ``ValueError`` that says what was expected (``segcourse._checks``).

References:
    Milletari et al., V-Net (2016): the soft Dice loss.
    Lin et al., Focal Loss for Dense Object Detection (2017): the focal loss.
    Berman et al., The Lovasz-Softmax loss (CVPR 2018), Alg. 1; reference code
    github.com/bermanmaxim/LovaszSoftmax (``pytorch/lovasz_losses.py``), which ours follows except
    where noted in :func:`lovasz_softmax`.
    Ronneberger et al., U-Net (2015): the pixel weight map that emphasises borders, the idea
    behind :func:`boundary_loss`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._checks import check_logits_and_target
from .metrics.boundary import boundary_mask

__all__ = [
    "cross_entropy", "dice_loss", "focal_loss", "lovasz_softmax", "lovasz_grad",
    "boundary_mask", "boundary_loss",
    "CrossEntropyLoss", "DiceLoss", "FocalLoss", "LovaszSoftmaxLoss", "BoundaryLoss",
    "CombinedLoss",
]


# --- shared helpers -----------------------------------------------------------------------

def _split_ignored(target: torch.Tensor, ignore_index: int | None):
    """``valid`` (bool ``[B, H, W]``) and ``safe``: the target with ignored pixels set to 0.

    ``safe`` can be one-hot encoded or used as an index; every value computed from an ignored
    pixel must then be multiplied by ``valid`` (or dropped with it).
    """
    target = target.long()
    if ignore_index is None:
        return torch.ones_like(target, dtype=torch.bool), target
    valid = target != ignore_index
    return valid, torch.where(valid, target, torch.zeros_like(target))


def _drop_ignored(logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``logits`` with every ignored pixel's logits replaced by 0.

    Ignored means ignored, whatever the logits there: multiplying a per-pixel loss by ``valid``
    is not enough, because ``0 * nan`` is NaN and ``0 * inf`` too -- forward, and in backward
    through the softmax. ``torch.where`` selects instead of multiplying, and its gradient to
    the replaced entries is exactly 0.
    """
    return torch.where(valid[:, None], logits, torch.zeros((), dtype=logits.dtype,
                                                           device=logits.device))


def _safe_divide(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator``, and 0 where the denominator is 0 (the numerator is 0 too).

    Dividing by 1 instead of masking the quotient keeps the gradient finite: with
    ``torch.where(d > 0, n / d, 0)`` the unused branch is still ``0 / 0`` and backward gives NaN.
    """
    return numerator / torch.where(denominator > 0, denominator, torch.ones_like(denominator))


def _class_vector(value, num_classes: int, like: torch.Tensor, name: str) -> torch.Tensor | None:
    """``None``, a scalar or a length-K sequence -> ``None`` or a ``[K]`` tensor (non-negative)."""
    if value is None:
        return None
    vector = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if vector.dim() == 0:
        vector = vector.expand(num_classes)
    if vector.dim() != 1 or vector.numel() != num_classes:
        raise ValueError(f"{name} must be a scalar or have one entry per class ({num_classes}), "
                         f"got shape {tuple(vector.shape)}")
    if not torch.isfinite(vector).all() or (vector < 0).any():
        raise ValueError(f"{name} must be finite and non-negative, got {vector.tolist()}")
    return vector


def _pixel_nll(logits: torch.Tensor, safe: torch.Tensor) -> torch.Tensor:
    """``-log softmax(logits)[target]`` per pixel, ``[B, H, W]`` (garbage where ignored)."""
    return -logits.log_softmax(1).gather(1, safe[:, None]).squeeze(1)


# --- cross-entropy ------------------------------------------------------------------------

def cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight=None,
                  ignore_index: int | None = 255) -> torch.Tensor:
    """Pixel-wise cross-entropy, a weighted mean over the non-ignored pixels.

    ``L = sum_i w[y_i] * (-log p_i[y_i]) / sum_i w[y_i]`` over pixels ``i`` with
    ``y_i != ignore_index`` (``w = 1`` when ``weight`` is None). This is what
    ``F.cross_entropy(..., weight, ignore_index)`` computes, except that an all-ignored batch gives
    0 instead of NaN.
    """
    check_logits_and_target(logits, target, ignore_index)
    weight = _class_vector(weight, logits.shape[1], logits, "weight")
    valid, safe = _split_ignored(target, ignore_index)
    logits = _drop_ignored(logits, valid)
    pixel_weight = valid.to(logits.dtype)
    if weight is not None:
        pixel_weight = pixel_weight * weight[safe]
    return _safe_divide((pixel_weight * _pixel_nll(logits, safe)).sum(), pixel_weight.sum())


# --- Dice ---------------------------------------------------------------------------------

def dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None = 255,
              smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice loss on softmax probabilities, over all pixels of the batch.

    For each class ``k``, with ``p`` the softmax probabilities and ``g`` the one-hot target, both
    zeroed on ignored pixels, and sums over every pixel of the batch:

        ``dice_k = (2 * sum(p_k * g_k) + smooth) / (sum(p_k) + sum(g_k) + smooth)``

    and the loss is ``1 - mean_k dice_k``. (V-Net squares ``p`` and ``g`` in the denominator; the
    plain sums used here are the more common modern form.)

    **Classes absent from the target** (no valid pixel of class ``k`` in the batch) are left out
    of the mean, as a class absent from both maps is left out of mIoU. Their Dice is not defined
    by the target: counting it would either reward the model for free (``smooth`` in both numerator
    and denominator makes it 1) or ask it to push that class's probability to exactly 0, where the
    term is flat anyway. False positives of an absent class are still penalised, through the
    present classes: probability on the wrong class is probability missing from the right one.
    If no class is present (every pixel ignored) the loss is 0.
    """
    check_logits_and_target(logits, target, ignore_index)
    if smooth < 0:
        raise ValueError(f"smooth must be >= 0, got {smooth}")
    num_classes = logits.shape[1]
    valid, safe = _split_ignored(target, ignore_index)
    logits = _drop_ignored(logits, valid)
    mask = valid[:, None].to(logits.dtype)                                   # [B, 1, H, W]
    probs = logits.softmax(1) * mask
    one_hot = F.one_hot(safe, num_classes).permute(0, 3, 1, 2)               # [B, K, H, W]
    one_hot = one_hot.to(logits.dtype) * mask
    dims = (0, 2, 3)
    intersection = (probs * one_hot).sum(dims)                               # [K]
    cardinality = probs.sum(dims) + one_hot.sum(dims)                        # [K]
    dice = ((2 * intersection + smooth)
            / (cardinality + smooth).clamp(min=torch.finfo(logits.dtype).tiny))
    present = (one_hot.sum(dims) > 0).to(logits.dtype)
    return _safe_divide(((1 - dice) * present).sum(), present.sum())


# --- Focal --------------------------------------------------------------------------------

def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, alpha=None,
               ignore_index: int | None = 255) -> torch.Tensor:
    """Softmax focal loss, a mean over the non-ignored pixels.

    ``FL_i = -alpha[y_i] * (1 - p_i[y_i]) ** gamma * log p_i[y_i]``: the factor ``(1 - p_t)^gamma``
    shrinks the loss of pixels that are already right, so the many easy pixels stop drowning the
    few hard ones. ``gamma = 0`` and ``alpha = None`` is plain cross-entropy.

    ``alpha`` is ``None`` (no weighting), a scalar (the same factor for every class) or a vector
    with one weight per class. The binary trick of writing ``alpha`` as ``[a, 1 - a]`` only makes
    sense for two classes; for ``K`` classes pass ``K`` weights. The mean divides by the number of
    valid pixels, as Lin et al. normalise by the number of assigned anchors -- so unlike
    ``cross_entropy(weight=...)``, class weights here also change the loss's overall scale.
    """
    check_logits_and_target(logits, target, ignore_index)
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    alpha = _class_vector(alpha, logits.shape[1], logits, "alpha")
    valid, safe = _split_ignored(target, ignore_index)
    logits = _drop_ignored(logits, valid)
    log_pt = logits.log_softmax(1).gather(1, safe[:, None]).squeeze(1)      # [B, H, W]
    loss = -log_pt
    if gamma > 0:
        # 1 - p_t via expm1 keeps precision when p_t is close to 1. The clamp at the smallest
        # normal float keeps the gradient of x**gamma finite at x = 0 when gamma < 1.
        one_minus_pt = (-torch.expm1(log_pt)).clamp(min=torch.finfo(logits.dtype).tiny)
        loss = one_minus_pt.pow(gamma) * loss
    if alpha is not None:
        loss = alpha[safe] * loss
    valid = valid.to(logits.dtype)
    return _safe_divide((loss * valid).sum(), valid.sum())


# --- Lovasz-Softmax -----------------------------------------------------------------------

def lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss w.r.t. errors in decreasing order.

    ``gt_sorted`` is ``[P]`` or ``[P, C]`` (one column per class): the 0/1 ground truth of each
    pixel, in the order of decreasing error. With ``M_i`` the set of the first ``i`` pixels (those
    treated as mispredicted), the Jaccard loss is ``J(M_i) = 1 - |G - M_i| / |G + M_i|`` and the
    gradient is ``g_i = J(M_i) - J(M_{i-1})`` (Berman et al., Alg. 1, via cumulative sums).
    """
    gts = gt_sorted.sum(0)
    intersection = gts - gt_sorted.cumsum(0)        # |G - M_i|: foreground not yet mispredicted
    union = gts + (1 - gt_sorted).cumsum(0)         # |G + M_i|: >= 1, since M_i is never empty
    jaccard = 1 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]], dim=0)


def _lovasz_flat(probs: torch.Tensor, labels: torch.Tensor, classes) -> tuple[torch.Tensor, int]:
    """Per-class Lovasz losses of ``probs [P, K]`` (valid pixels) -> (sum over classes, count)."""
    num_classes = probs.shape[1]
    fg = F.one_hot(labels, num_classes).to(probs.dtype)                     # [P, K]
    if classes == "present":
        chosen = (fg.sum(0) > 0).nonzero().flatten().tolist()
    elif classes == "all":
        chosen = list(range(num_classes))
    else:
        chosen = list(classes)
    if not chosen or probs.shape[0] == 0:
        return probs.sum() * 0, 0
    fg, probs = fg[:, chosen], probs[:, chosen]
    errors = (fg - probs).abs()
    # Sort every class's errors over ALL pixels at once: dim 0 of a [P, C] matrix.
    errors_sorted, perm = errors.sort(dim=0, descending=True)
    grad = lovasz_grad(fg.gather(0, perm))
    return (errors_sorted * grad).sum(), len(chosen)


def lovasz_softmax(logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None = 255,
                   classes="present", per_image: bool = False) -> torch.Tensor:
    """Lovasz-Softmax loss (Berman et al. 2018, Alg. 1), a convex surrogate of ``1 - IoU``.

    For each class ``c``: the errors ``m_i = |[y_i = c] - p_i[c]|`` of all valid pixels (of the
    whole batch, or of one image when ``per_image``) are sorted in decreasing order and dotted with
    :func:`lovasz_grad`; the loss is the mean over classes (then over images when ``per_image``).
    With hard 0/1 probabilities it equals ``1 - IoU_c`` exactly.

    ``classes``: ``"present"`` (classes with a valid target pixel), ``"all"``, or a list of
    class ids. Differences from the reference code, both about empty sets: an image whose pixels
    are all ignored (or, with ``"present"``, that has no class to average) is left out of the
    per-image mean instead of counting as a loss of 0; and an all-ignored batch gives a 0 that
    keeps its ``grad_fn``.
    """
    check_logits_and_target(logits, target, ignore_index)
    num_classes = logits.shape[1]
    if isinstance(classes, str):
        if classes not in ("present", "all"):
            raise ValueError("classes must be 'present', 'all' or a list of class ids, "
                             f"got {classes!r}")
    else:
        classes = [int(c) for c in classes]
        if not classes or any(not 0 <= c < num_classes for c in classes):
            raise ValueError(f"classes must be a non-empty list of ids in [0, {num_classes - 1}], "
                             f"got {classes}")
    valid, safe = _split_ignored(target, ignore_index)
    logits = _drop_ignored(logits, valid)
    probs = logits.softmax(1).permute(0, 2, 3, 1)                           # [B, H, W, K]
    groups = ([(probs[b][valid[b]], safe[b][valid[b]]) for b in range(logits.shape[0])]
              if per_image else [(probs[valid], safe[valid])])              # ([P, K], [P]) each
    losses = []
    for group_probs, group_labels in groups:
        total, count = _lovasz_flat(group_probs, group_labels, classes)
        if count:
            losses.append(total / count)
    if not losses:
        return logits.sum() * 0
    return torch.stack(losses).mean()


# --- boundary-weighted cross-entropy (the chapter 6 exercise) -------------------------------

def boundary_loss(logits: torch.Tensor, target: torch.Tensor, boundary_weight: float = 4.0,
                  radius: int = 2, ignore_index: int | None = 255) -> torch.Tensor:
    """Cross-entropy with pixels near class boundaries weighted ``1 + boundary_weight``.

    ``L = sum_i w_i * (-log p_i[y_i]) / sum_i w_i`` with ``w_i = 1 + boundary_weight * b_i`` and
    ``b = boundary_mask(target, radius)`` (pixels within ``radius`` of a class change, in the
    max-norm). A weighted mean, so the loss stays on the scale of cross-entropy; with
    ``boundary_weight = 0`` it *is* :func:`cross_entropy`. It is U-Net's weight-map idea with a
    morphological boundary; Kervadec et al.'s "boundary loss" is a different, distance-map-based
    loss.
    """
    check_logits_and_target(logits, target, ignore_index)
    if boundary_weight < 0:
        raise ValueError(f"boundary_weight must be >= 0, got {boundary_weight}")
    valid, safe = _split_ignored(target, ignore_index)
    logits = _drop_ignored(logits, valid)
    near = boundary_mask(target, radius, ignore_index).to(logits.dtype)
    weight = valid.to(logits.dtype) * (1 + boundary_weight * near)
    return _safe_divide((weight * _pixel_nll(logits, safe)).sum(), weight.sum())


# --- nn.Module wrappers -------------------------------------------------------------------

class CrossEntropyLoss(nn.Module):
    """Module form of :func:`cross_entropy`; ``weight`` is a buffer: it follows ``.to(device)``."""

    def __init__(self, weight=None, ignore_index: int | None = 255):
        super().__init__()
        self.register_buffer("weight", None if weight is None
                             else torch.as_tensor(weight, dtype=torch.float32))
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(logits, target, self.weight, self.ignore_index)


class DiceLoss(nn.Module):
    """Module form of :func:`dice_loss`."""

    def __init__(self, ignore_index: int | None = 255, smooth: float = 1.0):
        super().__init__()
        self.ignore_index, self.smooth = ignore_index, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return dice_loss(logits, target, self.ignore_index, self.smooth)


class FocalLoss(nn.Module):
    """Module form of :func:`focal_loss`; a vector ``alpha`` is a buffer."""

    def __init__(self, gamma: float = 2.0, alpha=None, ignore_index: int | None = 255):
        super().__init__()
        self.gamma, self.ignore_index = gamma, ignore_index
        self.register_buffer("alpha", None if alpha is None
                             else torch.as_tensor(alpha, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return focal_loss(logits, target, self.gamma, self.alpha, self.ignore_index)


class LovaszSoftmaxLoss(nn.Module):
    """Module form of :func:`lovasz_softmax`."""

    def __init__(self, ignore_index: int | None = 255, classes="present", per_image: bool = False):
        super().__init__()
        self.ignore_index, self.classes, self.per_image = ignore_index, classes, per_image

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return lovasz_softmax(logits, target, self.ignore_index, self.classes, self.per_image)


class BoundaryLoss(nn.Module):
    """Module form of :func:`boundary_loss` (boundary-weighted cross-entropy)."""

    def __init__(self, boundary_weight: float = 4.0, radius: int = 2,
                 ignore_index: int | None = 255):
        super().__init__()
        self.boundary_weight, self.radius, self.ignore_index = boundary_weight, radius, ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return boundary_loss(logits, target, self.boundary_weight, self.radius, self.ignore_index)


class CombinedLoss(nn.Module):
    """Weighted sum of losses, e.g. ``CombinedLoss([CrossEntropyLoss(), DiceLoss()], [1.0, 0.5])``.

    Pairing a pixel-wise loss (stable gradients from the start) with a region loss (Dice, Lovasz:
    aligned with the IoU metric) is common practice.
    """

    def __init__(self, losses: Sequence[nn.Module], weights: Sequence[float] | None = None):
        super().__init__()
        losses = list(losses)
        weights = [1.0] * len(losses) if weights is None else [float(w) for w in weights]
        if not losses or len(weights) != len(losses):
            raise ValueError(f"need one weight per loss, got {len(losses)} losses and "
                             f"{len(weights)} weights")
        self.losses = nn.ModuleList(losses)
        self.weights = weights

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(w * loss(logits, target) for w, loss in zip(self.weights, self.losses))
