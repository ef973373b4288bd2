"""Mask R-CNN: ResNet-FPN backbone, RPN, RoIAlign, box head and mask head, as one model.

Paper: K. He, G. Gkioxari, P. Dollár, R. Girshick, "Mask R-CNN", ICCV 2017 (arXiv:1703.06870),
built on the Region Proposal Network of Faster R-CNN (Ren et al., NeurIPS 2015) and the Feature
Pyramid Network (Lin et al., CVPR 2017).
Reference code: torchvision ``models/detection/mask_rcnn.py`` (``maskrcnn_resnet50_fpn``),
``generalized_rcnn.py`` and ``backbone_utils.py``. ``mask_rcnn(91, paper=True)`` has exactly
the 44,401,393 parameters of torchvision's ``maskrcnn_resnet50_fpn``.

The parts, each in its own file: ``fpn.py`` (the pyramid), ``rpn.py`` (anchors and proposals),
``roi_heads.py`` (box and mask heads), and in ``segcourse.ops`` the operators they share (box
geometry, NMS, RoIAlign, multi-scale RoIAlign, matching and sampling, frozen BatchNorm).

Labels follow torchvision: ``num_classes`` counts the background, label 0; objects are 1..K-1.

Deliberate differences from torchvision, where they are made: aligned RoIAlign in the poolers
(``segcourse/ops/poolers.py``), binarised mask targets and ``grid_sample`` pasting (Detectron2's;
``roi_heads.py``); and here, images are used at the size given (padded to a multiple of 32),
where torchvision's ``GeneralizedRCNNTransform`` first resizes every image to a shorter side of
800 pixels (at most 1333) -- resizing belongs to the data pipeline, and the course's images are
small.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._checks import check_count, check_images
from ..ops.misc import convert_frozen_batchnorm
from .config import configure
from .fpn import FeaturePyramid
from .resnet import resnet
from .roi_heads import RoIHeads
from .rpn import AnchorGenerator, RegionProposalNetwork

__all__ = ["MaskRCNNConfig", "SMALL", "PAPER", "MaskRCNN", "mask_rcnn", "check_config",
           "check_targets"]

STAGES = ("layer1", "layer2", "layer3", "layer4")  # C2..C5


@dataclass(frozen=True)
class MaskRCNNConfig:
    """Every size and threshold of the model; defaults are CPU-sized for 64-pixel shapes images.

    :data:`PAPER` holds the published ResNet-50-FPN sizes (256-channel pyramid and mask head,
    1024-d box head, 512 RoIs per image, COCO anchor sizes, frozen BatchNorm, stem and first
    stage frozen).
    """

    num_classes: int = 4                        # objects + background (label 0)
    in_channels: int = 3
    depth: int = 18                             # ResNet depth (paper: 50 or 101)
    width: int = 16                             # ResNet stem width (paper: 64)
    # BatchNorm of the backbone frozen to a fixed affine map (ops/misc.py), and how many of the
    # five backbone parts (stem, layer1..4), counted from the top, are trained. Paper:
    # frozen, 3 -- torchvision's rule when it starts from pre-trained weights (Detectron2's
    # FrozenBN and FREEZE_AT=2 say the same). From scratch (our default) torchvision keeps
    # ordinary BatchNorm and trains all 5: frozen statistics of a random network are just the
    # identity, so the network would train unnormalised; batches of 8 small images give
    # BatchNorm thousands of positions per channel to estimate its statistics from.
    frozen_batchnorm: bool = False
    trainable_layers: int = 5
    fpn_channels: int = 64                      # paper: 256
    anchor_sizes: tuple = (8, 16, 32, 64, 128)  # one per level P2..P6 (paper: 32..512)
    aspect_ratios: tuple = (0.5, 1.0, 2.0)
    rpn_pre_nms_top_n: tuple = (300, 300)       # per level, (train, test) (paper: 2000, 1000)
    rpn_post_nms_top_n: tuple = (300, 100)      # per image, (train, test) (paper: 2000, 1000)
    rpn_nms_threshold: float = 0.7
    rpn_batch_size: int = 256                   # anchors sampled per image for the RPN loss
    roi_batch_size: int = 64                    # RoIs sampled per image (paper: 512)
    representation: int = 256                   # box head fc width (paper: 1024)
    mask_channels: int = 32                     # mask head width (paper: 256)
    score_threshold: float = 0.05
    nms_threshold: float = 0.5
    detections_per_image: int = 100


SMALL = MaskRCNNConfig()
PAPER = MaskRCNNConfig(depth=50, width=64, frozen_batchnorm=True, trainable_layers=3,
                       fpn_channels=256, anchor_sizes=(32, 64, 128, 256, 512),
                       rpn_pre_nms_top_n=(2000, 1000), rpn_post_nms_top_n=(2000, 1000),
                       roi_batch_size=512, representation=1024, mask_channels=256)

# ImageNet statistics, so that ImageNet-pretrained backbones see what they were trained on.
_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _freeze_bottom(backbone: nn.Module, trainable_layers: int) -> None:
    """torchvision's ``_resnet_fpn_extractor``: train only the top ``trainable_layers`` of
    (stem, layer1, ..., layer4); the rest keep their (pre-trained) weights."""
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in 0..5, got {trainable_layers}")
    parts = [("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",)]
    frozen = tuple(p for part in parts[: 5 - trainable_layers] for p in part)
    for name, parameter in backbone.named_parameters():
        if name.split(".")[0] in frozen:
            parameter.requires_grad_(False)


class MaskRCNN(nn.Module):
    """ResNet-FPN backbone -> RPN -> RoIAlign -> box head and mask head.

    ``model(images, targets)`` in training mode returns a dict of losses; in eval mode
    ``model(images)`` returns one dict per image with ``boxes [n, 4]``, ``labels [n]``,
    ``scores [n]``, ``mask_probs [n, H, W]`` and ``masks [n, H, W]`` (bool), at input size.
    Targets are dicts with ``boxes [n, 4]`` (x1, y1, x2, y2), ``labels [n]`` in 1..K-1 and
    ``masks [n, H, W]`` (``segcourse.data.InstanceTargets`` makes them). Images of any size
    >= 32 work: they are zero-padded to a multiple of 32 internally so every pyramid level is
    exactly half the previous one.
    """

    returns_losses = True  # segcourse.train.fit: training-mode forward(images, targets) -> dict

    def __init__(self, config: MaskRCNNConfig):
        super().__init__()
        check_config(config)
        self.config = c = config
        self.backbone = resnet(depth=c.depth, output_stride=32, in_channels=c.in_channels,
                               width=c.width)
        if c.frozen_batchnorm:
            convert_frozen_batchnorm(self.backbone)
        _freeze_bottom(self.backbone, c.trainable_layers)
        self.fpn = FeaturePyramid([self.backbone.channels[n] for n in STAGES], c.fpn_channels)
        anchors = AnchorGenerator(c.anchor_sizes, c.aspect_ratios)
        self.rpn = RegionProposalNetwork(c.fpn_channels, anchors, c.rpn_pre_nms_top_n,
                                         c.rpn_post_nms_top_n, c.rpn_nms_threshold,
                                         c.rpn_batch_size)
        self.roi_heads = RoIHeads(c.fpn_channels, c.num_classes, c.representation,
                                  c.mask_channels, c.roi_batch_size,
                                  score_threshold=c.score_threshold,
                                  nms_threshold=c.nms_threshold,
                                  detections_per_image=c.detections_per_image)
        mean = torch.tensor(_MEAN if c.in_channels == 3 else [0.5] * c.in_channels)
        std = torch.tensor(_STD if c.in_channels == 3 else [0.25] * c.in_channels)
        self.register_buffer("mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, -1, 1, 1), persistent=False)

    def features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalise, pad to a multiple of 32, and return the pyramid ``{"p2": ..., "p6": ...}``."""
        # the dtype of the parameters, one rule for every model: float64 / float16 images into
        # a float32 model are a ValueError that says how to fix it (autocast lifts the check)
        check_images(images, self.config.in_channels, min_size=32, name="images",
                     dtype=next(self.parameters()).dtype)
        if images.shape[0] == 0:
            raise ValueError(f"images must hold at least one image, got shape "
                             f"{tuple(images.shape)}")
        if not torch.isfinite(images).all():
            bad = int((~torch.isfinite(images)).sum())
            raise ValueError(f"images must be finite, got {bad} NaN or inf value(s) in images "
                             f"of shape {tuple(images.shape)}")
        H, W = images.shape[-2:]
        x = (images - self.mean) / self.std
        x = F.pad(x, (0, -W % 32, 0, -H % 32))
        feats = self.backbone(x)
        return self.fpn([feats[n] for n in STAGES])

    def instances(self, pyramid: dict, image_size: tuple[int, int], targets=None):
        """RPN + RoI heads on a pyramid; (detections, losses) -- one of them is empty."""
        levels = list(pyramid.values())
        proposals, rpn_losses = self.rpn(levels, image_size, targets)
        detections, roi_losses = self.roi_heads(levels[:4], proposals, image_size, targets)
        return detections, {**rpn_losses, **roi_losses}

    def forward(self, images: torch.Tensor, targets: list[dict] | None = None):
        if self.training:
            check_images(images, self.config.in_channels, min_size=32, name="images")
            check_targets(targets, images, self.config.num_classes)
        image_size = tuple(images.shape[-2:])
        detections, losses = self.instances(self.features(images), image_size, targets)
        return losses if self.training else detections


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def check_config(c: MaskRCNNConfig) -> None:
    """ValueError for a config field no model can be built from (``mask_rcnn(1)``,
    ``in_channels=0``, a threshold outside [0, 1], ...), naming the field."""
    if not isinstance(c, MaskRCNNConfig):
        raise ValueError(f"config must be a MaskRCNNConfig, got {type(c).__name__}")
    if not _is_int(c.num_classes) or c.num_classes < 2:
        raise ValueError("num_classes counts the background and at least one object class, "
                         f"so it must be an int >= 2; got {c.num_classes!r}")
    for name in ("in_channels", "width", "fpn_channels", "representation", "mask_channels",
                 "rpn_batch_size", "roi_batch_size", "detections_per_image"):
        check_count(getattr(c, name), name)
    for name in ("rpn_nms_threshold", "score_threshold", "nms_threshold"):
        v = getattr(c, name)
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0 <= v <= 1:
            raise ValueError(f"{name} must be a number in [0, 1], got {v!r}")
    for name in ("rpn_pre_nms_top_n", "rpn_post_nms_top_n"):
        v = getattr(c, name)
        if not isinstance(v, (tuple, list)) or len(v) != 2 or not all(
                _is_int(n) and n >= 1 for n in v):
            raise ValueError(f"{name} must be a pair (train, test) of ints >= 1, got {v!r}")
    for name, count in (("anchor_sizes", 5), ("aspect_ratios", None)):
        v = getattr(c, name)
        ok = isinstance(v, (tuple, list)) and len(v) > 0 and (count is None or len(v) == count)
        if not ok or not all(isinstance(x, numbers.Real) and not isinstance(x, bool)
                             and math.isfinite(x) and x > 0 for x in v):
            what = f"{count} positive numbers (one per level P2..P6)" if count else \
                "a non-empty tuple of positive numbers"
            raise ValueError(f"{name} must be {what}, got {v!r}")


def check_targets(targets, images: torch.Tensor, num_classes: int) -> None:
    """ValueError unless ``targets`` holds one valid target dict per image; the message names
    the image (``targets[i]``), the key and, for a bad box, the box."""
    B, (H, W) = images.shape[0], images.shape[-2:]
    if not isinstance(targets, (list, tuple)) or len(targets) != B:
        given = f"{len(targets)} target(s)" if isinstance(targets, (list, tuple)) else \
            repr(targets) if targets is None else type(targets).__name__
        raise ValueError(f"targets: in training mode pass a list of one target dict per image "
                         f"(boxes [n, 4], labels [n], masks [n, H, W]) for the {B} image(s), "
                         f"got {given}")
    for i, t in enumerate(targets):
        if not isinstance(t, dict):
            raise ValueError(f"targets[{i}] must be a dict with boxes, labels and masks, got "
                             f"{type(t).__name__}")
        missing = [k for k in ("boxes", "labels", "masks") if k not in t]
        if missing:
            raise ValueError(f"targets[{i}] is missing {missing}: targets need 'boxes' [n, 4], "
                             f"'labels' [n] and 'masks' [n, {H}, {W}]")
        for key in ("boxes", "labels", "masks"):
            if not isinstance(t[key], torch.Tensor):
                raise ValueError(f"targets[{i}]['{key}'] must be a torch.Tensor, got "
                                 f"{type(t[key]).__name__} (wrap it in torch.tensor(...))")
        boxes, labels, masks = t["boxes"], t["labels"], t["masks"]
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(f"targets[{i}]['boxes'] must have shape [n, 4] (x1, y1, x2, y2), "
                             f"got {tuple(boxes.shape)}")
        if not boxes.is_floating_point():
            raise ValueError(f"targets[{i}]['boxes'] must be floating point (e.g. float32), got "
                             f"{boxes.dtype}")
        n = len(boxes)
        if tuple(labels.shape) != (n,):
            raise ValueError(f"targets[{i}]['labels'] must have shape [{n}] (one per box), got "
                             f"{tuple(labels.shape)}")
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"targets[{i}]['labels'] must hold integer class labels "
                             f"(torch.int64), got {labels.dtype}")
        if tuple(masks.shape) != (n, H, W):
            raise ValueError(f"targets[{i}]['masks'] has shape {tuple(masks.shape)}; expected "
                             f"masks [n, {H}, {W}] with n = {n}: one image-sized mask per box")
        if masks.dtype != torch.bool and bool(((masks != 0) & (masks != 1)).any()):
            raise ValueError(f"targets[{i}]['masks'] must be binary (bool, or 0 and 1), got "
                             f"values such as {masks[(masks != 0) & (masks != 1)][0].item()}")
        if n == 0:
            continue
        if int(labels.min()) < 1 or int(labels.max()) >= num_classes:
            bad = labels[(labels < 1) | (labels >= num_classes)]
            raise ValueError(f"targets[{i}]['labels']: object labels must be in "
                             f"1..{num_classes - 1} (0 is the background), got {int(bad[0])}")
        finite = torch.isfinite(boxes).all(dim=1)
        # as torchvision's GeneralizedRCNN: a box without positive width and height has no
        # delta encoding (log of a non-positive size) and turns the box losses into NaN
        degenerate = ~finite | (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
        if degenerate.any():
            j = int(degenerate.nonzero()[0])
            raise ValueError(f"targets[{i}]['boxes'][{j}] = {boxes[j].tolist()}: boxes are "
                             "(x1, y1, x2, y2) with finite coordinates and positive width and "
                             "height (x2 > x1, y2 > y1)")


def mask_rcnn(num_classes: int, paper: bool = False, **overrides) -> MaskRCNN:
    """CPU-sized Mask R-CNN, or with ``paper=True`` the ResNet-50-FPN of the paper; any
    :class:`MaskRCNNConfig` field can be overridden by keyword."""
    return MaskRCNN(configure(PAPER if paper else SMALL, num_classes=num_classes, **overrides))
