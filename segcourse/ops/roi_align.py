"""RoIAlign (He et al., "Mask R-CNN", ICCV 2017, Sec. 3), with ``torchvision.ops.roi_align``'s
exact sampling and border semantics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._checks import check_images

__all__ = ["roi_align", "as_rois"]


def as_rois(boxes, like: torch.Tensor) -> torch.Tensor:
    """``Tensor[K, 5]`` (batch index, x1, y1, x2, y2), or a list of per-image ``Tensor[L, 4]``."""
    if isinstance(boxes, (list, tuple)):
        for b in boxes:
            if not isinstance(b, torch.Tensor) or b.dim() != 2 or b.shape[1] != 4:
                raise ValueError("each element of a list of boxes must be a Tensor[L, 4]")
        index = torch.cat([torch.full((len(b),), i, dtype=like.dtype, device=like.device)
                           for i, b in enumerate(boxes)]) if boxes else like.new_zeros(0)
        rois = torch.cat([index[:, None], torch.cat(list(boxes)).to(like)], dim=1) if boxes \
            else like.new_zeros(0, 5)
        return rois
    if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.shape[1] != 5:
        shape = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
        raise ValueError(f"boxes must be a Tensor[K, 5] or a list of Tensor[L, 4], got {shape}")
    return boxes.to(like)


def _pair(size) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def roi_align(input: torch.Tensor, boxes, output_size, spatial_scale: float = 1.0,
              sampling_ratio: int = -1, aligned: bool = False) -> torch.Tensor:
    """RoIAlign (Mask R-CNN, Sec. 3) with ``torchvision.ops.roi_align``'s exact semantics.

    Each RoI is split into ``output_size`` bins *without rounding*; each bin averages a regular
    grid of bilinearly interpolated samples -- ``sampling_ratio`` per side, or
    ``ceil(roi_size / output_size)`` when ``sampling_ratio <= 0`` (adaptive). With
    ``aligned=True`` box coordinates are shifted by -0.5 so that a pixel's centre sits at
    integer + 0.5 in box space (Detectron2's correction); with ``aligned=False`` the legacy RoI is
    at least 1 x 1. A sample with y < -1 or y > H (same for x) is zero; otherwise it is clamped
    to [0, H-1] before interpolation. Vectorised over RoIs, differentiable in ``input``: the
    output is linear in the input, a weighted sum of input pixels per output value.

    Args:
        input: features ``[N, C, H, W]``.
        boxes: ``Tensor[K, 5]`` of (batch index, x1, y1, x2, y2) or a list of ``Tensor[L, 4]``.
        output_size: int or (height, width) of the pooled output.
        spatial_scale: feature-map size / image size, e.g. 1/4 for a stride-4 map.

    Returns: ``[K, C, out_h, out_w]``.
    """
    check_images(input, name="roi_align input")
    if input.dtype in (torch.float16, torch.bfloat16):  # as torchvision under autocast: in float32
        return roi_align(input.float(), boxes, output_size, spatial_scale, sampling_ratio,
                         aligned).to(input.dtype)
    rois = as_rois(boxes, input)
    N, C, H, W = input.shape
    PH, PW = _pair(output_size)
    K = rois.shape[0]
    if K == 0:
        return input.new_zeros(0, C, PH, PW)
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (rois[:, 1:] * spatial_scale - offset).unbind(dim=1)
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:  # legacy: malformed RoIs become 1 x 1
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    bin_h, bin_w = roi_h / PH, roi_w / PW
    if sampling_ratio > 0:
        grid_h = torch.full((K,), sampling_ratio, dtype=torch.int64, device=input.device)
        grid_w = grid_h
    else:  # adaptive: about one sample per input pixel; 0 (an empty RoI) gives a zero output
        grid_h = torch.ceil(roi_h / PH).long().clamp(min=0)
        grid_w = torch.ceil(roi_w / PW).long().clamp(min=0)
    GH, GW = max(int(grid_h.max()), 1), max(int(grid_w.max()), 1)

    def axis(start, bin_size, grid, P, G, size):
        """Along one axis: for each RoI, bin and sample ``[K, P, G]``, the two neighbouring
        pixels ``[K, P, G, 2]`` and their linear-interpolation weights (zero if unused)."""
        p = torch.arange(P, device=input.device, dtype=input.dtype)[None, :, None]
        g = torch.arange(G, device=input.device, dtype=input.dtype)[None, None, :]
        n = grid.clamp(min=1).to(input.dtype)[:, None, None]
        c = start[:, None, None] + p * bin_size[:, None, None] + (g + 0.5) * bin_size[:, None, None] / n
        used = (g < grid[:, None, None]) & (c >= -1.0) & (c <= size)  # beyond 1 px outside: zero
        c = c.clamp(0, size - 1)
        low = c.floor().long()
        high = (low + 1).clamp(max=size - 1)
        frac = c - low
        return torch.stack([low, high], -1), torch.stack([1 - frac, frac], -1) * used[..., None]

    iy, wy = axis(y1, bin_h, grid_h, PH, GH, H)  # [K, PH, GH, 2]
    ix, wx = axis(x1, bin_w, grid_w, PW, GW, W)  # [K, PW, GW, 2]
    # Every output value is a weighted sum of at most 4 * GH * GW input pixels: the 4 bilinear
    # neighbours of each sample, weight (y-weight * x-weight) / samples per bin. Lay the pixels of
    # output (k, ph, pw) out as one "bag" of flat indices (batch, y, x) with their weights:
    # [K, PH, 1, GH, 2, 1, 1] and [K, 1, PW, 1, 1, GW, 2] broadcast to [K, PH, PW, GH, 2, GW, 2].
    b = rois[:, 0].long()[:, None, None, None, None, None, None]
    iy, wy = iy[:, :, None, :, :, None, None], wy[:, :, None, :, :, None, None]
    ix, wx = ix[:, None, :, None, None, :, :], wx[:, None, :, None, None, :, :]
    count = (grid_h * grid_w).clamp(min=1).to(input.dtype)[:, None, None, None, None, None, None]
    index = ((b * H + iy) * W + ix).reshape(K * PH * PW, -1)
    weight = (wy * wx / count).reshape(K * PH * PW, -1)
    # embedding_bag sums weighted rows of a table -- here the feature map with one row per pixel
    # -- without materialising the [bags, samples, C] gathered values, forward or backward.
    table = input.permute(0, 2, 3, 1).reshape(N * H * W, C)  # (N, C, H, W) -> (N*H*W, C)
    out = F.embedding_bag(index, table, per_sample_weights=weight, mode="sum")
    return out.reshape(K, PH, PW, C).permute(0, 3, 1, 2)     # (K*PH*PW, C) -> (K, C, PH, PW)
