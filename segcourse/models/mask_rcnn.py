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

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._checks import check_images
from ..ops.misc import convert_frozen_batchnorm
from .config import configure
from .fpn import FeaturePyramid
from .resnet import resnet
from .roi_heads import RoIHeads
from .rpn import AnchorGenerator, RegionProposalNetwork

__all__ = ["MaskRCNNConfig", "SMALL", "PAPER", "MaskRCNN", "mask_rcnn", "check_targets"]

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
        if not isinstance(config.num_classes, int) or config.num_classes < 2:
            raise ValueError("num_classes counts the background and at least one object class, "
                             f"so it must be an int >= 2; got {config.num_classes!r}")
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
        check_images(images, self.config.in_channels, min_size=32, name="images")
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
            check_targets(targets, images, self.config.num_classes)
        image_size = tuple(images.shape[-2:])
        detections, losses = self.instances(self.features(images), image_size, targets)
        return losses if self.training else detections


def check_targets(targets, images: torch.Tensor, num_classes: int) -> None:
    """ValueError unless ``targets`` holds one valid target dict per image."""
    if targets is None or len(targets) != images.shape[0]:
        raise ValueError("in training mode pass one target dict per image "
                         "(boxes [n, 4], labels [n], masks [n, H, W])")
    H, W = images.shape[-2:]
    for t in targets:
        missing = {"boxes", "labels", "masks"} - set(t)
        if missing:
            raise ValueError(f"targets need boxes, labels and masks; missing {sorted(missing)}")
        n = len(t["boxes"])
        shapes = tuple(t["boxes"].shape), tuple(t["labels"].shape), tuple(t["masks"].shape)
        if shapes != ((n, 4), (n,), (n, H, W)):
            raise ValueError(f"target shapes must be boxes [n, 4], labels [n], masks "
                             f"[n, {H}, {W}]; got {shapes[0]}, {shapes[1]}, {shapes[2]}")
        if n and (int(t["labels"].min()) < 1 or int(t["labels"].max()) >= num_classes):
            raise ValueError(f"object labels must be in 1..{num_classes - 1} "
                             "(0 is the background)")
        boxes = t["boxes"]
        degenerate = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
        if degenerate.any():  # as torchvision's GeneralizedRCNN: no delta encoding exists
            raise ValueError("target boxes must have positive width and height (x2 > x1, "
                             f"y2 > y1); got {boxes[degenerate][0].tolist()}")


def mask_rcnn(num_classes: int, paper: bool = False, **overrides) -> MaskRCNN:
    """CPU-sized Mask R-CNN, or with ``paper=True`` the ResNet-50-FPN of the paper; any
    :class:`MaskRCNNConfig` field can be overridden by keyword."""
    return MaskRCNN(configure(PAPER if paper else SMALL, num_classes=num_classes, **overrides))
