"""Non-maximum suppression, greedy and per group (class or pyramid level).

Reference: torchvision ``ops/boxes.py`` (``nms``, ``batched_nms``), whose results these match.
"""

from __future__ import annotations

import torch

from .boxes import box_iou

__all__ = ["nms", "batched_nms"]


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression (torchvision's ``ops.nms`` semantics).

    Visit boxes from the highest score down; keep a box unless it overlaps an already kept box
    with IoU > ``iou_threshold``. Returns the kept indices, highest score first.

    The greedy sweep is sequential, but it can be computed with whole-matrix steps: box j is
    kept iff no *kept* higher-scoring box suppresses it. Start from "all kept" and re-apply this
    rule until nothing changes (the fixed-point iteration of Cluster-NMS, Zheng et al. 2021).
    After pass t the first t boxes are final, so it ends with the greedy answer -- in practice
    after a handful of passes instead of one Python step per box.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    order = scores.argsort(descending=True)
    # suppresses[i, j]: higher-scored box i would remove box j (upper triangle, sorted order)
    suppresses = (box_iou(boxes[order], boxes[order]) > iou_threshold).triu(diagonal=1)
    keep = torch.ones(len(order), dtype=torch.bool, device=boxes.device)
    while True:
        new_keep = ~(suppresses & keep[:, None]).any(dim=0)
        if torch.equal(new_keep, keep):
            return order[keep]
        keep = new_keep


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor,
                iou_threshold: float) -> torch.Tensor:
    """NMS within each group of ``idxs`` (a class, an FPN level) independently.

    The trick of torchvision and Detectron: shift each group's boxes by a different offset larger
    than any coordinate, so boxes of different groups can never overlap; one NMS does them all.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    offsets = idxs.to(boxes) * (boxes.max() - boxes.min() + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)
