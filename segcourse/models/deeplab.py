"""DeepLabV3 and DeepLabV3+: atrous spatial pyramid pooling on a dilated ResNet, and a decoder.

Papers: Chen, Papandreou, Schroff, Adam, "Rethinking Atrous Convolution for Semantic Image
Segmentation" (DeepLabV3), arXiv:1706.05587, 2017; Chen, Zhu, Papandreou, Schroff, Adam,
"Encoder-Decoder with Atrous Separable Convolution for Semantic Image Segmentation"
(DeepLabV3+), ECCV 2018.

Reference code: torchvision ``models/segmentation/deeplabv3.py`` (``ASPP``, ``ASPPPooling``,
``DeepLabHead``): our DeepLabV3 has its module names and, with ``paper=True, depth=50,
output_stride=8``, its parameters one for one (torchvision's ``deeplabv3_resnet50`` minus the
auxiliary FCN head). The V3+ decoder follows the paper and the official TensorFlow code
(tensorflow/models research/deeplab): the stride-4 features projected to 48 channels, two 3x3
convs of 256 channels, as in jfzhang95/pytorch-deeplab-xception (VainF/DeepLabV3Plus-Pytorch
uses one 3x3 conv). With a ResNet the papers' and these codes' 3x3 convs are ordinary, not
depthwise-separable (separable convs come with the Xception backbone).

The flow (shapes for a 64 x 64 input at output stride 16):

    image (B, 3, 64, 64) -> dilated ResNet -> layer4 (B, C4, 4, 4) -> ASPP (B, 256, 4, 4)
      V3:  -> 3x3 conv -> 1x1 classifier (B, K, 4, 4) -> bilinear x16 -> (B, K, 64, 64)
      V3+: -> upsample x4, concat layer1 projected to 48 ch (B, 256 + 48, 16, 16)
           -> two 3x3 convs -> 1x1 classifier -> bilinear x4 -> (B, K, 64, 64)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._checks import check_count, check_model_input
from . import register
from .blocks import ConvBNReLU, upsample_like
from .config import configure
from .resnet import resnet

__all__ = ["DeepLabConfig", "SMALL", "PAPER", "atrous_rates", "PoolingBatchNorm2d", "ASPPPooling",
           "ASPP", "DeepLabHead", "DeepLabV3", "DeepLabV3Plus", "deeplabv3", "deeplabv3plus"]


@dataclass(frozen=True)
class DeepLabConfig:
    """Sizes of a DeepLab model; see ``SMALL`` (registry default) and ``PAPER``."""

    depth: int = 101                # ResNet depth: the papers' ResNet-101 (torchvision also has 50)
    width: int = 64                 # ResNet stem channels (64 in every published ResNet)
    output_stride: int = 16         # 16 to train in both papers; 8 is denser and ~4x the cost
    aspp_channels: int = 256        # every ASPP branch, its projection and the V3 head
    low_level_channels: int = 48    # V3+: the stride-4 features are squeezed to this (paper: 48)
    decoder_channels: int = 256     # V3+: the two 3x3 convs after the concatenation


PAPER = DeepLabConfig()  # paper=True: ResNet-101, output stride 16, ASPP 256, decoder 48 + 256
# The registry default, CPU-sized: ResNet-18 at a quarter of its width and a 4x narrower head;
# trains on the shapes in seconds (as accurate there as at half width, for a third of the compute).
SMALL = DeepLabConfig(depth=18, width=16, aspp_channels=64, low_level_channels=16,
                      decoder_channels=64)


def atrous_rates(output_stride: int) -> tuple[int, int, int]:
    """ASPP rates: (6, 12, 18) at output stride 16 and doubled at 8 (DeepLabV3, Sec. 3.3)."""
    rates = {16: (6, 12, 18), 8: (12, 24, 36)}
    if output_stride not in rates:
        raise ValueError(f"output_stride must be 16 or 8, got {output_stride!r}")
    return rates[output_stride]


# --- ASPP ---------------------------------------------------------------------------------------


class PoolingBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm for the 1x1 image-pooling map, safe with a single image in training.

    A batch of one pooled image has one value per channel: there is no variance to estimate, so
    ``nn.BatchNorm2d`` raises ("Expected more than 1 value per channel when training") -- which
    torchvision's ``ASPPPooling`` does whenever a training batch holds one image, e.g. the last
    batch of an epoch. (The official TF code normalises that one value to zero, so the branch
    outputs a constant and its conv gets no gradient; detectron2 removes the BatchNorm, which
    changes the parameters.) Here a one-value batch is normalised with the running statistics,
    as in eval mode, and leaves them unchanged; any larger batch is plain BatchNorm. Same
    parameters and names as ``nn.BatchNorm2d``, so torchvision's weights still load.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        if self.training and B * H * W == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                training=False, eps=self.eps)
        return super().forward(x)


class ASPPPooling(nn.Sequential):
    """Image-level features: global average pool -> 1x1 conv -> BN -> ReLU -> broadcast back."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            PoolingBatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        pooled = super().forward(x)              # (B, out, 1, 1)
        # bilinear upsampling of a 1x1 map (the paper's wording) is a broadcast
        return pooled.expand(-1, -1, H, W)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: five parallel branches, concatenated and projected.

    Branches: a 1x1 conv, three 3x3 convs at ``rates``, image pooling; each conv-BN-ReLU with
    ``out_channels``. Projection: 1x1 conv -> BN -> ReLU -> dropout 0.5 (torchvision; the paper
    fuses with a 1x1 conv + BN). Keeps the spatial size: (B, C_in, h, w) -> (B, out, h, w).
    """

    def __init__(self, in_channels: int, rates=(6, 12, 18), out_channels: int = 256,
                 dropout: float = 0.5):
        super().__init__()
        self.rates = tuple(rates)
        self.convs = nn.ModuleList(
            [ConvBNReLU(in_channels, out_channels, kernel_size=1)]
            + [ConvBNReLU(in_channels, out_channels, kernel_size=3, dilation=r) for r in self.rates]
            + [ASPPPooling(in_channels, out_channels)])
        self.project = nn.Sequential(
            nn.Conv2d(len(self.convs) * out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [conv(x) for conv in self.convs]       # 5 x (B, out, h, w)
        return self.project(torch.cat(branches, dim=1))   # (B, 5 out, h, w) -> (B, out, h, w)


# --- DeepLabV3 ----------------------------------------------------------------------------------


class DeepLabHead(nn.Sequential):
    """ASPP -> 3x3 conv-BN-ReLU -> 1x1 classifier, at the backbone's resolution.

    The 3x3 conv is torchvision's (the paper goes from ASPP straight to the classifier); it is
    kept so that the parameters and names match torchvision's ``DeepLabHead`` exactly.
    """

    def __init__(self, in_channels: int, num_classes: int, rates=(6, 12, 18), channels: int = 256):
        super().__init__(
            ASPP(in_channels, rates, channels),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, num_classes, 1),
        )


class DeepLabV3(nn.Module):
    """Dilated ResNet -> ASPP head on ``layer4`` -> logits bilinearly upsampled to the input."""

    def __init__(self, num_classes: int, in_channels: int = 3, config: DeepLabConfig = SMALL):
        super().__init__()
        check_count(num_classes, "num_classes"), check_count(in_channels, "in_channels")
        self.num_classes, self.in_channels, self.config = num_classes, in_channels, config
        rates = atrous_rates(config.output_stride)
        self.backbone = resnet(config.depth, config.output_stride, in_channels, config.width)
        self.classifier = DeepLabHead(self.backbone.channels["layer4"], num_classes, rates,
                                      config.aspp_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_model_input(self, x)
        feats = self.backbone(x)
        logits = self.classifier(feats["layer4"])        # (B, K, H/os, W/os)
        return upsample_like(logits, x)                  # (B, K, H, W)


# --- DeepLabV3+ ---------------------------------------------------------------------------------


class Decoder(nn.Module):
    """V3+ decoder: sharpen the ASPP output with the stride-4 features of ``layer1``.

    The low-level features have many channels (64 to 256) of edges and textures; squeezing them
    to 48 keeps them from outweighing the 256 semantic channels in the concatenation (the V3+
    paper's ablation, Table 1).
    """

    def __init__(self, low_level_in: int, aspp_channels: int, num_classes: int,
                 low_level_channels: int = 48, channels: int = 256):
        super().__init__()
        self.project = ConvBNReLU(low_level_in, low_level_channels, kernel_size=1)
        self.fuse = nn.Sequential(
            ConvBNReLU(aspp_channels + low_level_channels, channels, kernel_size=3),
            ConvBNReLU(channels, channels, kernel_size=3),
        )
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, aspp: torch.Tensor, low_level: torch.Tensor) -> torch.Tensor:
        low_level = self.project(low_level)                  # (B, 48, H/4, W/4)
        aspp = upsample_like(aspp, low_level)                # (B, 256, H/os, ..) -> H/4
        x = self.fuse(torch.cat([aspp, low_level], dim=1))   # (B, 304, H/4, W/4) -> (B, 256, ...)
        return self.classifier(x)                            # (B, K, H/4, W/4)


class DeepLabV3Plus(nn.Module):
    """Dilated ResNet -> ASPP on ``layer4`` -> decoder with ``layer1`` -> upsample x4."""

    def __init__(self, num_classes: int, in_channels: int = 3, config: DeepLabConfig = SMALL):
        super().__init__()
        check_count(num_classes, "num_classes"), check_count(in_channels, "in_channels")
        self.num_classes, self.in_channels, self.config = num_classes, in_channels, config
        self.backbone = resnet(config.depth, config.output_stride, in_channels, config.width)
        channels = self.backbone.channels
        self.aspp = ASPP(channels["layer4"], atrous_rates(config.output_stride),
                         config.aspp_channels)
        self.decoder = Decoder(channels["layer1"], config.aspp_channels, num_classes,
                               config.low_level_channels, config.decoder_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_model_input(self, x)
        feats = self.backbone(x)
        logits = self.decoder(self.aspp(feats["layer4"]), feats["layer1"])   # (B, K, H/4, W/4)
        return upsample_like(logits, x)                                        # (B, K, H, W)


# --- Registry -----------------------------------------------------------------------------------


@register("deeplabv3")
def deeplabv3(num_classes: int, in_channels: int = 3, paper: bool = False,
              **overrides) -> DeepLabV3:
    """DeepLabV3; ``paper=True`` for ResNet-101 with a 256-channel ASPP (overrides: any
    :class:`DeepLabConfig` field, e.g. ``depth=50, output_stride=8`` = torchvision's)."""
    return DeepLabV3(num_classes, in_channels, configure(PAPER if paper else SMALL, **overrides))


@register("deeplabv3plus")
def deeplabv3plus(num_classes: int, in_channels: int = 3, paper: bool = False,
                  **overrides) -> DeepLabV3Plus:
    """DeepLabV3+; ``paper=True`` for ResNet-101, ASPP 256, decoder 48 + 2 x 256 (overrides: any
    :class:`DeepLabConfig` field)."""
    config = configure(PAPER if paper else SMALL, **overrides)
    return DeepLabV3Plus(num_classes, in_channels, config)
