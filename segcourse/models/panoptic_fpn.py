"""Panoptic FPN: one feature pyramid, an instance branch (Mask R-CNN) and a semantic "stuff" branch.

Paper: A. Kirillov, R. Girshick, K. He, P. Dollár, "Panoptic Feature Pyramid Networks", CVPR 2019
(arXiv:1901.02446); the fusion rules and the task from Kirillov et al., "Panoptic Segmentation",
CVPR 2019 (arXiv:1801.00868).
Reference code: Detectron2 ``modeling/meta_arch/semantic_seg.py`` (``SemSegFPNHead``: 128
channels, GroupNorm, one upsampling stage per factor of 2 down to stride 4) and
``modeling/meta_arch/panoptic_fpn.py`` (``combine_semantic_and_instance_outputs``: overlap
threshold 0.5, stuff area limit 4096 pixels, instance score threshold 0.5; semantic loss weight
0.5 in its Panoptic FPN configs).

The semantic branch predicts the stuff classes plus one class "thing" for every pixel covered by
any object; the instance branch says which object. Panoptic fusion turns both into one map of
(category, instance id) per pixel -- every pixel gets exactly one label.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._checks import check_class_ids, check_count, check_labels
from . import mask_rcnn as _mask_rcnn
from .config import configure
from .mask_rcnn import MaskRCNN, MaskRCNNConfig, check_config, check_targets

__all__ = ["VOID", "UpsampleStage", "SemanticFPNHead", "panoptic_fusion", "PanopticFPNConfig",
           "SMALL", "PAPER", "PanopticFPN", "panoptic_fpn", "check_panoptic_config"]

VOID = -1  # category of pixels that fusion leaves unlabelled; instance id 0


class UpsampleStage(nn.Sequential):
    """3x3 conv -> GroupNorm -> ReLU, then 2x bilinear upsampling if asked (paper, Fig. 3)."""

    def __init__(self, in_channels: int, channels: int, upsample: bool):
        # Deliberate difference: GroupNorm with 32 groups at the paper's 128 channels (Detectron2);
        # narrower heads keep 4 channels per group so that the normalisation statistics are not
        # taken over a single channel.
        layers = [nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
                  nn.GroupNorm(min(32, max(channels // 4, 1)), channels), nn.ReLU(inplace=True)]
        if upsample:
            layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
        super().__init__(*layers)


class SemanticFPNHead(nn.Module):
    """Each level P2..P5 is brought to stride 4 by log2(stride / 4) upsampling stages (one conv
    for P2), the four maps are summed, a 1x1 conv gives the class logits, 4x bilinear to input."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 128,
                 strides=(4, 8, 16, 32)):
        super().__init__()
        self.scale_heads = nn.ModuleList()
        for stride in strides:
            n = max(int(math.log2(stride / strides[0])), 1)
            up = stride != strides[0]
            self.scale_heads.append(nn.Sequential(*(
                UpsampleStage(in_channels if i == 0 else channels, channels, upsample=up)
                for i in range(n))))
        self.predictor = nn.Conv2d(channels, num_classes, 1)
        self.common_stride = strides[0]

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.scale_heads[0](features[0])
        for head, f in zip(self.scale_heads[1:], features[1:]):
            x = x + head(f)  # every level is now at stride 4
        return F.interpolate(self.predictor(x), scale_factor=self.common_stride, mode="bilinear",
                             align_corners=False)


def panoptic_fusion(masks: torch.Tensor, scores: torch.Tensor, categories: torch.Tensor,
                    semantic: torch.Tensor, stuff_classes, overlap_threshold: float = 0.5,
                    stuff_area_limit: int = 4096, score_threshold: float = 0.5) -> torch.Tensor:
    """Merge instance and semantic predictions into one ``[H, W, 2]`` panoptic map.

    The heuristic of Panoptic FPN (Sec. 3 of Kirillov et al.): resolve overlaps in favour of the
    more confident object, and let stuff fill only what objects left.

    1. Instances with ``score >= score_threshold`` are placed by decreasing score. An instance
       whose mask is more than ``overlap_threshold`` covered by already placed instances is
       dropped (a duplicate); otherwise it takes its pixels that are still free.
    2. Each stuff class of the semantic map then fills its still-free pixels, if that area is at
       least ``stuff_area_limit`` pixels (small stuff fragments are usually errors).
    3. Pixels left over are void: category :data:`VOID`, instance 0.

    Args:
        masks: ``[n, H, W]`` boolean instance masks; ``scores``, ``categories``: ``[n]``.
        semantic: ``[H, W]`` predicted category per pixel; only ``stuff_classes`` are used.

    Returns: int64 ``[H, W, 2]`` of (category, instance id); thing ids are 1, 2, ... in placement
    order, stuff pixels carry instance id 0.
    """
    H, W = semantic.shape
    if masks.shape[1:] != (H, W) or not (len(masks) == len(scores) == len(categories)):
        raise ValueError(f"masks [n, {H}, {W}], scores [n] and categories [n] must agree, got "
                         f"{tuple(masks.shape)}, {tuple(scores.shape)}, {tuple(categories.shape)}")
    category = torch.full((H, W), VOID, dtype=torch.int64, device=semantic.device)
    instance = torch.zeros((H, W), dtype=torch.int64, device=semantic.device)
    taken = torch.zeros((H, W), dtype=torch.bool, device=semantic.device)
    next_id = 1
    for i in torch.argsort(scores, descending=True, stable=True).tolist():
        if scores[i] < score_threshold:
            break
        mask = masks[i].bool()
        area = int(mask.sum())
        if area == 0 or int((mask & taken).sum()) / area > overlap_threshold:
            continue
        mask = mask & ~taken
        category[mask], instance[mask] = int(categories[i]), next_id
        taken |= mask
        next_id += 1
    for c in stuff_classes:
        region = (semantic == c) & ~taken
        if int(region.sum()) >= stuff_area_limit:
            category[region] = c
            taken |= region
    return torch.stack([category, instance], dim=-1)


@dataclass(frozen=True)
class PanopticFPNConfig(MaskRCNNConfig):
    """Mask R-CNN's fields plus the semantic head and fusion; CPU-sized defaults, see PAPER."""

    semantic_channels: int = 32             # semantic head width (paper: 128)
    semantic_loss_weight: float = 0.5       # Detectron2's Panoptic FPN configs
    overlap_threshold: float = 0.5          # fusion: an instance > 50% covered is a duplicate
    stuff_area_limit: int = 16              # fusion, pixels (paper: 4096 on ~800-px COCO images;
    #                                         16 keeps the same share of a 64 x 64 image)
    instance_score_threshold: float = 0.5   # fusion places instances at least this confident


SMALL = PanopticFPNConfig()
PAPER = PanopticFPNConfig(**dataclasses.asdict(_mask_rcnn.PAPER), semantic_channels=128,
                          stuff_area_limit=4096)


class PanopticFPN(nn.Module):
    """Mask R-CNN plus a semantic FPN head on the same pyramid, and panoptic fusion at inference.

    Categories are the dataset's: ``thing_classes`` and ``stuff_classes`` are lists of dataset
    class ids (for the shapes data ``(2, 3, 4)`` and ``(0, 1)``). Training targets are Mask R-CNN
    targets (object labels 1..len(thing_classes), see ``segcourse.data.InstanceTargets``) plus
    ``semantic``, the dataset's class map (255 = ignore). The semantic head learns the stuff
    classes and one extra "thing" class for every pixel of ``thing_classes``.

    Training returns the Mask R-CNN losses and ``loss_semantic`` (weighted by
    ``semantic_loss_weight``); eval returns per image the detections (plus ``categories``, their
    dataset class ids), ``semantic_logits [S+1, H, W]`` and ``panoptic [H, W, 2]`` in dataset
    class ids.
    """

    returns_losses = True  # segcourse.train.fit: training-mode forward(images, targets) -> dict

    def __init__(self, thing_classes, stuff_classes, config: PanopticFPNConfig | None = None):
        super().__init__()
        self.thing_classes = check_class_ids(thing_classes, "thing_classes")
        self.stuff_classes = check_class_ids(stuff_classes, "stuff_classes", allow_empty=True)
        shared = sorted(set(self.thing_classes) & set(self.stuff_classes))
        if shared:
            raise ValueError(f"thing_classes {self.thing_classes} and stuff_classes "
                             f"{self.stuff_classes} must not share a class, both hold {shared}")
        config = config or configure(SMALL, num_classes=len(self.thing_classes) + 1)
        if not isinstance(config, PanopticFPNConfig):
            raise ValueError(f"config must be a PanopticFPNConfig, got {type(config).__name__}")
        check_panoptic_config(config)
        if config.num_classes != len(self.thing_classes) + 1:
            raise ValueError(f"config.num_classes must be len(thing_classes) + 1 = "
                             f"{len(self.thing_classes) + 1}, got {config.num_classes}")
        self.config = config
        self.mask_rcnn = MaskRCNN(config)
        self.semantic_head = SemanticFPNHead(config.fpn_channels, len(self.stuff_classes) + 1,
                                             config.semantic_channels)
        # dataset class id -> semantic head class: stuff k -> k, any thing -> S, ignore stays 255
        lookup = torch.full((256,), 255, dtype=torch.int64)
        lookup[list(self.stuff_classes)] = torch.arange(len(self.stuff_classes))
        lookup[list(self.thing_classes)] = len(self.stuff_classes)
        self.register_buffer("semantic_lookup", lookup, persistent=False)
        known = torch.zeros(256, dtype=torch.bool)
        known[[*self.thing_classes, *self.stuff_classes, 255]] = True
        self.register_buffer("semantic_known", known, persistent=False)

    def semantic_logits(self, pyramid: dict, image_size: tuple[int, int]) -> torch.Tensor:
        logits = self.semantic_head([pyramid[k] for k in ("p2", "p3", "p4", "p5")])
        return logits[..., : image_size[0], : image_size[1]]  # drop the padding to a multiple of 32

    def forward(self, images: torch.Tensor, targets: list[dict] | None = None):
        H, W = images.shape[-2:]
        pyramid = self.mask_rcnn.features(images)
        logits = self.semantic_logits(pyramid, (H, W))
        if self.training:
            return self.loss(images, pyramid, logits, targets)
        c = self.config
        detections, _ = self.mask_rcnn.instances(pyramid, (H, W))
        stuff_and_thing = torch.tensor([*self.stuff_classes, VOID], device=images.device)
        # label 0 is the background
        thing_ids = torch.tensor([VOID, *self.thing_classes], device=images.device)
        for det, lg in zip(detections, logits):
            det["categories"] = thing_ids[det["labels"]]
            det["semantic_logits"] = lg
            det["panoptic"] = panoptic_fusion(det["masks"], det["scores"], det["categories"],
                                              stuff_and_thing[lg.argmax(0)], self.stuff_classes,
                                              c.overlap_threshold, c.stuff_area_limit,
                                              c.instance_score_threshold)
        return detections

    def check_semantic(self, targets, image_size: tuple[int, int]) -> None:
        """ValueError unless every target has ``semantic``, an integer ``[H, W]`` map of
        thing / stuff class ids or 255 -- an unknown id must not quietly become "ignore"."""
        H, W = image_size
        for i, t in enumerate(targets):
            if "semantic" not in t:
                raise ValueError(f"targets[{i}] is missing 'semantic': Panoptic FPN targets "
                                 "need the [H, W] class map of the image (255 = ignore) for "
                                 "the stuff head")
            sem = t["semantic"]
            # a tensor of integer ids in 0..255 (the shared label check), then only known ones
            check_labels(sem, 256, ignore_index=None, name=f"targets[{i}]['semantic']")
            if tuple(sem.shape) != (H, W):
                raise ValueError(f"targets[{i}]['semantic'] must have the image's shape "
                                 f"[{H}, {W}], got {tuple(sem.shape)}")
            sem = sem.to(self.semantic_known.device).long()
            unknown = ~self.semantic_known[sem]
            if unknown.any():
                raise ValueError(f"targets[{i}]['semantic'] holds class {int(sem[unknown][0])}, "
                                 f"which is neither in thing_classes {self.thing_classes}, nor "
                                 f"in stuff_classes {self.stuff_classes}, nor 255 (ignore)")

    def loss(self, images, pyramid, logits, targets) -> dict[str, torch.Tensor]:
        check_targets(targets, images, self.config.num_classes)
        self.check_semantic(targets, tuple(images.shape[-2:]))
        _, losses = self.mask_rcnn.instances(pyramid, tuple(images.shape[-2:]), targets)
        semantic = torch.stack([t["semantic"] for t in targets]).to(images.device)
        labels = self.semantic_lookup[semantic.long()]
        if bool((labels != 255).any()):
            loss = F.cross_entropy(logits, labels, ignore_index=255)
        else:  # every pixel void: nothing to learn, zero with a gradient (torch's mean is NaN)
            loss = logits.sum() * 0.0
        losses["loss_semantic"] = self.config.semantic_loss_weight * loss
        return losses


def check_panoptic_config(c: PanopticFPNConfig) -> None:
    """Mask R-CNN's field checks plus the semantic head's and fusion's, naming the field."""
    check_config(c)
    check_count(c.semantic_channels, "semantic_channels")
    check_count(c.stuff_area_limit, "stuff_area_limit (pixels)", minimum=0)
    for name, upper in (("semantic_loss_weight", math.inf), ("overlap_threshold", 1.0),
                        ("instance_score_threshold", 1.0)):
        v = getattr(c, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= upper \
                or v != v or v == math.inf:
            what = "a finite number >= 0" if upper == math.inf else "a number in [0, 1]"
            raise ValueError(f"{name} must be {what}, got {v!r}")


def panoptic_fpn(thing_classes, stuff_classes, paper: bool = False, **overrides) -> PanopticFPN:
    """CPU-sized Panoptic FPN (semantic head 32 wide, stuff area limit 16 px for 64-px images),
    or with ``paper=True`` ResNet-50-FPN with a 128-wide semantic head and Detectron2's limits;
    any :class:`PanopticFPNConfig` field can be overridden by keyword."""
    config = configure(PAPER if paper else SMALL, num_classes=len(tuple(thing_classes)) + 1,
                       **overrides)
    return PanopticFPN(thing_classes, stuff_classes, config)
