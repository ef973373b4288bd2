"""Multi-scale RoIAlign: read each box from the pyramid level that suits its size.

Paper: T.-Y. Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017, Eq. 1.
Reference: torchvision ``ops/poolers.py`` (``MultiScaleRoIAlign``, ``LevelMapper``: canonical
scale 224 at level 4, eps 1e-6, sampling ratio 2) and Detectron2 ``modeling/poolers.py``
(``ROIPooler`` with ``ROIAlignV2``).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .boxes import box_area
from .roi_align import as_rois, roi_align

__all__ = ["MultiScaleRoIAlign"]


class MultiScaleRoIAlign(nn.Module):
    """RoIAlign from the pyramid level suited to each RoI's size (FPN paper, Eq. 1).

    ``k = floor(4 + log2(sqrt(w h) / 224))`` clamped to the levels given: a 224-pixel box (the
    ImageNet pre-training size) reads P4, one twice as large P5, half as large P3. Levels are
    given by their ``strides`` (P2..P5: 4..32), so the smallest level is ``log2(strides[0])``.

    Deliberate difference: ``aligned=True`` by default, Detectron2's ``ROIAlignV2`` (its Mask
    R-CNN FPN configs), which samples pixel centres at +0.5 and so reads each box where it is;
    torchvision's ``MultiScaleRoIAlign`` calls ``roi_align`` with ``aligned=False`` (the
    original Detectron behaviour, half a pixel off). Pass ``aligned=False`` for torchvision's.
    """

    def __init__(self, output_size: int, sampling_ratio: int = 2, strides=(4, 8, 16, 32),
                 canonical_scale: float = 224.0, canonical_level: int = 4,
                 aligned: bool = True):
        super().__init__()
        levels = [math.log2(s) for s in strides]
        if any(v != int(v) for v in levels) or levels != sorted(levels):
            raise ValueError(f"strides must be increasing powers of 2, got {tuple(strides)}")
        self.output_size, self.sampling_ratio = output_size, sampling_ratio
        self.strides, self.aligned = tuple(strides), aligned
        self.canonical_scale, self.canonical_level = canonical_scale, canonical_level
        self.k_min = int(levels[0])

    def levels(self, boxes: torch.Tensor) -> torch.Tensor:
        """Index into ``strides`` of the level each box ``[K, 4]`` is read from."""
        size = torch.sqrt(box_area(boxes).clamp(min=1e-6))
        # torchvision's LevelMapper adds 1e-6 so that exactly 224 pixels lands on level 4
        k = torch.floor(self.canonical_level + torch.log2(size / self.canonical_scale) + 1e-6)
        return (k.clamp(self.k_min, self.k_min + len(self.strides) - 1) - self.k_min).long()

    def forward(self, features: list[torch.Tensor], boxes) -> torch.Tensor:
        """``features``: one map per stride; ``boxes``: list of ``[L, 4]`` per image (or
        ``[K, 5]``). Returns ``[K, C, output_size, output_size]`` in the order of the boxes."""
        if len(features) != len(self.strides):
            raise ValueError(f"expected {len(self.strides)} feature maps (strides "
                             f"{self.strides}), got {len(features)}")
        rois = as_rois(boxes, features[0])
        level = self.levels(rois[:, 1:])
        C, S = features[0].shape[1], self.output_size
        out = features[0].new_zeros(len(rois), C, S, S)
        for i, (f, stride) in enumerate(zip(features, self.strides)):
            sel = torch.where(level == i)[0]
            if sel.numel():
                pooled = roi_align(f, rois[sel], S, 1.0 / stride, self.sampling_ratio,
                                   aligned=self.aligned)
                out = out.index_copy(0, sel, pooled.to(out.dtype))
        return out
