"""Instance-segmentation metrics: mask IoU and COCO-style mask average precision.

Detections are dicts with ``masks [n, H, W]`` (bool), ``scores [n]`` and ``labels [n]``; ground
truths are dicts with ``masks`` and ``labels`` -- the output and the target format of
:class:`segcourse.models.MaskRCNN`.
"""

from __future__ import annotations

import torch

__all__ = ["mask_iou", "mask_average_precision"]

def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU ``[N, M]`` of boolean masks ``a [N, H, W]`` and ``b [M, H, W]``."""
    a, b = a.flatten(1).float(), b.flatten(1).float()
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


def mask_average_precision(predictions: list[dict], targets: list[dict],
                           iou_threshold: float = 0.5) -> dict:
    """COCO-style mask AP at one IoU threshold (e.g. AP@0.5), averaged over classes.

    Per class, detections from all images are visited by decreasing score; each is a true
    positive if it overlaps a not yet matched ground-truth mask of its class with IoU >=
    ``iou_threshold`` (the best such one), else a false positive. AP is the mean of the
    interpolated precision (max precision at any recall >= r) at the 101 recalls 0, 0.01, ..., 1,
    as in pycocotools. Classes with no ground truth are left out of the mean.

    Returns ``{"ap": float, "per_class": {label: ap}}``.
    """
    classes = sorted({int(c) for t in targets for c in t["labels"]})
    per_class = {}
    for c in classes:
        records, num_gt = [], 0
        for i, (p, t) in enumerate(zip(predictions, targets)):
            gt = t["masks"][t["labels"] == c].bool()
            num_gt += len(gt)
            sel = torch.where(p["labels"] == c)[0]
            ious = mask_iou(p["masks"][sel].bool(), gt) if len(sel) else None
            for j, k in enumerate(sel.tolist()):
                records.append((float(p["scores"][k]), i, ious[j]))
        records.sort(key=lambda r: -r[0])  # stable: equal scores keep their order
        matched = {}
        tp = []
        for _, i, ious in records:
            taken = matched.setdefault(i, torch.zeros(len(ious), dtype=torch.bool))
            candidates = torch.where(~taken & (ious >= iou_threshold))[0]
            if candidates.numel():
                taken[candidates[ious[candidates].argmax()]] = True
            tp.append(bool(candidates.numel()))
        tp = torch.tensor(tp, dtype=torch.float64)
        cum_tp = tp.cumsum(0)
        precision = cum_tp / torch.arange(1, len(tp) + 1, dtype=torch.float64)
        recall = cum_tp / num_gt
        # envelope: precision at recall r is the best precision at any recall >= r
        envelope = precision.flip(0).cummax(0).values.flip(0)
        points = torch.linspace(0, 1, 101, dtype=torch.float64)
        index = torch.searchsorted(recall, points, side="left")
        sampled = torch.where(index < len(envelope), envelope[index.clamp(max=max(len(envelope) - 1, 0))]
                              if len(envelope) else torch.zeros_like(points), torch.zeros_like(points))
        per_class[c] = float(sampled.mean())
    ap = sum(per_class.values()) / len(per_class) if per_class else float("nan")
    return {"ap": ap, "per_class": per_class}
