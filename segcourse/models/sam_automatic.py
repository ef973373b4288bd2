"""Automatic mask generation ("segment everything") with SAM: a grid of point prompts, filtered.

Paper: Kirillov et al., "Segment Anything", ICCV 2023, section 4 and appendix A (the data
engine's fully automatic stage): a regular grid of foreground points, three masks per point
(the ambiguity-aware output), keep the confident and stable ones, remove duplicates by NMS.
Reference code: facebookresearch/segment-anything ``automatic_mask_generator.py``
(``SamAutomaticMaskGenerator``) and ``utils/amg.py``; HF transformers' ``SamImageProcessor``
(``filter_masks``, ``post_process_for_mask_generation``, ``_compute_stability_score``,
``_batched_mask_to_box``, ``_build_point_grid``), which ``tests/test_sam_automatic.py``
compares with.

:func:`generate_masks` follows ``SamAutomaticMaskGenerator._process_crop`` for one crop:

1. the image embedding once (:meth:`Sam.embed`);
2. ``points_per_side**2`` points at the grid's cell centres (:func:`build_point_grid`),
   decoded ``points_per_batch`` at a time with ``multimask_output`` -- three masks per point;
   logits are brought to the original image size (:meth:`~.sam.Sam.decode_image`);
3. keep masks with predicted IoU ``> pred_iou_thresh`` and :func:`stability_score` ``>=
   stability_score_thresh`` (the reference's strict and non-strict comparisons -- HF's
   ``filter_masks`` takes ``>`` for both; a threshold of 0 switches a filter off, as in both);
4. boxes around the masks (:func:`mask_boxes`) and box NMS at ``box_nms_thresh`` over the
   predicted IoUs -- two masks of one object from neighbouring points are near duplicates;
5. with ``min_mask_region_area > 0``: holes, then islands, smaller than that area removed from
   every mask (:func:`remove_small_regions`), and NMS again preferring unchanged masks
   (``postprocess_small_regions``).

Where we differ, and why: empty masks are dropped before NMS (the reference keeps them; the
default stability threshold usually removes them, but with the filters lowered for a small model
they came through as "objects" with boxes of 0s). One crop only (no ``crop_n_layers``: the extra
crops matter for small objects in large photos, not for 64-px scenes), so the reference's
crop-edge filter never fires and is left out. Masks are returned as a bool tensor, not RLE
records. The returned ``boxes`` are in the course's continuous convention (``x2 = last column +
1``, as ``segcourse.ops``); NMS runs on the reference's inclusive boxes (``x2 = last column``)
so that its decisions are the reference's. Output is sorted by predicted IoU. Connected
components (8-connectivity, as ``cv2.connectedComponentsWithStats(mask, 8)``) are found by
iterated 3 x 3 max-pooling of pixel labels in torch -- exact, no OpenCV, but one pass per pixel
of the longest path inside a region, so slow on large images with long snake-like regions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._checks import check_count, check_number, check_rgb_image
from ..ops import batched_nms, masks_to_boxes
from .sam import Sam, preprocess

__all__ = ["generate_masks", "stability_score", "build_point_grid", "mask_boxes",
           "connected_components", "remove_small_regions"]


def build_point_grid(n_per_side: int) -> torch.Tensor:
    """``[n*n, 2]`` points (x, y) in [0, 1]: the centres of an n x n grid of cells, x varying
    fastest (the reference's ``build_point_grid``: 2 -> (.25, .25), (.75, .25), (.25, .75) ...)."""
    n = check_count(n_per_side, "points_per_side")
    side = (torch.arange(n, dtype=torch.float64) + 0.5) / n  # cell centres
    y, x = torch.meshgrid(side, side, indexing="ij")
    return torch.stack([x, y], dim=-1).reshape(-1, 2).float()


def stability_score(mask_logits: torch.Tensor, threshold: float = 0.0,
                    offset: float = 1.0) -> torch.Tensor:
    """IoU of the masks thresholded at ``threshold + offset`` and ``threshold - offset``:
    ``[..., H, W]`` logits -> ``[...]``. The high mask lies inside the low one, so the IoU is
    a ratio of pixel counts. A stable mask barely changes when the cut-off moves (its logits
    are steep at the boundary). An empty low mask gives 0 / 0 = NaN, as in the reference (it
    fails every threshold)."""
    if not isinstance(mask_logits, torch.Tensor) or mask_logits.dim() < 2 \
            or not mask_logits.is_floating_point():
        got = (f"{mask_logits.dim()}-D {mask_logits.dtype}" if isinstance(mask_logits, torch.Tensor)
               else type(mask_logits).__name__)
        raise ValueError(f"mask_logits must be a floating-point tensor [..., H, W], got {got}")
    check_number(threshold, "threshold")
    check_number(offset, "offset", 0.0)
    inter = (mask_logits > threshold + offset).flatten(-2).sum(-1)
    union = (mask_logits > threshold - offset).flatten(-2).sum(-1)
    return inter.float() / union.float()


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Boxes ``[..., 4]`` (x1, y1, x2, y2, int64) of bool masks ``[..., H, W]`` in the
    reference's inclusive pixel indices (``x2`` is the last column that holds the mask); 0s for
    an empty mask (``batched_mask_to_box``). :func:`segcourse.ops.masks_to_boxes` less 1 on
    the far corner."""
    boxes = masks_to_boxes(masks).long()
    nonempty = masks.flatten(-2).any(-1, keepdim=True)
    return boxes - torch.cat([torch.zeros_like(boxes[..., :2]), nonempty.long().expand(
        *boxes.shape[:-1], 2)], -1)


def connected_components(mask: torch.Tensor) -> torch.Tensor:
    """8-connected regions of a bool mask ``[H, W]`` -> labels ``[H, W]`` (int64): 0 off the
    mask, 1..K for the regions, numbered in raster order of their first pixel.

    Each pixel starts with its own label; a 3 x 3 max-pool restricted to the mask spreads the
    largest label of a region over it, one step per pass, until nothing changes."""
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a tensor [H, W], got {got}")
    m = mask.bool()
    H, W = m.shape
    # float64 holds every pixel index exactly; max_pool2d takes floats only
    start = torch.arange(1, H * W + 1, dtype=torch.float64, device=m.device).view(1, 1, H, W)
    labels = start * m
    while True:
        spread = F.max_pool2d(labels, 3, stride=1, padding=1) * m
        if torch.equal(spread, labels):
            break
        labels = spread
    # renumber by first pixel: the region whose smallest pixel index is lowest is 1, ...
    first = torch.full((H * W + 1,), float(H * W + 1), dtype=torch.float64, device=m.device)
    flat = labels.flatten().long()
    first.scatter_reduce_(0, flat, start.flatten(), reduce="amin")
    first[0] = 0  # background first
    ids = first.argsort()  # region label ids sorted by their first pixel
    rank = torch.empty_like(ids)
    rank[ids] = torch.arange(len(ids), device=m.device)
    return rank[flat].view(H, W) * m


def remove_small_regions(mask: torch.Tensor, min_area: int,
                         mode: str) -> tuple[torch.Tensor, bool]:
    """``mode="holes"``: fill the regions *off* the mask smaller than ``min_area`` pixels;
    ``"islands"``: drop the regions *of* the mask smaller than that, keeping the largest if all
    are (``utils/amg.py``). Returns the new mask and whether it changed."""
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    holes = mode == "holes"
    labels = connected_components(~mask.bool() if holes else mask.bool())
    sizes = torch.bincount(labels.flatten())[1:]  # pixels per region 1..K
    small = sizes < min_area
    if not small.any():
        return mask.bool(), False
    if holes:
        fill = torch.cat([small.new_zeros(1), small])  # region ids to fill in
        return mask.bool() | fill[labels], True
    keep = ~small
    if not keep.any():
        keep[sizes.argmax()] = True
    return torch.cat([keep.new_zeros(1), keep])[labels], True


def _nms(masks: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Kept indices, best first: box NMS, class-agnostic, on the reference's boxes."""
    boxes = mask_boxes(masks).float()
    return batched_nms(boxes, scores, torch.zeros_like(scores, dtype=torch.long), iou_threshold)


@torch.no_grad()
def generate_masks(model: Sam, image: torch.Tensor, points_per_side: int = 16,
                   pred_iou_thresh: float = 0.88, stability_score_thresh: float = 0.95,
                   box_nms_thresh: float = 0.7, points_per_batch: int = 64,
                   min_mask_region_area: int = 0) -> dict[str, torch.Tensor]:
    """Every object in ``image`` ``[3, H, W]`` (in [0, 1], any size) as instance masks.

    Returns ``{"masks": [n, H, W] bool, "scores": [n] (predicted IoU), "boxes": [n, 4]
    (x1, y1, x2, y2, x2 exclusive), "stability": [n], "points": [n, 2] (the prompt, pixels),
    "labels": [n] (all 1: class-agnostic)}``, sorted by score -- the prediction format of
    :func:`segcourse.metrics.mask_average_precision`. Stability is computed with the paper's
    offset 1.0 around the mask threshold 0. Put the model in ``eval()`` mode first.
    """
    if not isinstance(model, Sam):
        raise ValueError(f"model must be a segcourse Sam, got {type(model).__name__}")
    check_rgb_image(image)
    n_side = check_count(points_per_side, "points_per_side")
    batch = check_count(points_per_batch, "points_per_batch")
    area = check_count(min_mask_region_area, "min_mask_region_area", minimum=0)
    for name, value in (("pred_iou_thresh", pred_iou_thresh),
                        ("stability_score_thresh", stability_score_thresh),
                        ("box_nms_thresh", box_nms_thresh)):
        check_number(value, name, 0.0, 1.0)

    H, W = image.shape[-2:]
    S = model.config.encoder.image_size
    dtype = model.mask_decoder.iou_token.weight.dtype
    embedding = model.embed(preprocess(image[None].to(dtype), S))  # [1, C, h, w], once
    points = build_point_grid(n_side).to(image.device) * image.new_tensor([W, H]).float()

    masks, scores, stability, prompts = [], [], [], []
    for start in range(0, len(points), batch):
        xy = points[start:start + batch]  # [P, 2], original pixels
        P = len(xy)
        out = model.decode_image(embedding, (H, W), xy.view(1, P, 1, 2),
                                 torch.ones(1, P, 1, dtype=torch.long, device=xy.device),
                                 multimask_output=True)
        logits = out["logits"][0].flatten(0, 1)  # [3P, H, W]
        iou = out["iou_scores"][0].flatten()  # [3P]
        M = out["iou_scores"].shape[-1]
        point = xy.repeat_interleave(M, dim=0)  # the prompt of each mask
        keep = iou > pred_iou_thresh if pred_iou_thresh > 0 else torch.ones_like(iou, dtype=bool)
        logits, iou, point = logits[keep], iou[keep], point[keep]
        stable = stability_score(logits, 0.0, 1.0)
        if stability_score_thresh > 0:
            keep = stable >= stability_score_thresh
            logits, iou, point, stable = logits[keep], iou[keep], point[keep], stable[keep]
        masks.append(logits > 0)
        scores.append(iou)
        stability.append(stable)
        prompts.append(point)
    masks, scores = torch.cat(masks), torch.cat(scores).float()
    stability, prompts = torch.cat(stability), torch.cat(prompts)
    # an empty mask segments nothing (a click on what the model never learned to segment)
    keep = masks.flatten(1).any(1)
    masks, scores, stability, prompts = masks[keep], scores[keep], stability[keep], prompts[keep]

    keep = _nms(masks, scores, box_nms_thresh)
    masks, scores, stability, prompts = masks[keep], scores[keep], stability[keep], prompts[keep]

    if area > 0 and len(masks):
        changed = torch.zeros(len(masks), dtype=torch.bool, device=masks.device)
        cleaned = []
        for i, m in enumerate(masks):
            m, filled = remove_small_regions(m, area, "holes")
            m, dropped = remove_small_regions(m, area, "islands")
            cleaned.append(m)
            changed[i] = filled or dropped
        masks = torch.stack(cleaned)
        # unchanged masks win over the cleaned ones they now duplicate (score 1 vs 0)
        keep = _nms(masks, (~changed).float(), box_nms_thresh)
        keep = keep[scores[keep].sort(descending=True, stable=True).indices]
        masks, scores, stability, prompts = (masks[keep], scores[keep], stability[keep],
                                             prompts[keep])

    boxes = masks_to_boxes(masks)  # x2, y2 exclusive
    return {"masks": masks, "scores": scores, "boxes": boxes, "stability": stability,
            "points": prompts, "labels": torch.ones(len(masks), dtype=torch.long,
                                                   device=masks.device)}
