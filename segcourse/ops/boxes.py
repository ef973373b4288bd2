"""Box geometry: areas, pairwise IoU, the R-CNN delta encoding, clipping, boxes of masks.

Boxes are (x1, y1, x2, y2) in continuous pixel coordinates: pixel (i, j) covers [j, j+1) x
[i, i+1), so a box's width is x2 - x1 (no "+1" as in the original Caffe code). Reference:
torchvision ``ops/boxes.py`` and ``models/detection/_utils.py`` (``BoxCoder``).
"""

from __future__ import annotations

import math

import torch

__all__ = ["box_area", "box_iou", "encode_boxes", "decode_boxes", "clip_boxes",
           "remove_small_boxes", "masks_to_boxes", "BBOX_CLIP"]

BBOX_CLIP = math.log(1000.0 / 16)  # largest log-scale change decoded (torchvision, Detectron)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU ``[N, M]`` of boxes ``a [N, 4]`` and ``b [M, 4]``: inter / (area_a + area_b
    - inter), the arithmetic of torchvision's NMS kernel, so that decisions at a threshold agree."""
    ax1, ay1, ax2, ay2 = a.T.contiguous()[:, :, None]  # each [N, 1]
    bx1, by1, bx2, by2 = b.T.contiguous()[:, None, :]  # each [1, M]
    inter_w = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp_(min=0)
    inter_h = (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp_(min=0)
    inter = inter_w.mul_(inter_h)
    return inter / ((ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter)


def _centre_size(boxes):
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h, w, h


def encode_boxes(targets: torch.Tensor, anchors: torch.Tensor,
                 weights=(1.0, 1.0, 1.0, 1.0)) -> torch.Tensor:
    """R-CNN deltas ``(dx, dy, dw, dh)`` that move ``anchors`` onto ``targets``.

    Centre shifts are relative to the anchor's size and size changes are logarithmic, so one
    regressor serves small and large boxes alike. ``weights`` rescale the deltas to a similar
    spread: (1, 1, 1, 1) for the RPN, (10, 10, 5, 5) for the box head (torchvision, Detectron).
    """
    ax, ay, aw, ah = _centre_size(anchors)
    tx, ty, tw, th = _centre_size(targets)
    wx, wy, ww, wh = weights
    return torch.stack([wx * (tx - ax) / aw, wy * (ty - ay) / ah,
                        ww * torch.log(tw / aw), wh * torch.log(th / ah)], dim=1)


def decode_boxes(deltas: torch.Tensor, anchors: torch.Tensor,
                 weights=(1.0, 1.0, 1.0, 1.0)) -> torch.Tensor:
    """Inverse of :func:`encode_boxes`; ``deltas [N, 4k]`` gives boxes ``[N, k, 4]``."""
    ax, ay, aw, ah = (t[:, None] for t in _centre_size(anchors))
    d = deltas.reshape(deltas.shape[0], deltas.shape[1] // 4, 4)  # also for 0 boxes
    wx, wy, ww, wh = weights
    cx = d[..., 0] / wx * aw + ax
    cy = d[..., 1] / wy * ah + ay
    w = torch.exp((d[..., 2] / ww).clamp(max=BBOX_CLIP)) * aw
    h = torch.exp((d[..., 3] / wh).clamp(max=BBOX_CLIP)) * ah
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def clip_boxes(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    H, W = size
    x = boxes[..., 0::2].clamp(0, W)
    y = boxes[..., 1::2].clamp(0, H)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)


def remove_small_boxes(boxes: torch.Tensor, min_size: float) -> torch.Tensor:
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return torch.where((w >= min_size) & (h >= min_size))[0]


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes ``[..., 4]`` (float) of bool masks ``[..., H, W]``: a mask covering columns
    j1..j2 and rows i1..i2 gets (j1, i1, j2 + 1, i2 + 1), this module's convention (torchvision's
    ``masks_to_boxes`` returns the inclusive j2, i2); an empty mask gets 0s."""
    if not isinstance(masks, torch.Tensor) or masks.dim() < 2:
        raise ValueError(f"masks must be a tensor [..., H, W], got "
                         f"{tuple(masks.shape) if isinstance(masks, torch.Tensor) else masks!r}")
    masks = masks.bool()
    H, W = masks.shape[-2:]
    rows, cols = masks.any(-1), masks.any(-2)  # [..., H], [..., W]
    ys = torch.arange(H, device=masks.device)
    xs = torch.arange(W, device=masks.device)
    y1, y2 = torch.where(rows, ys, H).amin(-1), torch.where(rows, ys, -1).amax(-1) + 1
    x1, x2 = torch.where(cols, xs, W).amin(-1), torch.where(cols, xs, -1).amax(-1) + 1
    boxes = torch.stack([x1, y1, x2, y2], dim=-1).float()
    return torch.where(rows.any(-1, keepdim=True), boxes, torch.zeros_like(boxes))
