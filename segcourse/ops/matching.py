"""Matching predictions to ground truth, and sampling what a loss looks at.

Two-stage detectors label every candidate box (an anchor for the RPN, a proposal for the box
head) by its best IoU with the ground truth, then train on a small random sample with a fixed
share of positives, so the thousands of easy background boxes do not drown the few objects.

Reference: torchvision ``models/detection/_utils.py`` -- ``Matcher`` (thresholds, the
``BELOW_LOW_THRESHOLD = -1`` / ``BETWEEN_THRESHOLDS = -2`` codes, ``allow_low_quality_matches``)
and ``BalancedPositiveNegativeSampler``; the same rules as Detectron2's ``Matcher`` and
``subsample_labels``.
"""

from __future__ import annotations

import torch

__all__ = ["match_boxes", "sample_balanced", "BACKGROUND", "IGNORE"]

BACKGROUND = -1  # best IoU below the low threshold: a negative (torchvision BELOW_LOW_THRESHOLD)
IGNORE = -2      # best IoU between the thresholds: left out of the loss (BETWEEN_THRESHOLDS)


def match_boxes(iou: torch.Tensor, high: float, low: float,
                allow_low_quality: bool) -> torch.Tensor:
    """For each of N candidates the index of its best ground truth, or BACKGROUND / IGNORE.

    ``iou [G, N]``: IoU of G ground-truth boxes with N candidates. Best IoU >= ``high``:
    matched; < ``low``: :data:`BACKGROUND`; in between: :data:`IGNORE`. With
    ``allow_low_quality`` each ground truth also keeps the candidates that overlap it most (all
    of them, if tied), even below ``high`` -- otherwise a small object no anchor covers well
    would never be learned (Faster R-CNN, Sec. 3.1.2). With no ground truth, all are background.
    """
    if not isinstance(iou, torch.Tensor) or iou.dim() != 2:
        raise ValueError(f"iou must be a Tensor[G, N], got {getattr(iou, 'shape', type(iou))}")
    if low > high:
        raise ValueError(f"low ({low}) must not exceed high ({high})")
    if iou.shape[0] == 0:
        return torch.full((iou.shape[1],), BACKGROUND, dtype=torch.int64, device=iou.device)
    best, matches = iou.max(dim=0)
    original = matches.clone()
    matches[best < low] = BACKGROUND
    matches[(best >= low) & (best < high)] = IGNORE
    if allow_low_quality:
        best_per_gt = iou.max(dim=1, keepdim=True).values
        candidates = torch.where(iou == best_per_gt)[1]
        matches[candidates] = original[candidates]
    return matches


def sample_balanced(labels: torch.Tensor, batch_size: int, positive_fraction: float):
    """Random positives (``labels >= 1``) up to ``positive_fraction`` of ``batch_size``, then
    random negatives (``labels == 0``) to fill it; other labels (ignored) are never drawn.

    Returns the indices ``(positive, negative)``. When positives are scarce the batch is filled
    with negatives, so it has ``batch_size`` entries whenever there are enough candidates.
    """
    if not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
    positive = torch.where(labels >= 1)[0]
    negative = torch.where(labels == 0)[0]
    num_pos = min(int(batch_size * positive_fraction), positive.numel())
    num_neg = min(batch_size - num_pos, negative.numel())
    positive = positive[torch.randperm(positive.numel(), device=labels.device)[:num_pos]]
    negative = negative[torch.randperm(negative.numel(), device=labels.device)[:num_neg]]
    return positive, negative
