"""Feature Pyramid Network: strong features at every scale from one backbone pass.

Paper: T.-Y. Lin, P. Dollár, R. Girshick, K. He, B. Hariharan, S. Belongie, "Feature Pyramid
Networks for Object Detection", CVPR 2017 (arXiv:1612.03144), Sec. 3 and Fig. 3.
Reference code: torchvision ``ops/feature_pyramid_network.py`` (``FeaturePyramidNetwork`` with
``LastLevelMaxPool``: the initialisation and P6 used by ``maskrcnn_resnet50_fpn``).

A backbone's deep stages know *what* is in the image but are coarse; its early stages are fine
but semantically weak. The FPN gives every level both: a top-down path upsamples the coarse map
and adds it to a 1 x 1 projection ("lateral") of the finer backbone stage -- the same skip idea
as U-Net's decoder (chapter 3), but with an output at every level, all with the same channels,
so that one RPN head and one RoI head serve objects of every size.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["FeaturePyramid"]


class FeaturePyramid(nn.Module):
    """FPN: 1x1 laterals, top-down nearest upsampling and sums, 3x3 smoothing.

    Takes the backbone's C2..C5 (strides 4..32) and returns ``{"p2", ..., "p5"}`` with
    ``out_channels`` each, plus ``"p6"`` = P5 subsampled by 2 (max-pool, kernel 1), which only
    the RPN uses, for the largest anchors (Mask R-CNN's FPN, as in Detectron and torchvision's
    ``LastLevelMaxPool``).
    """

    def __init__(self, in_channels: list[int], out_channels: int):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1)
                                    for _ in in_channels)
        for m in self.modules():  # torchvision's FPN initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.zeros_(m.bias)

    def forward(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        if len(features) != len(self.lateral):
            raise ValueError(f"expected {len(self.lateral)} backbone maps, got {len(features)}")
        top = self.lateral[-1](features[-1])
        outs = [self.output[-1](top)]
        for i in range(len(features) - 2, -1, -1):  # coarse to fine
            lateral = self.lateral[i](features[i])
            # "size=" rather than "scale_factor=2": the maps need not be exactly twice as large
            top = lateral + F.interpolate(top, size=lateral.shape[-2:], mode="nearest")
            outs.insert(0, self.output[i](top))
        pyramid = {f"p{i + 2}": p for i, p in enumerate(outs)}
        pyramid[f"p{len(outs) + 2}"] = F.max_pool2d(outs[-1], kernel_size=1, stride=2)
        return pyramid
