"""Panoptic quality (Kirillov et al., "Panoptic Segmentation", CVPR 2019).

Computed as the COCO panopticapi does (``pq_compute_single_core`` / ``PQStat.pq_average``), in
the input convention of torchmetrics' ``PanopticQuality``: maps of (category_id, instance_id)
per pixel.
"""

from __future__ import annotations

import torch

from .._checks import as_tensor, check_same_shape

__all__ = ["panoptic_quality"]


def _panoptic_segments(labels: torch.Tensor, valid: torch.Tensor, stuff: torch.Tensor):
    """Segment index per pixel (-1 where not ``valid``) and each segment's category."""
    labels = labels.clone()
    labels[stuff, 1] = 0  # a stuff class is one segment per image, whatever its instance ids
    pairs = labels[valid]
    per_pixel = torch.full(valid.shape, -1, dtype=torch.int64, device=labels.device)
    if pairs.numel() == 0:
        return per_pixel, pairs[:, 0]
    # One integer key per (category, instance) pair: a 1-D unique is much faster than
    # unique(dim=0). Ids are first replaced by their rank among the ids present, so the key
    # stays below (number of pixels)^2 whatever the ids' size -- no int64 overflow.
    categories, cat_rank = torch.unique(pairs[:, 0], return_inverse=True)
    _, inst_rank = torch.unique(pairs[:, 1], return_inverse=True)
    span = int(inst_rank.max()) + 1
    keys, index = torch.unique(cat_rank * span + inst_rank, return_inverse=True)
    per_pixel[valid] = index
    return per_pixel, categories[keys // span]


def panoptic_quality(preds: torch.Tensor, target: torch.Tensor, things, stuffs) -> dict:
    """Panoptic quality PQ = SQ x RQ, per class and averaged, with the things / stuff split.

    Args:
        preds, target: integer tensors ``[..., H, W, 2]`` of (category_id, instance_id) per pixel;
            leading dimensions are separate images. Stuff pixels' instance ids are ignored (each
            stuff class is one segment per image).
        things, stuffs: the category ids of countable objects and of amorphous regions.

    Target pixels whose category is in neither set are **void**: they are removed from every
    union, and a predicted segment lying more than half on void is not a false positive.
    Prediction pixels with a category in neither set (e.g. ``-1``, what panoptic fusion leaves
    unlabelled) belong to no segment, like panopticapi's VOID prediction: a ground-truth segment
    they cover is still missed. (torchmetrics refuses such predictions by default; with
    ``allow_unknown_preds_category=True`` it also drops them from unions and excuses the false
    negatives they cause. Without unknown predicted categories the two agree.)

    Matching, per image and category: a predicted and a ground-truth segment match when their
    IoU > 0.5 (such matches are unique). Then, per category, over all images::

        SQ = sum of matched IoUs / TP        (how good the matched masks are)
        RQ = TP / (TP + FP / 2 + FN / 2)     (an F1 score of detection)
        PQ = SQ * RQ = sum of matched IoUs / (TP + FP / 2 + FN / 2)

    The overall, things and stuff numbers average PQ, SQ and RQ separately over the categories
    that appear (TP + FP + FN > 0), as panopticapi does; a category with no segments in either
    map is left out rather than counted as 0 or 1.

    Returns ``{"pq", "sq", "rq", "n", "things": {"pq", "sq", "rq", "n"}, "stuff": {...},
    "per_class": {category: {"pq", "sq", "rq", "tp", "fp", "fn"}}}`` (NaN where n = 0).
    """
    things, stuffs = [int(c) for c in things], [int(c) for c in stuffs]
    if set(things) & set(stuffs):
        raise ValueError("things and stuffs must be disjoint, both contain "
                         f"{sorted(set(things) & set(stuffs))}")
    preds, target = as_tensor(preds, "preds"), as_tensor(target, "target")
    for name, x in (("preds", preds), ("target", target)):
        if x.dim() < 3 or x.shape[-1] != 2:
            raise ValueError(f"{name} must have shape [..., H, W, 2] (category_id, instance_id), "
                             f"got {tuple(x.shape)}")
        if x.is_floating_point() or x.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer tensor, got dtype {x.dtype}")
    check_same_shape(preds, target, "preds", "target")
    known = torch.tensor(things + stuffs, device=target.device)
    stuff_ids = torch.tensor(stuffs, dtype=torch.int64, device=target.device)
    H, W = target.shape[-3:-1]
    stats = {c: [0.0, 0, 0, 0] for c in things + stuffs}  # category -> [iou_sum, tp, fp, fn]
    for pred, gt in zip(preds.reshape(-1, H * W, 2).long(), target.reshape(-1, H * W, 2).long()):
        gt_void = ~torch.isin(gt[:, 0], known)
        p_seg, p_cat = _panoptic_segments(pred, torch.isin(pred[:, 0], known),
                                          torch.isin(pred[:, 0], stuff_ids))
        g_seg, g_cat = _panoptic_segments(gt, ~gt_void, torch.isin(gt[:, 0], stuff_ids))
        P, G = len(p_cat), len(g_cat)
        # joint histogram; the extra last row / column is "no segment" (pred unlabelled / gt void)
        joint = torch.bincount((p_seg % (P + 1)) * (G + 1) + g_seg % (G + 1),
                               minlength=(P + 1) * (G + 1)).reshape(P + 1, G + 1)
        p_area, g_area = joint[:P].sum(1), joint[:, :G].sum(0)
        inter = joint[:P, :G]
        p_on_void = joint[:P, G]
        union = p_area[:, None] + g_area[None, :] - inter - p_on_void[:, None]
        iou = inter.double() / union.clamp(min=1).double()
        matched = (iou > 0.5) & (p_cat[:, None] == g_cat[None, :])
        for p, g in matched.nonzero().tolist():
            s = stats[int(g_cat[g])]
            s[0] += float(iou[p, g])
            s[1] += 1
        for g in torch.where(~matched.any(0))[0].tolist():
            stats[int(g_cat[g])][3] += 1
        for p in torch.where(~matched.any(1))[0].tolist():
            if float(p_on_void[p]) / float(p_area[p]) <= 0.5:  # mostly on void: not counted
                stats[int(p_cat[p])][2] += 1

    per_class = {}
    for c, (iou_sum, tp, fp, fn) in stats.items():
        if tp + fp + fn == 0:
            continue
        denominator = tp + 0.5 * fp + 0.5 * fn
        sq = iou_sum / tp if tp else 0.0
        per_class[c] = {"pq": iou_sum / denominator, "sq": sq, "rq": tp / denominator,
                        "tp": tp, "fp": fp, "fn": fn}

    def average(categories):
        rows = [per_class[c] for c in categories if c in per_class]
        if not rows:
            return {"pq": float("nan"), "sq": float("nan"), "rq": float("nan"), "n": 0}
        return ({k: sum(r[k] for r in rows) / len(rows) for k in ("pq", "sq", "rq")}
                | {"n": len(rows)})

    return {**average(things + stuffs), "things": average(things), "stuff": average(stuffs),
            "per_class": per_class}
