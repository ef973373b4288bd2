"""U-Net and Attention U-Net.

Papers: O. Ronneberger, P. Fischer, T. Brox, "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI 2015; O. Oktay et al., "Attention U-Net: Learning Where to Look for the
Pancreas", MIDL 2018.
Reference code: milesial/Pytorch-UNet (``unet/unet_parts.py``, ``unet/unet_model.py``; the
common PyTorch U-Net: same-padded convolutions with BatchNorm) and
ozan-oktay/Attention-Gated-Networks (``models/layers/grid_attention_layer.py``, the authors'
attention gate).

U-Net is an encoder that halves the resolution ``depth`` times (two 3 x 3 convs, then 2 x 2 max
pooling) and a decoder that doubles it back, concatenating at every level the encoder's map of
the same size (the *skip*), so fine detail lost by pooling comes back. The original used
unpadded convolutions and cropped the skips (a 572 x 572 input gave a 388 x 388 map); like the
reference code we pad every conv, so the output has the input's size. When a size is odd,
pooling drops the last row or column, and the upsampled map comes back one pixel short of the
skip: we pad it at the bottom / right, which is exactly where that pixel was dropped.

Sizes come from :class:`UNetConfig`. ``PAPER`` (``build("unet", 2, paper=True)``) has the
paper's widths, 64 ... 1024 over four poolings, and is milesial's ``UNet(n_channels=3,
n_classes=2)``: 31,037,698 parameters with transposed-conv upsampling, 17,263,042 with bilinear
upsampling (where, as there, every decoder block outputs the width of the next skip, so the
bottleneck has 512 channels instead of 1024). It differs from Ronneberger et al.'s network only
by the padding (no parameters) and by BatchNorm in place of the convolutions' biases: one more
parameter per channel of each 3 x 3 conv, 5,888 in all (the original, with one input channel,
has 31,030,658).
``SMALL``, the registry default, is the same network 4x narrower (16 ... 256), for a CPU.

Attention U-Net gates each skip before concatenation. The gate (Oktay et al., Eq. 1-2) computes
additive attention ``alpha = sigmoid(psi(relu(W_x x + W_g g)))`` from the skip ``x`` and the
*gating signal* ``g``, the decoder's map one level coarser; as in the authors' code, ``W_x`` is a
2 x 2 stride-2 convolution that brings ``x`` onto ``g``'s grid, the coefficients are computed
there and resampled bilinearly **to the skip's exact size**, and the gated skip ``alpha * x`` goes
through a 1 x 1 conv + BatchNorm. Resampling to a *size* (not by a factor of 2) is what makes odd
input sizes work. The authors' 3-D model (``unet_CT_single_att_dsv_3D.py``) gates only the three
coarser skips, gates the coarsest with a 1 x 1 conv + BN + ReLU of the bottleneck, and adds deep
supervision; here every skip is gated, each by the decoder's map one level coarser, with the
gate of ``GridAttentionBlock2D`` (``F_int = F_x / 2``, its default). The last forward's
coefficients are kept in ``model.attention_maps``. Attention U-Net takes U-Net's configs: its
``PAPER`` is U-Net's 64 ... 1024 (the authors' 3-D model divides these widths by 4).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._checks import check_count, check_model_input
from . import register
from .blocks import ConvBNReLU
from .config import configure

__all__ = ["UNetConfig", "PAPER", "SMALL", "DoubleConv", "Down", "Up", "AttentionGate", "UNet",
           "AttentionUNet", "pad_to", "unet", "attention_unet"]


@dataclass(frozen=True)
class UNetConfig:
    """Sizes of a U-Net (or Attention U-Net); the defaults are the paper's."""

    base_channels: int = 64  # widths base * 2**level: 64 ... 1024 in the paper (Fig. 1)
    depth: int = 4  # poolings: four, so the bottleneck sees 1/16 of the input per side
    bilinear: bool = False  # upsample by a learned 2x2 transposed conv (paper) or bilinearly


PAPER = UNetConfig()  # paper=True
SMALL = UNetConfig(base_channels=16)  # the registry default: 16 ... 256, ~1.9 M parameters


class DoubleConv(nn.Sequential):
    """(3 x 3 conv → BatchNorm → ReLU) x 2: U-Net's unit at every level."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None):
        mid_channels = mid_channels or out_channels
        super().__init__(ConvBNReLU(in_channels, mid_channels),
                         ConvBNReLU(mid_channels, out_channels))


class Down(nn.Sequential):
    """2 x 2 max pooling (halves H and W, rounding down) → DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))


def pad_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Zero-pad ``x`` at the bottom / right to ``ref``'s height and width.

    Pooling an odd size drops the last row (column); upsampling the pooled map by 2 comes back
    one short, and the missing row is the *last* one, so the pad goes there.
    """
    dh, dw = ref.shape[-2] - x.shape[-2], ref.shape[-1] - x.shape[-1]
    if dh < 0 or dw < 0:
        raise RuntimeError(f"upsampled map {tuple(x.shape[-2:])} is larger than its skip "
                           f"{tuple(ref.shape[-2:])}")
    # Always pad, even by 0 (a no-op copy): an ONNX export traces the pad amounts as functions of
    # the input size, but a Python `if dh or dw` would be frozen at the export size (False at
    # 64 x 64) and the graph would then fail on odd sizes (segcourse.export).
    return F.pad(x, (0, dw, 0, dh))


class Up(nn.Module):
    """Upsample the coarser map ×2, align it with the skip, concatenate ``[skip, up]``, DoubleConv.

    ``bilinear=False``: a learned 2 x 2 stride-2 transposed conv that also halves the channels.
    ``bilinear=True``: bilinear resizing straight to the skip's size (channels unchanged); the
    DoubleConv then reduces the concatenation through ``mid_channels``.
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, bilinear: bool):
        super().__init__()
        self.bilinear = bilinear
        if bilinear:
            self.up = None
            self.conv = DoubleConv(in_channels + skip_channels, out_channels,
                                   mid_channels=skip_channels)
        else:
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
            self.conv = DoubleConv(in_channels // 2 + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.bilinear:
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        else:
            x = pad_to(self.up(x), skip)  # (B, C/2, 2h, 2w) -> (B, C/2, H, W)
        return self.conv(torch.cat([skip, x], dim=1))


class AttentionGate(nn.Module):
    """Additive attention gate: ``alpha = sigmoid(psi(relu(W_x x + W_g g))) ∈ (0, 1)^{H x W}``.

    ``x`` is the skip ``[B, F_x, H, W]``, ``g`` the gating signal ``[B, F_g, h, w]`` one level
    coarser (``h = H // 2``). Returns ``(W(alpha * x), alpha)`` with ``alpha`` ``[B, 1, H, W]``.
    """

    def __init__(self, skip_channels: int, gating_channels: int, inter_channels: int | None = None):
        super().__init__()
        inter = inter_channels or max(skip_channels // 2, 1)
        self.theta = nn.Conv2d(skip_channels, inter, kernel_size=2, stride=2, bias=False)  # W_x
        self.phi = nn.Conv2d(gating_channels, inter, kernel_size=1)  # W_g (its bias is b_g)
        self.psi = nn.Conv2d(inter, 1, kernel_size=1)
        self.out = nn.Sequential(nn.Conv2d(skip_channels, skip_channels, 1),
                                 nn.BatchNorm2d(skip_channels))

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        theta_x = self.theta(x)  # (B, F_int, H // 2, W // 2): the gating grid
        phi_g = F.interpolate(self.phi(g), size=theta_x.shape[-2:], mode="bilinear",
                              align_corners=False)
        alpha = torch.sigmoid(self.psi(F.relu(theta_x + phi_g)))  # (B, 1, H // 2, W // 2)
        # Resample to the skip's *size*: a "x2" upsampling gives 2 * (H // 2) != H when H is odd.
        alpha = F.interpolate(alpha, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(alpha * x), alpha


class UNet(nn.Module):
    """U-Net: ``depth`` Down blocks, ``depth`` Up blocks with skips, a 1 x 1 classifier.

    Widths are ``base_channels * 2**level`` for levels ``0 .. depth``. Takes ``[B, C, H, W]``
    with ``H, W >= max(32, 2**(depth + 1))`` (the bottleneck keeps 2 x 2 pixels, which
    BatchNorm needs in training at batch 1); returns logits ``[B, num_classes, H, W]``.
    ``config`` is a :class:`UNetConfig` and keyword ``overrides`` replace its fields
    (``UNet(5, base_channels=8)``).
    """

    def __init__(self, num_classes: int, in_channels: int = 3, config: UNetConfig = SMALL,
                 **overrides):
        super().__init__()
        check_count(num_classes, "num_classes"), check_count(in_channels, "in_channels")
        config = configure(config, **overrides)
        base_channels, depth, bilinear = config.base_channels, config.depth, config.bilinear
        check_count(depth, "depth"), check_count(base_channels, "base_channels")
        self.config = config
        self.num_classes, self.in_channels, self.depth = num_classes, in_channels, depth
        widths = [base_channels * 2 ** level for level in range(depth + 1)]
        # With bilinear upsampling the coarser map keeps its channels, so each decoder block
        # (and the bottleneck) outputs the width of the skip it will be concatenated with.
        bottom = widths[depth - 1] if bilinear else widths[depth]
        self.inc = DoubleConv(in_channels, widths[0])
        self.downs = nn.ModuleList(
            Down(widths[level - 1], bottom if level == depth else widths[level])
            for level in range(1, depth + 1))
        self.ups = nn.ModuleList()
        self.gating_channels = []  # channels of the map arriving at each decoder level
        c = bottom
        for level in reversed(range(depth)):  # depth - 1 (coarsest skip) ... 0 (full size)
            out = widths[max(level - 1, 0)] if bilinear else widths[level]
            self.ups.append(Up(c, widths[level], out, bilinear))
            self.gating_channels.append(c)
            c = out
        self.outc = nn.Conv2d(c, num_classes, kernel_size=1)
        self.widths = widths

    def gate(self, index: int, skip: torch.Tensor, gating: torch.Tensor) -> torch.Tensor:
        """What the ``index``-th decoder block receives as its skip (plain U-Net: the skip)."""
        return skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # 32 px for every model; deeper U-Nets need 2**(depth + 1) so that the bottleneck keeps
        # 2 x 2 pixels: BatchNorm in training cannot normalise one value per channel (batch 1).
        check_model_input(self, x, min_size=max(32, 2 ** (self.depth + 1)),
                          min_size_reason=f" (depth {self.depth}: the bottleneck needs 2 x 2 "
                          "pixels for BatchNorm in training)")
        x = self.inc(x)  # (B, w0, H, W)
        skips = []
        for down in self.downs:
            skips.append(x)
            x = down(x)  # (B, w_l, H / 2^l, W / 2^l), rounded down
        for index, up in enumerate(self.ups):
            skip = skips[-1 - index]
            x = up(x, self.gate(index, skip, x))
        return self.outc(x)


class AttentionUNet(UNet):
    """U-Net whose skips pass through :class:`AttentionGate` s gated by the coarser decoder map.

    After each forward, ``attention_maps`` holds the coefficients (detached) from the finest
    level (``[B, 1, H, W]``) to the coarsest.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, config: UNetConfig = SMALL,
                 **overrides):
        super().__init__(num_classes, in_channels, config, **overrides)
        skip_widths = self.widths[:self.depth][::-1]  # coarsest first, the decoder's order
        self.gates = nn.ModuleList(AttentionGate(c_skip, c_gate)
                                   for c_skip, c_gate in zip(skip_widths, self.gating_channels))
        self.attention_maps: list[torch.Tensor] = []

    def gate(self, index: int, skip: torch.Tensor, gating: torch.Tensor) -> torch.Tensor:
        gated, alpha = self.gates[index](skip, gating)
        self._alphas.append(alpha.detach())
        return gated

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._alphas = []
        logits = super().forward(x)
        self.attention_maps = self._alphas[::-1]  # finest level first
        return logits


@register("unet")
def unet(num_classes: int, in_channels: int = 3, paper: bool = False, **overrides) -> UNet:
    """U-Net; ``SMALL`` (16 ... 256) by default, ``paper=True`` for 64 ... 1024 (overrides: any
    :class:`UNetConfig` field, e.g. ``bilinear=True``)."""
    return UNet(num_classes, in_channels, configure(PAPER if paper else SMALL, **overrides))


@register("attention_unet")
def attention_unet(num_classes: int, in_channels: int = 3, paper: bool = False,
                   **overrides) -> AttentionUNet:
    """Attention U-Net; ``SMALL`` by default, ``paper=True`` for 64 ... 1024 (overrides: any
    :class:`UNetConfig` field)."""
    config = configure(PAPER if paper else SMALL, **overrides)
    return AttentionUNet(num_classes, in_channels, config)
