"""Reading maps at points, and choosing the points where a mask is least certain.

PointRend (Kirillov, Wu, He, Girshick, "PointRend: Image Segmentation as Rendering", CVPR 2020)
trains mask heads on a few points instead of every pixel: mostly points where the prediction
is uncertain (a logit near 0, i.e. near the mask's boundary), plus some uniformly random ones
for coverage. Mask2Former (Cheng et al., CVPR 2022, Sec. 3.2.2) adopts this for its mask
losses -- 12544 = 112 x 112 points per mask instead of the full mask -- which cuts training
memory threefold without losing accuracy.

Reference code: Detectron2 ``projects/PointRend/point_rend/point_features.py``
(``point_sample``, ``get_uncertain_point_coords_with_randomness``), used unchanged by
facebookresearch/Mask2Former ``mask2former/modeling/criterion.py`` and mirrored by HF
transformers' ``sample_point`` / ``Mask2FormerLoss.sample_points_using_uncertainty``. The
random numbers are drawn in the same order and shapes as there, so a seeded run gives the
same points.
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F

from .._checks import check_count

__all__ = ["point_sample", "uncertain_points"]


def point_sample(inputs: torch.Tensor, coords: torch.Tensor, mode: str = "bilinear"
                 ) -> torch.Tensor:
    """Bilinear values of ``inputs [B, C, H, W]`` at ``coords [B, P, 2]`` -> ``[B, C, P]``
    (``mode="nearest"``: the value of the pixel each point falls in).

    Coordinates are ``(x, y)`` in ``[0, 1]`` over the whole map: ``(0, 0)`` is the top-left
    *corner* of the top-left pixel and pixel ``(i, j)``'s centre is ``((j + 0.5) / W,
    (i + 0.5) / H)`` -- ``grid_sample`` with ``align_corners=False``. Within half a pixel of
    the border the map is blended with zeros (``grid_sample``'s zero padding), as in Detectron2.
    Because coordinates are normalised, a stride-4 prediction and its full-resolution target
    are read at the same places of the image.
    """
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4:
        shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs)
        raise ValueError(f"inputs must be a tensor [B, C, H, W], got {shape}")
    if not inputs.is_floating_point():
        raise ValueError(f"inputs must be floating point (cast masks with .float()), "
                         f"got dtype {inputs.dtype}")
    if not isinstance(coords, torch.Tensor) or coords.dim() != 3 or coords.shape[-1] != 2 \
            or len(coords) != len(inputs):
        shape = tuple(coords.shape) if isinstance(coords, torch.Tensor) else type(coords)
        raise ValueError(f"coords must be a tensor [B, P, 2] of (x, y) with B = "
                         f"{len(inputs)} (the batch of inputs), got {shape}")
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    grid = 2.0 * coords.to(inputs.dtype)[:, :, None, :] - 1.0  # [0, 1] -> grid_sample's [-1, 1]
    return F.grid_sample(inputs, grid, mode=mode, align_corners=False).squeeze(3)


def check_point_sampling(num_points, oversample_ratio, importance_sample_ratio) -> int:
    """``num_points`` as an int >= 1, after checking the two ratios of :func:`uncertain_points`
    (the reference asserts the same bounds)."""
    num_points = check_count(num_points, "num_points")
    for name, value, low, high in (("oversample_ratio", oversample_ratio, 1.0, float("inf")),
                                   ("importance_sample_ratio", importance_sample_ratio, 0.0,
                                    1.0)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) \
                or not low <= value <= high or value == float("inf"):
            rng = f">= {low:g}" if high == float("inf") else f"in [{low:g}, {high:g}]"
            raise ValueError(f"{name} must be a finite number {rng}, got {value!r}")
    return num_points


def uncertain_points(logits: torch.Tensor, num_points: int, oversample_ratio: float = 3.0,
                     importance_sample_ratio: float = 0.75,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """PointRend's training points for each mask of ``logits [B, 1, H, W]`` -> ``[B, P, 2]``.

    1. Draw ``int(num_points * oversample_ratio)`` uniformly random candidate points.
    2. Keep the ``int(importance_sample_ratio * num_points)`` most uncertain of them, the
       uncertainty of a point being ``-|logit|`` (largest where the mask is undecided).
    3. Fill up to ``num_points`` with fresh uniformly random points.

    Coordinates are ``(x, y)`` in ``[0, 1]`` as :func:`point_sample` reads them. Random numbers
    come from ``generator`` (torch's default one when ``None``), in the reference's order.
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 4 or logits.shape[1] != 1:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
        raise ValueError(f"logits must be a tensor [B, 1, H, W] (one mask per row), got {shape}")
    num_points = check_point_sampling(num_points, oversample_ratio, importance_sample_ratio)
    B = len(logits)
    num_candidates = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    candidates = torch.rand(B, num_candidates, 2, device=logits.device, generator=generator)
    uncertainty = -point_sample(logits, candidates)[:, 0].abs()  # [B, num_candidates]
    chosen = uncertainty.topk(num_uncertain, dim=1).indices  # [B, num_uncertain]
    coords = torch.gather(candidates, 1, chosen[:, :, None].expand(-1, -1, 2))
    num_random = num_points - num_uncertain
    if num_random > 0:
        coords = torch.cat([coords, torch.rand(B, num_random, 2, device=logits.device,
                                               generator=generator)], dim=1)
    return coords
