"""Non-maximum suppression, greedy and per group (class or pyramid level).

Reference: torchvision ``ops/boxes.py`` (``nms``, ``batched_nms``) and its CPU kernel
``csrc/ops/cpu/nms_kernel.cpp``, whose results these match: the same IoU arithmetic, the same
greedy rule (a box goes if its IoU with a kept, higher-scoring box is > ``iou_threshold``).

Memory at the paper's sizes. The greedy sweep only ever compares a box with the boxes kept
*before* it, so the full N x N IoU matrix is not needed -- at 10,000 proposals it is 100 M
entries, 0.4 GB per float matrix, with several alive while it is computed; 80 classes x 1,000
detections would be 26 GB per matrix. Here the score-sorted boxes are visited in blocks of
``_BLOCK``: IoU of the block against the boxes kept so far, then greedy inside the block with
whole-matrix steps. The largest matrix is ``[kept so far, _BLOCK]``, and there is one Python
step per block, not per box.
"""

from __future__ import annotations

import numbers

import torch

from .boxes import box_iou

__all__ = ["nms", "batched_nms"]

_BLOCK = 256  # boxes per block: IoU matrices of at most [N, 256] floats (10 MB at N = 10,000)


def _check(boxes, scores, idxs=None, iou_threshold=0.5) -> None:
    # IoU lies in [0, 1]: a NaN threshold would keep every box, a negative one remove all
    # but one -- silently
    if isinstance(iou_threshold, bool) or not isinstance(iou_threshold, numbers.Real) \
            or not 0 <= iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be a number in [0, 1], got {iou_threshold!r}")
    if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
        shape = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
        raise ValueError(f"boxes must be a Tensor[N, 4], got {shape}")
    for name, t in (("scores", scores), ("idxs", idxs)):
        if t is not None and (not isinstance(t, torch.Tensor) or t.shape != boxes.shape[:1]):
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a Tensor[N] with N = {len(boxes)} (one per box), "
                             f"got {shape}")


def _greedy(boxes: torch.Tensor, groups: torch.Tensor | None,
            iou_threshold: float) -> torch.Tensor:
    """Keep-mask of greedy NMS over ``boxes`` taken in the given order (best first).

    ``groups`` (sorted, non-decreasing) restricts suppression to boxes of the same group; None is
    one group. Within a block the greedy sweep is computed by whole-matrix steps: box j is kept
    iff no earlier *kept* box suppresses it. Start from "all not yet suppressed" and re-apply
    this rule until nothing changes (the fixed-point iteration of Cluster-NMS, Zheng et al.
    2021): after pass t the first t boxes of the block are final, so it ends with the greedy
    answer, in practice after a handful of passes.
    """
    keep = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    for start in range(0, len(boxes), _BLOCK):
        block = boxes[start:start + _BLOCK]
        # 1. Kept boxes of earlier blocks that can suppress this block: all of them, or with
        #    groups those of the block's first group (later groups begin inside this block).
        first = 0 if groups is None else int(torch.searchsorted(groups, groups[start:start + 1]))
        earlier = first + keep[first:start].nonzero().squeeze(1)
        hit = (box_iou(boxes[earlier], block) > iou_threshold).any(dim=0)  # [block]
        if groups is not None:
            g = groups[start:start + _BLOCK]
            hit &= g == groups[start]
        alive = ~hit
        # 2. Greedy inside the block. beats[i, j]: box i comes first and would remove box j.
        beats = (box_iou(block, block) > iou_threshold).triu(diagonal=1)
        if groups is not None:
            beats &= g[:, None] == g[None, :]
        kept = alive
        while True:
            new_kept = alive & ~(beats & kept[:, None]).any(dim=0)
            if torch.equal(new_kept, kept):
                break
            kept = new_kept
        keep[start:start + _BLOCK] = kept
    return keep


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression (torchvision's ``ops.nms`` semantics).

    Visit boxes from the highest score down; keep a box unless it overlaps an already kept box
    with IoU > ``iou_threshold``. Returns the kept indices, highest score first. Equal scores
    are visited in index order (a stable sort; torchvision leaves their order unspecified).
    Memory is O(N x 256), not O(N^2) (see the module docstring).
    """
    _check(boxes, scores, iou_threshold=iou_threshold)
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    order = scores.sort(descending=True, stable=True).indices
    return order[_greedy(boxes[order], None, iou_threshold)]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor,
                iou_threshold: float) -> torch.Tensor:
    """NMS within each group of ``idxs`` (a class, an FPN level) independently.

    Returns the kept indices of all groups, highest score first (ties: lower index first).

    torchvision and Detectron shift each group's boxes by an offset larger than any coordinate,
    so that boxes of different groups never overlap and one NMS does them all; above 1,000 boxes
    on the CPU torchvision instead loops over the groups (``_batched_nms_vanilla``), because the
    one NMS then spans every group. Here the boxes are sorted by group, then score, and one
    blocked sweep compares a box only with kept boxes *of its own group*: the cost of the loop
    without a Python step per group, and exact -- the offset moves coordinates to ~1e5, where
    float32 rounds them to ~0.01 px and can flip a decision at the threshold.
    """
    _check(boxes, scores, idxs, iou_threshold)
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    order = scores.sort(descending=True, stable=True).indices
    order = order[idxs[order].sort(stable=True).indices]  # by group, then score, then index
    keep = order[_greedy(boxes[order], idxs[order], iou_threshold)]
    keep = keep.sort().values  # index order, so that equal scores stay in index order below
    return keep[scores[keep].sort(descending=True, stable=True).indices]
