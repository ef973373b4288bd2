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


def _check_detections(predictions, targets, iou_threshold) -> None:
    """One prediction dict per target dict, each with consistent masks / labels (/ scores)."""
    if not isinstance(predictions, (list, tuple)) or not isinstance(targets, (list, tuple)):
        raise ValueError("predictions and targets must be lists of dicts, one per image; got "
                         f"{type(predictions).__name__} and {type(targets).__name__}")
    if len(predictions) != len(targets):
        raise ValueError(f"one prediction per target image is expected: got {len(predictions)} "
                         f"prediction(s) for {len(targets)} target(s)")
    if not 0.0 <= float(iou_threshold) <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    for i, (p, t) in enumerate(zip(predictions, targets)):
        for name, d, keys in (("predictions", p, ("masks", "labels", "scores")),
                              ("targets", t, ("masks", "labels"))):
            missing = [k for k in keys if not isinstance(d, dict) or k not in d]
            if missing:
                raise ValueError(f"{name}[{i}] must be a dict with {list(keys)}; missing {missing}")
            n = len(d["labels"])
            if d["masks"].dim() != 3 or len(d["masks"]) != n or ("scores" in keys
                                                                  and len(d["scores"]) != n):
                raise ValueError(f"{name}[{i}]: masks [n, H, W], labels [n] (and scores [n]) "
                                 f"must agree, got masks {tuple(d['masks'].shape)}, {n} labels")
        if p["masks"].shape[-2:] != t["masks"].shape[-2:] and len(p["masks"]) and len(t["masks"]):
            raise ValueError(f"image {i}: predicted masks are {tuple(p['masks'].shape[-2:])}, "
                             f"target masks {tuple(t['masks'].shape[-2:])}")


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
    _check_detections(predictions, targets, iou_threshold)
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
        sampled = torch.where(index < len(envelope),
                              envelope[index.clamp(max=max(len(envelope) - 1, 0))]
                              if len(envelope) else torch.zeros_like(points),
                              torch.zeros_like(points))
        per_class[c] = float(sampled.mean())
    ap = sum(per_class.values()) / len(per_class) if per_class else float("nan")
    return {"ap": ap, "per_class": per_class}
