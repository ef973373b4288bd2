"""Mask2Former's pixel decoder: a deformable-attention encoder over 1/32, 1/16, 1/8, then 1/4.

Paper: B. Cheng, I. Misra, A. G. Schwing, A. Kirillov, R. Girdhar, "Masked-attention Mask
Transformer for Universal Image Segmentation", CVPR 2022 (arXiv:2112.01527), Sec. 3.2 and
Appendix A.1 ("we use the multi-scale deformable attention Transformer (MSDeformAttn) as the
default pixel decoder ... 6 MSDeformAttn layers applied to feature maps with resolution 1/8,
1/16 and 1/32, and a simple upsampling layer with lateral connection on the final 1/8 feature
map to generate the feature map of resolution 1/4 as the per-pixel embedding").
Reference code: facebookresearch/Mask2Former ``mask2former/modeling/pixel_decoder/
msdeformattn.py`` (``MSDeformAttnPixelDecoder``) and ``transformer_decoder/position_encoding.py``
(``PositionEmbeddingSine``); HF transformers ``Mask2FormerPixelDecoder``, whose outputs
``tests/test_mask2former.py`` checks ours against (through the whole model).

1. **Input projections** -- 1x1 conv + GroupNorm(32) bring res5, res4, res3 (strides 32, 16, 8)
   to one width ``conv_dim``.
2. **Positions** -- a fixed 2-D sine embedding (DETR's) of each map, plus a learned embedding of
   its level, so that a query knows where and at which scale each value sits.
3. **Deformable encoder** -- the three maps flattened and concatenated into one sequence; every
   position is a query with its own pixel centre as reference point on all three levels, and
   reads 4 points per head and level (ops/deformable_attention.py). Post-norm layers:
   attention -> add & LayerNorm -> FFN (ReLU) -> add & LayerNorm.
4. **FPN step to 1/4** -- a 1x1 lateral conv of res2 plus the refined 1/8 map upsampled
   (bilinear) to the lateral's size, a 3x3 conv; a 1x1 conv gives the mask features.

Sizes are never assumed to be multiples of 32: an odd image gives the ResNet's ceil sizes
(97 -> 25, 13, 7, 4) and the upsampling goes to the lateral map's actual size.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._checks import check_count
from ..ops.deformable_attention import MultiScaleDeformableAttention

__all__ = ["sine_position_embedding", "encoder_reference_points", "DeformableEncoderLayer",
           "MSDeformAttnPixelDecoder"]

NUM_LEVELS = 3  # the encoder and the transformer decoder always use 1/32, 1/16, 1/8


def sine_position_embedding(height: int, width: int, channels: int, device=None,
                            dtype=torch.float32, temperature: float = 10000.0) -> torch.Tensor:
    """DETR's normalised sine embedding of an ``height x width`` grid, ``[channels, H, W]``.

    Half the channels encode y, half x. Pixel row i (1-based) becomes ``y = 2 pi i / H``
    (normalised, so that a position means the same fraction of the map at any size) and is
    written as ``sin(y / t_k), cos(y / t_k)`` pairs with ``t_k = temperature ** (2k / (C/2))``.
    Channel order as the reference ``PositionEmbeddingSine(C // 2, normalize=True)``:
    ``[y: sin_0, cos_0, sin_1, cos_1, ..., x: sin_0, cos_0, ...]``.
    """
    if channels % 4:
        raise ValueError(f"channels must be a multiple of 4 (sin and cos of y and x), "
                         f"got {channels}")
    eps, scale, half = 1e-6, 2 * math.pi, channels // 2
    y = torch.arange(1, height + 1, device=device, dtype=dtype) / (height + eps) * scale
    x = torch.arange(1, width + 1, device=device, dtype=dtype) / (width + eps) * scale
    k = torch.arange(half // 2, device=device, dtype=dtype)
    periods = temperature ** (2 * k / half)                              # (C/4,)

    def encode(t):  # (n,) -> (n, C/2): sin/cos pairs, interleaved
        angles = t[:, None] / periods
        return torch.stack([angles.sin(), angles.cos()], -1).flatten(1)

    pos_y = encode(y)[:, None, :].expand(height, width, half)
    pos_x = encode(x)[None, :, :].expand(height, width, half)
    return torch.cat([pos_y, pos_x], -1).permute(2, 0, 1)                # (C, H, W)


def encoder_reference_points(spatial_shapes, device=None, dtype=torch.float32) -> torch.Tensor:
    """``[S, L, 2]``: each encoder position's pixel centre, normalised ``(x, y)``, the same point
    on every level (no padding: Deformable DETR's ``valid_ratios`` are all 1)."""
    points = []
    for h, w in spatial_shapes:
        ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], -1))
    return torch.cat(points)[:, None, :].expand(-1, len(spatial_shapes), 2)


class DeformableEncoderLayer(nn.Module):
    """Deformable self-attention -> add & norm -> FFN -> add & norm (post-norm, as Deformable
    DETR's ``DeformableTransformerEncoderLayer``)."""

    def __init__(self, dim: int, num_heads: int, dim_feedforward: int, num_points: int = 4,
                 dropout: float = 0.0):
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(dim, num_heads, NUM_LEVELS, num_points)
        self.norm1 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, reference_points: torch.Tensor,
                spatial_shapes) -> torch.Tensor:
        # positions go into the queries (where to look) but not into the values (what is read)
        x = self.norm1(x + self.dropout(self.self_attn(x + pos, reference_points, x,
                                                       spatial_shapes)))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(x))))
        return self.norm2(x + self.dropout(ffn))


class MSDeformAttnPixelDecoder(nn.Module):
    """Backbone maps res2..res5 -> (mask features at stride 4, [1/32, 1/16, 1/8] features).

    Args:
        in_channels: channels of res2, res3, res4, res5 (the ResNet's layer1..layer4).
        conv_dim: width of every map it returns (paper: 256); a multiple of 32 (GroupNorm(32))
            and of 4 (the sine embedding).
        mask_dim: channels of the mask features (paper: 256).
        num_heads, num_layers, dim_feedforward, num_points: the deformable encoder's
            (paper: 8 heads, 6 layers, 1024, 4 points per head and level).
    """

    def __init__(self, in_channels, conv_dim: int = 256, mask_dim: int = 256,
                 num_heads: int = 8, num_layers: int = 6, dim_feedforward: int = 1024,
                 num_points: int = 4, dropout: float = 0.0):
        super().__init__()
        in_channels = [check_count(c, "in_channels") for c in in_channels]
        if len(in_channels) != NUM_LEVELS + 1:
            raise ValueError(f"in_channels must give the channels of res2..res5 (4 maps), got "
                             f"{in_channels}")
        for name, v in (("conv_dim", conv_dim), ("mask_dim", mask_dim),
                        ("num_layers", num_layers), ("dim_feedforward", dim_feedforward)):
            check_count(v, name, minimum=0 if name == "num_layers" else 1)
        if conv_dim % 32:
            raise ValueError(f"conv_dim must be a multiple of 32 (GroupNorm with 32 groups, as "
                             f"the reference), got {conv_dim}")
        self.conv_dim = conv_dim

        def gn():
            return nn.GroupNorm(32, conv_dim)

        # from low to high resolution, as the sequence is ordered: res5, res4, res3
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, conv_dim, 1), gn()) for c in in_channels[:0:-1])
        self.level_embed = nn.Parameter(torch.empty(NUM_LEVELS, conv_dim))
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(conv_dim, num_heads, dim_feedforward, num_points, dropout)
            for _ in range(num_layers))
        # the FPN step on res2 (the reference's ``adapter_1`` and ``layer_1``); bias-free convs
        # since GroupNorm follows
        self.lateral_conv = nn.Sequential(nn.Conv2d(in_channels[0], conv_dim, 1, bias=False),
                                          gn())
        self.output_conv = nn.Sequential(
            nn.Conv2d(conv_dim, conv_dim, 3, padding=1, bias=False), gn(), nn.ReLU())
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, 1)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The reference's: Xavier for the encoder's matrices, then Deformable DETR's init of
        each attention (ops), a unit normal level embedding, Xavier input projections and
        Detectron2's ``c2_xavier_fill`` (Kaiming-uniform, a=1, zero bias) for the FPN convs."""
        for p in self.layers.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for layer in self.layers:
            layer.self_attn.reset_parameters()
        nn.init.normal_(self.level_embed)
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight)
            nn.init.zeros_(proj[0].bias)
        for conv in (self.lateral_conv[0], self.output_conv[0], self.mask_features):
            nn.init.kaiming_uniform_(conv.weight, a=1)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)

    def forward(self, features) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``features``: res2..res5 ``[B, C_i, H_i, W_i]`` -> ``(mask_features [B, mask_dim,
        H_2, W_2], [1/32, 1/16, 1/8 maps, each [B, conv_dim, H_i, W_i]])``."""
        if len(features) != NUM_LEVELS + 1:
            raise ValueError(f"expected the 4 backbone maps res2..res5, got {len(features)}")
        srcs = [proj(x) for proj, x in zip(self.input_proj, features[:0:-1])]
        shapes = [tuple(s.shape[-2:]) for s in srcs]
        B, C = srcs[0].shape[:2]
        # (B, C, h, w) -> (B, h*w, C) per level, concatenated: S = sum of h*w
        x = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        pos = torch.cat([
            sine_position_embedding(h, w, C, x.device, x.dtype).flatten(1).T + self.level_embed[i]
            for i, (h, w) in enumerate(shapes)])                         # (S, C)
        reference = encoder_reference_points(shapes, x.device, x.dtype).expand(B, -1, -1, -1)
        for layer in self.layers:
            x = layer(x, pos, reference, shapes)
        # back to maps: (B, h*w, C) -> (B, C, h, w), from 1/32 to 1/8
        outs = [level.transpose(1, 2).reshape(B, C, h, w) for level, (h, w) in
                zip(x.split([h * w for h, w in shapes], 1), shapes)]
        lateral = self.lateral_conv(features[0])
        # bilinear (the reference's code, despite its comment on nearest), to res2's actual size
        y = lateral + F.interpolate(outs[-1], size=lateral.shape[-2:], mode="bilinear",
                                    align_corners=False)
        return self.mask_features(self.output_conv(y)), outs
