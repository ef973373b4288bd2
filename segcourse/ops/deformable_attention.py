"""Multi-scale deformable attention: each query reads a few sampled points of every feature level.

Paper: X. Zhu, W. Su, L. Lu, B. Li, X. Wang, J. Dai, "Deformable DETR: Deformable Transformers
for End-to-End Object Detection", ICLR 2021 (arXiv:2010.04159), Sec. 4.1, Eq. 3.
Reference code: fundamentalvision/Deformable-DETR ``models/ops/modules/ms_deform_attn.py`` and
its pure-PyTorch fallback ``ms_deform_attn_core_pytorch`` (``functions/ms_deform_attn_func.py``),
both copied into facebookresearch/Mask2Former ``mask2former/modeling/pixel_decoder/ops``; HF
transformers' ``multi_scale_deformable_attention`` (``models/mask2former``), which
``tests/test_ops_deformable_attention.py`` checks this file against, with a brute-force loop.

Ordinary attention compares a query with *every* key: on the 1/8, 1/16 and 1/32 maps of a
512 x 512 image that is 5,376 keys per query, for 5,376 queries. Deformable attention replaces
the comparison by prediction. From the query alone, linear layers predict, for each of M heads,
L levels and P points, an offset ``Delta p`` (in pixels of that level) from the query's
reference point ``p`` and an attention weight (softmax over the L * P points of a head)::

    out_m(q) = sum_l sum_k  A_mlk(q) * V_m^l( p(q) + Delta p_mlk(q) )

where ``V_m^l(x)`` is head m's value map at level l, read at the fractional location x by
bilinear interpolation (zero outside the map). A query costs M * L * P reads, not H * W.

Locations are normalised: (0, 0) is the top-left corner of a map, (1, 1) the bottom-right one,
x before y; the centre of pixel (i, j) of an h x w map is ((j + 0.5) / w, (i + 0.5) / h).
``grid_sample`` with ``align_corners=False`` uses exactly this convention, on [-1, 1].

The authors' CUDA kernel computes the same sum faster; this file is the pure-PyTorch form
(``grid_sample``), which runs on any device.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._checks import check_count

__all__ = ["multi_scale_deformable_attention", "MultiScaleDeformableAttention",
           "check_spatial_shapes"]


def check_spatial_shapes(spatial_shapes, length: int | None = None) -> list[tuple[int, int]]:
    """``spatial_shapes`` (``[(h, w), ...]`` or a ``[L, 2]`` integer tensor) as a list of int
    pairs; with ``length``, their ``h * w`` must add up to it (the flattened maps' length)."""
    traced = spatial_shapes
    if isinstance(spatial_shapes, torch.Tensor):
        spatial_shapes = spatial_shapes.tolist()
    try:
        shapes = [(int(h), int(w)) for h, w in spatial_shapes]
    except (TypeError, ValueError):
        raise ValueError(f"spatial_shapes must be a list of (height, width) pairs, got "
                         f"{spatial_shapes!r}") from None
    if not shapes or any(h < 1 or w < 1 for h, w in shapes):
        raise ValueError(f"spatial_shapes must hold at least one (height, width) pair of "
                         f"positive ints, got {shapes}")
    if length is not None and sum(h * w for h, w in shapes) != length:
        raise ValueError(f"spatial_shapes {shapes} cover {sum(h * w for h, w in shapes)} "
                         f"positions, but the flattened maps have {length}")
    if torch.jit.is_tracing() and not isinstance(traced, torch.Tensor):
        # ONNX export: the sizes read from x.shape are traced values; int() would freeze them
        # at the export size and the graph would be wrong at any other (segcourse.export)
        return [tuple(pair) for pair in traced]
    return shapes


def multi_scale_deformable_attention(value: torch.Tensor, spatial_shapes,
                                     sampling_locations: torch.Tensor,
                                     attention_weights: torch.Tensor) -> torch.Tensor:
    """The sum of Eq. 3: bilinear samples of each level's values, weighted and summed.

    Args:
        value: ``[B, S, M, D]`` -- the values of M heads (D channels each) of all levels, each
            level's ``h * w`` map flattened row by row and the levels concatenated (S positions).
        spatial_shapes: the ``(h, w)`` of each of the L levels, in the order of ``value``.
        sampling_locations: ``[B, Q, M, L, P, 2]`` -- normalised ``(x, y)`` in [0, 1] (see the
            module docstring); points outside read zeros.
        attention_weights: ``[B, Q, M, L, P]`` -- usually a softmax over each head's L * P.

    Returns:
        ``[B, Q, M * D]``, the heads concatenated.
    """
    for name, t, dim in (("value", value, 4), ("sampling_locations", sampling_locations, 6),
                         ("attention_weights", attention_weights, 5)):
        if not isinstance(t, torch.Tensor) or t.dim() != dim or not t.is_floating_point():
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a {dim}-D floating-point tensor, got {shape}")
    B, S, M, D = value.shape
    shapes = check_spatial_shapes(spatial_shapes, S)
    Q, P = sampling_locations.shape[1], sampling_locations.shape[4]
    expected = (B, Q, M, len(shapes), P, 2)
    if tuple(sampling_locations.shape) != expected:
        raise ValueError(f"sampling_locations must have shape [B, Q, M, L, P, 2] = {expected} "
                         f"(value has B={B}, M={M}; {len(shapes)} levels), got "
                         f"{tuple(sampling_locations.shape)}")
    if tuple(attention_weights.shape) != expected[:-1]:
        raise ValueError(f"attention_weights must have shape [B, Q, M, L, P] = {expected[:-1]},"
                         f" got {tuple(attention_weights.shape)}")

    grids = 2 * sampling_locations - 1  # [0, 1] -> grid_sample's [-1, 1]
    out = value.new_zeros(B * M, D, Q)
    start = 0
    for level, (h, w) in enumerate(shapes):
        # (B, h*w, M, D) -> (B*M, D, h, w): one "image" of D channels per (batch, head)
        v = value[:, start:start + h * w].permute(0, 2, 3, 1).reshape(B * M, D, h, w)
        start += h * w
        # (B, Q, M, P, 2) -> (B*M, Q, P, 2): Q x P sampling points per (batch, head)
        grid = grids[:, :, :, level].transpose(1, 2).reshape(B * M, Q, P, 2)
        sampled = F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros",
                                align_corners=False)                       # (B*M, D, Q, P)
        weight = attention_weights[:, :, :, level].transpose(1, 2).reshape(B * M, 1, Q, P)
        out = out + (sampled * weight).sum(-1)
    # (B*M, D, Q) -> (B, Q, M*D)
    return out.view(B, M, D, Q).permute(0, 3, 1, 2).reshape(B, Q, M * D)


class MultiScaleDeformableAttention(nn.Module):
    """Deformable attention over L levels: offsets and weights predicted from the query.

    ``forward(query [B, Q, C], reference_points [B, Q, L, 2], values [B, S, C], spatial_shapes,
    padding_mask=None)`` -> ``[B, Q, C]``. ``reference_points`` are normalised ``(x, y)``, one
    per level (the same point for every level in Mask2Former's encoder); offsets are in pixels
    of each level, so they are divided by that level's ``(w, h)``. ``padding_mask [B, S]``
    (True = padding) zeroes those values.
    """

    def __init__(self, embed_dim: int = 256, num_heads: int = 8, num_levels: int = 4,
                 num_points: int = 4):
        super().__init__()
        for name, v in (("embed_dim", embed_dim), ("num_heads", num_heads),
                        ("num_levels", num_levels), ("num_points", num_points)):
            check_count(v, name)
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads "
                             f"({num_heads})")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.num_levels, self.num_points = num_levels, num_points
        self.sampling_offsets = nn.Linear(embed_dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Deformable DETR's initialisation (``MSDeformAttn._reset_parameters``).

        The offsets start input-independent (zero weight): head m looks along the direction
        at angle 2 pi m / M (scaled so that the larger of |x|, |y| is 1), its k-th point k
        pixels away -- a ring of rays around the reference point, the same at every level.
        Zero attention logits make the first weights uniform over the L * P points.
        """
        M, L, P = self.num_heads, self.num_levels, self.num_points
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(M, dtype=torch.float32) * (2.0 * math.pi / M)
        rays = torch.stack([thetas.cos(), thetas.sin()], -1)             # (M, 2), (x, y)
        rays = rays / rays.abs().max(-1, keepdim=True).values
        steps = torch.arange(1, P + 1, dtype=torch.float32)              # 1, 2, ..., P pixels
        grid = rays[:, None, None, :] * steps[None, None, :, None]       # (M, 1, P, 2)
        self.sampling_offsets.bias.copy_(grid.expand(M, L, P, 2).reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor,
                values: torch.Tensor, spatial_shapes,
                padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, Q, C = query.shape
        S = values.shape[1]
        M, L, P = self.num_heads, self.num_levels, self.num_points
        shapes = check_spatial_shapes(spatial_shapes, S)
        if len(shapes) != L:
            raise ValueError(f"expected {L} levels in spatial_shapes, got {len(shapes)}")
        if tuple(reference_points.shape) != (B, Q, L, 2):
            raise ValueError(f"reference_points must have shape [B, Q, L, 2] = {(B, Q, L, 2)}, "
                             f"got {tuple(reference_points.shape)}")
        value = self.value_proj(values)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.view(B, S, M, C // M)
        offsets = self.sampling_offsets(query).view(B, Q, M, L, P, 2)
        weights = self.attention_weights(query).view(B, Q, M, L * P).softmax(-1)
        # pixels of level l -> normalised units: divide x by its width, y by its height
        if torch.jit.is_tracing():  # traced sizes: torch.tensor(...) would freeze them
            normaliser = torch.stack([torch.stack([torch.as_tensor(w), torch.as_tensor(h)])
                                      for h, w in shapes]).to(query)          # (L, 2)
        else:
            normaliser = torch.tensor([(w, h) for h, w in shapes], dtype=query.dtype,
                                      device=query.device)                # (L, 2)
        locations = reference_points[:, :, None, :, None, :] + offsets / normaliser[:, None, :]
        out = multi_scale_deformable_attention(value, shapes, locations,
                                               weights.view(B, Q, M, L, P))
        return self.output_proj(out)
