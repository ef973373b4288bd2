"""RoIAlign (He et al., "Mask R-CNN", ICCV 2017, Sec. 3), with ``torchvision.ops.roi_align``'s
exact sampling and border semantics (``csrc/ops/cpu/roi_align_kernel.cpp``).

torchvision loops over output values in C++. Here every output value is a weighted sum of at
most 4 x gh x gw input pixels (gh x gw samples per bin, 4 bilinear neighbours each), and one
``F.embedding_bag`` call computes many such sums from their lists of (pixel, weight) pairs.
The lists must be bounded: with adaptive sampling (``sampling_ratio <= 0``) a bin averages
about one sample per pixel, and Mask R-CNN's mask targets are RoIAligns of full-image masks
(800 x 1333) to 28 x 28 -- a RoI that covers the image needs 4.4 M pairs, 128 of them 0.56 G
(6.7 GB of int64 indices and float weights). So the work goes in chunks of at most
``_MAX_PAIRS`` pairs, the unit being one output row (a RoI's bin row); rows of equal or similar
grids share a chunk, which is padded only to its own largest grid. Under autograd a chunk's
pairs are recomputed in the backward pass instead of kept (``torch.utils.checkpoint``), so the
backward is bounded too. When all fits in one chunk -- a fixed ``sampling_ratio`` at the box and
mask heads' sizes -- it is a single call.
"""

from __future__ import annotations

import functools
import numbers

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .._checks import check_images

__all__ = ["roi_align", "as_rois"]

_MAX_PAIRS = 2 ** 21  # (pixel, weight) pairs built at once: 16 MB of int64 pixel indices


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
    pair = (size, size) if not isinstance(size, (tuple, list)) else tuple(size)
    if len(pair) != 2 or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool)
                                 and s >= 1 for s in pair):
        raise ValueError(f"output_size must be an int >= 1 or a pair (height, width) of them, "
                         f"got {size!r}")
    return int(pair[0]), int(pair[1])


def _check_rois(rois: torch.Tensor, boxes, num_images: int) -> None:
    """Batch indices: integers in [0, num_images); coordinates finite -- an index outside the
    batch would otherwise read another image's memory or crash deep inside embedding_bag."""
    if isinstance(boxes, (list, tuple)) and len(boxes) != num_images:
        raise ValueError(f"boxes is a list of {len(boxes)} per-image tensors but input holds "
                         f"{num_images} image(s): pass one Tensor[L, 4] per image")
    if rois.numel() == 0:
        return
    index = rois[:, 0]
    bad = (index != index.round()) | (index < 0) | (index >= num_images) | ~torch.isfinite(index)
    if bad.any():
        k = int(bad.nonzero()[0])
        raise ValueError(f"boxes[:, 0] must be integer batch indices in 0..{num_images - 1} "
                         f"(input holds {num_images} image(s)), got {index[k].item()} in row {k}")
    finite = torch.isfinite(rois[:, 1:]).all(dim=1)
    if not finite.all():
        k = int((~finite).nonzero()[0])
        raise ValueError(f"boxes must have finite coordinates, got {rois[k, 1:].tolist()} in "
                         f"row {k}")


def _axis(bin_start, bin_size, grid, G, size):
    """Along one axis, for U bin rows (or columns) of P bins each: the two neighbouring pixels
    ``[U, P, G, 2]`` of every sample and their linear-interpolation weights (zero if unused).

    ``bin_start [U, P]`` is where each bin begins, ``bin_size`` and ``grid`` (samples per bin,
    at most ``G``) are ``[U]``."""
    g = torch.arange(G, device=bin_start.device, dtype=bin_start.dtype)
    n = grid.clamp(min=1).to(bin_start.dtype)[:, None, None]
    c = bin_start[:, :, None] + (g + 0.5) * bin_size[:, None, None] / n
    used = (g < grid[:, None, None]) & (c >= -1.0) & (c <= size)  # beyond 1 px outside: zero
    c = c.clamp(0, size - 1)
    low = c.floor().long()
    high = (low + 1).clamp(max=size - 1)
    frac = c - low
    return torch.stack([low, high], -1), torch.stack([1 - frac, frac], -1) * used[..., None]


def _pool_rows(H, W, table, b, y_start, bin_h, grid_h, x_start, bin_w, grid_w):
    """Pooled values ``[U, PW, C]`` of U output rows: row u is the bin row that begins at
    ``y_start[u]`` in image ``b[u]``, its PW bins begin at ``x_start[u] [PW]``."""
    U, PW = x_start.shape
    GH, GW = max(int(grid_h.max()), 1), max(int(grid_w.max()), 1)
    iy, wy = _axis(y_start[:, None], bin_h, grid_h, GH, H)  # [U, 1, GH, 2]
    ix, wx = _axis(x_start, bin_w, grid_w, GW, W)           # [U, PW, GW, 2]
    # Every output value is a weighted sum of at most 4 * GH * GW input pixels: the 4 bilinear
    # neighbours of each sample, weight (y-weight * x-weight) / samples per bin. Lay the pixels of
    # output (u, pw) out as one "bag" of flat indices (image, y, x) with their weights:
    # [U, 1, GH, 2, 1, 1] and [U, PW, 1, 1, GW, 2] broadcast to [U, PW, GH, 2, GW, 2].
    b = b[:, None, None, None, None, None]
    iy, wy = iy[:, :, :, :, None, None], wy[:, :, :, :, None, None]
    ix, wx = ix[:, :, None, None, :, :], wx[:, :, None, None, :, :]
    count = (grid_h * grid_w).clamp(min=1).to(wy.dtype)[:, None, None, None, None, None]
    index = ((b * H + iy) * W + ix).reshape(U * PW, -1)
    weight = (wy * wx / count).reshape(U * PW, -1)
    # embedding_bag sums weighted rows of a table -- here the feature map with one row per pixel
    # -- without materialising the [bags, samples, C] gathered values, forward or backward.
    return F.embedding_bag(index, table, per_sample_weights=weight, mode="sum").reshape(U, PW, -1)


def _chunks(grid_h, grid_w, PW, budget, slack=1.25):
    """Output rows in chunks of at most ``budget`` (pixel, weight) pairs, or None if all rows
    fit in one. A chunk pads its rows to its largest grid, so rows are sorted by grid (height,
    then width) and a chunk also ends where padding would exceed ``slack`` x the pairs its rows
    need. A row larger than the budget is a chunk of its own."""
    gh, gw = grid_h.clamp(min=1), grid_w.clamp(min=1)  # an empty grid: one zero-weight sample
    if len(gh) * 4 * PW * int(gh.max()) * int(gw.max()) <= budget:
        return None
    order = (gh * (int(gw.max()) + 1) + gw).argsort(stable=True)  # by gh, then gw
    gh, gw = gh[order], gw[order]
    need = 4 * PW * gh * gw  # pairs of each row, unpadded
    chunks, start = [], 0
    while start < len(order):
        # rows start..j padded to their largest grid (cost non-decreasing in j); keep the prefix
        # that fits both the budget and the slack
        rows = torch.arange(1, len(order) - start + 1, device=order.device)
        padded = rows * 4 * PW * gh[start:].cummax(0).values * gw[start:].cummax(0).values
        fits = (padded <= budget) & (padded <= slack * need[start:].cumsum(0))
        stop = start + max(int(fits.cumprod(0).sum()), 1)
        chunks.append(order[start:stop])
        start = stop
    return chunks


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
    output is linear in the input, a weighted sum of input pixels per output value. Besides
    the output and a channels-last copy of the input, memory is bounded by ``_MAX_PAIRS``
    (see the module docstring), forward and backward.

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
    PH, PW = _pair(output_size)
    if isinstance(spatial_scale, bool) or not isinstance(spatial_scale, numbers.Real) \
            or not 0 < spatial_scale < float("inf"):
        raise ValueError(f"spatial_scale must be a positive number (feature size / image "
                         f"size), got {spatial_scale!r}")
    if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, numbers.Integral):
        raise ValueError(f"sampling_ratio must be an int (<= 0: adaptive), got "
                         f"{sampling_ratio!r}")
    rois = as_rois(boxes, input)
    N, C, H, W = input.shape
    _check_rois(rois, boxes, N)
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

    # The unit of work is one output row (RoI k, bin row ph): PW bags of 4 * gh * gw pairs.
    k = torch.arange(K, device=input.device).repeat_interleave(PH)       # [K * PH]
    ph = torch.arange(PH, device=input.device, dtype=input.dtype).repeat(K)
    pw = torch.arange(PW, device=input.device, dtype=input.dtype)
    rows = (rois[k, 0].long(), y1[k] + ph * bin_h[k], bin_h[k], grid_h[k],
            x1[k, None] + pw * bin_w[k, None], bin_w[k], grid_w[k])
    table = input.permute(0, 2, 3, 1).reshape(N * H * W, C)  # (N, C, H, W) -> (N*H*W, C)
    pool = functools.partial(_pool_rows, H, W)
    chunks = _chunks(grid_h[k], grid_w[k], PW, _MAX_PAIRS)
    if chunks is None:
        out = pool(table, *rows)
    else:
        # Recompute each chunk's pairs in the backward pass rather than keep them all.
        recompute = torch.is_grad_enabled() and (table.requires_grad or rois.requires_grad)
        parts = [checkpoint(pool, table, *(t[c] for t in rows), use_reentrant=False)
                 if recompute else pool(table, *(t[c] for t in rows)) for c in chunks]
        out = torch.cat(parts)[torch.cat(chunks).argsort()]  # rows back in (k, ph) order
    return out.reshape(K, PH, PW, C).permute(0, 3, 1, 2)    # (K*PH, PW, C) -> (K, C, PH, PW)
