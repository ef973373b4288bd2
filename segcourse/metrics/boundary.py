"""Boundary metrics: scores restricted to a band around class boundaries.

mIoU is dominated by the interior of large regions, where almost any model is right; the
boundary band -- valid pixels within ``radius`` of a class change -- is where models with coarse
output strides (FCN-32s, DeepLabV3) and models with skips (FCN-8s, U-Net, DeepLabV3+) differ.
A morphological band in the spirit of the trimap evaluation of Kohli et al. (2009), used by
DeepLab (Chen et al. 2017, Fig. 5); Boundary IoU (Cheng et al., CVPR 2021) is a related
per-mask score.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._checks import as_tensor
from .segmentation import mean_iou

__all__ = ["boundary_mask", "boundary_miou", "boundary_accuracy"]


def boundary_mask(target: torch.Tensor, radius: int = 1, ignore_index: int | None = 255,
                  void_is_boundary: bool = False) -> torch.Tensor:
    """Bool ``[B, H, W]``: valid pixels with a valid pixel of another class within ``radius``.

    A morphological gradient: over each ``(2r+1) x (2r+1)`` window, the largest and the smallest
    valid label (a dilation and an erosion of the label map) differ exactly when the window holds
    two classes. Ignored pixels are never boundary pixels. By default they do not create
    boundaries either: an object next to a void region is not at a class change.

    ``void_is_boundary=True`` is for datasets whose void *is* the outline between classes --
    the trimap border of Oxford-IIIT Pet, PASCAL VOC's object outlines: a valid pixel within
    ``radius`` of a void pixel is then a boundary pixel too. Without it, a void border wider
    than ``radius - 1`` pixels separates the classes so far that the band is empty.
    """
    target = as_tensor(target, "target")
    if target.dim() != 3 or target.is_floating_point():
        raise ValueError("target must be an integer tensor [B, H, W], got "
                         f"{target.dtype} {tuple(target.shape)}")
    if not isinstance(radius, int) or radius < 0:
        raise ValueError(f"radius must be an int >= 0, got {radius!r}")
    valid = (target != ignore_index if ignore_index is not None
             else torch.ones_like(target, dtype=torch.bool))
    # Labels are >= 0; void takes part as the label -1 when it marks a boundary, and pixels that
    # take no part get a filler that loses every max (-2) or every min (2**31).
    labels = torch.where(valid, target.double(), -1.0)[:, None]              # [B, 1, H, W]
    counts = (valid | void_is_boundary)[:, None]
    size = 2 * radius + 1
    highest = F.max_pool2d(torch.where(counts, labels, -2.0), size, 1, radius)
    lowest = -F.max_pool2d(torch.where(counts, -labels, -float(2 ** 31)), size, 1, radius)
    return valid & (highest != lowest)[:, 0]


def boundary_miou(pred: torch.Tensor, target: torch.Tensor, num_classes: int, radius: int = 2,
                  ignore_index: int | None = 255, void_is_boundary: bool = False) -> float:
    """mIoU over the boundary band only: every pixel outside :func:`boundary_mask` is ignored."""
    band = boundary_mask(target, radius, ignore_index, void_is_boundary)
    fill = 255 if ignore_index is None else ignore_index
    return mean_iou(pred, torch.where(band, target, fill), num_classes, ignore_index=fill)


def boundary_accuracy(pred: torch.Tensor, target: torch.Tensor, radius: int = 2,
                      ignore_index: int | None = 255, void_is_boundary: bool = False) -> float:
    """Fraction of boundary-band pixels whose predicted label is right (NaN for an empty band)."""
    pred, target = as_tensor(pred, "pred"), as_tensor(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred must be labels shaped like target {tuple(target.shape)}, "
                         f"got {tuple(pred.shape)}")
    band = boundary_mask(target, radius, ignore_index, void_is_boundary)
    total = int(band.sum())
    return float((pred == target)[band].sum()) / total if total else float("nan")
