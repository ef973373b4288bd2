"""Building blocks shared by several model families (kept here so no family copies them)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ConvBNReLU", "LayerNorm2d", "upsample_like"]


class ConvBNReLU(nn.Sequential):
    """Conv → BatchNorm → ReLU; the conv has no bias because BatchNorm adds one."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, dilation: int = 1, groups: int = 1):
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation,
                      groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


def upsample_like(x: torch.Tensor, size_or_ref) -> torch.Tensor:
    """Bilinearly resize ``x`` to ``size`` (H, W) or to the spatial size of a reference tensor."""
    size = size_or_ref.shape[-2:] if isinstance(size_or_ref, torch.Tensor) else size_or_ref
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map (timm's and segment_anything's
    LayerNorm2d, eps 1e-6): EoMT's ScaleBlocks, SAM's neck, mask downscaler and upscaling."""

    def __init__(self, channels: int):
        super().__init__(channels, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # norm over C
