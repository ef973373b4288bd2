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

import math
from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from .maskrcnn import PAPER, MaskRCNN, MaskRCNNConfig, _check_targets

__all__ = ["VOID", "SemanticFPNHead", "panoptic_fusion", "PanopticFPN", "panoptic_fpn"]

VOID = -1  # category of pixels that fusion leaves unlabelled; instance id 0


class UpsampleStage(nn.Sequential):
    """3x3 conv -> GroupNorm -> ReLU, then 2x bilinear upsampling if asked (paper, Fig. 3)."""

    def __init__(self, in_channels: int, channels: int, upsample: bool):
        # GroupNorm with 32 groups at the paper's 128 channels; narrower heads keep 4 channels
        # per group so that the normalisation statistics are not taken over a single channel.
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
            self.scale_heads.append(nn.Sequential(*(
                UpsampleStage(in_channels if i == 0 else channels, channels, upsample=stride != strides[0])
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


class PanopticFPN(nn.Module):
    """Mask R-CNN plus a semantic FPN head on the same pyramid, and panoptic fusion at inference.

    Categories are the dataset's: ``thing_classes`` and ``stuff_classes`` are lists of dataset
    class ids (for the shapes data ``(2, 3, 4)`` and ``(0, 1)``). Training targets are Mask R-CNN
    targets (object labels 1..len(thing_classes), see ``targets_from_samples``) plus
    ``semantic``, the dataset's class map (255 = ignore). The semantic head learns the stuff
    classes and one extra "thing" class for every pixel of ``thing_classes``.

    Training returns the Mask R-CNN losses and ``loss_semantic`` (weighted by
    ``semantic_loss_weight``); eval returns per image the detections (plus ``categories``, their
    dataset class ids), ``semantic_logits [S+1, H, W]`` and ``panoptic [H, W, 2]`` in dataset
    class ids.
    """

    def __init__(self, thing_classes, stuff_classes, config: MaskRCNNConfig | None = None,
                 semantic_channels: int = 128, semantic_loss_weight: float = 0.5,
                 overlap_threshold: float = 0.5, stuff_area_limit: int = 4096,
                 score_threshold: float = 0.5):
        super().__init__()
        self.thing_classes, self.stuff_classes = tuple(thing_classes), tuple(stuff_classes)
        config = config or MaskRCNNConfig()
        if config.num_classes != len(self.thing_classes) + 1:
            raise ValueError(f"config.num_classes must be len(thing_classes) + 1 = "
                             f"{len(self.thing_classes) + 1}, got {config.num_classes}")
        self.mask_rcnn = MaskRCNN(config)
        self.semantic_head = SemanticFPNHead(config.fpn_channels, len(self.stuff_classes) + 1,
                                             semantic_channels)
        self.semantic_loss_weight = semantic_loss_weight
        self.overlap_threshold, self.stuff_area_limit = overlap_threshold, stuff_area_limit
        self.score_threshold = score_threshold
        # dataset class id -> semantic head class: stuff k -> k, any thing -> S, ignore stays 255
        lookup = torch.full((256,), 255, dtype=torch.int64)
        lookup[list(self.stuff_classes)] = torch.arange(len(self.stuff_classes))
        lookup[list(self.thing_classes)] = len(self.stuff_classes)
        self.register_buffer("semantic_lookup", lookup, persistent=False)

    def semantic_logits(self, pyramid: dict, image_size: tuple[int, int]) -> torch.Tensor:
        logits = self.semantic_head([pyramid[k] for k in ("p2", "p3", "p4", "p5")])
        return logits[..., : image_size[0], : image_size[1]]  # drop the padding to a multiple of 32

    def forward(self, images: torch.Tensor, targets: list[dict] | None = None):
        H, W = images.shape[-2:]
        pyramid = self.mask_rcnn.features(images)
        logits = self.semantic_logits(pyramid, (H, W))
        if self.training:
            _check_targets(targets, images, self.mask_rcnn.config.num_classes)
            _, losses = self.mask_rcnn.instances(pyramid, (H, W), targets)
            semantic = torch.stack([t["semantic"] for t in targets]).to(images.device)
            labels = self.semantic_lookup[semantic.clamp(0, 255)]
            losses["loss_semantic"] = self.semantic_loss_weight * F.cross_entropy(logits, labels, ignore_index=255)
            return losses
        detections, _ = self.mask_rcnn.instances(pyramid, (H, W))
        stuff_and_thing = torch.tensor([*self.stuff_classes, VOID], device=images.device)
        thing_ids = torch.tensor([VOID, *self.thing_classes], device=images.device)  # label 0 = background
        for det, lg in zip(detections, logits):
            det["categories"] = thing_ids[det["labels"]]
            det["semantic_logits"] = lg
            det["panoptic"] = panoptic_fusion(det["masks"], det["scores"], det["categories"],
                                              stuff_and_thing[lg.argmax(0)], self.stuff_classes,
                                              self.overlap_threshold, self.stuff_area_limit,
                                              self.score_threshold)
        return detections


def panoptic_fpn(thing_classes, stuff_classes, paper: bool = False, **overrides) -> PanopticFPN:
    """CPU-sized Panoptic FPN (semantic head 32 wide, stuff area limit 16 px for 64-px images),
    or with ``paper=True`` ResNet-50-FPN with a 128-wide semantic head and Detectron2's limits."""
    head = dict(semantic_channels=128, stuff_area_limit=4096) if paper else \
        dict(semantic_channels=32, stuff_area_limit=16)
    head.update({k: overrides.pop(k) for k in list(overrides) if k in
                 ("semantic_channels", "semantic_loss_weight", "overlap_threshold",
                  "stuff_area_limit", "score_threshold")})
    config = MaskRCNNConfig(num_classes=len(thing_classes) + 1, **(PAPER if paper else {}))
    return PanopticFPN(thing_classes, stuff_classes, replace(config, **overrides), **head)


@torch.no_grad()
def evaluate_panoptic(model: PanopticFPN, dataset, batch_size: int = 16, device=None) -> dict:
    """Mask AP@0.5 of the instance branch and PQ of the fused output on a ``ShapesDataset``.

    Returns ``{"mask_ap50", "pq", "sq", "rq", "pq_things", "pq_stuff", "predictions"}`` (the
    per-image outputs, on the CPU, for plotting).
    """
    from ..metrics import panoptic_quality
    from .maskrcnn import mask_average_precision, targets_from_samples

    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    predictions, targets, panoptic = [], [], []
    try:
        for start in range(0, len(dataset), batch_size):
            samples = [dataset.sample(i) for i in range(start, min(start + batch_size, len(dataset)))]
            images = torch.stack([s.image for s in samples]).to(device)
            for out in model(images):
                predictions.append({k: v.cpu() for k, v in out.items()})
            targets += targets_from_samples(samples, model.thing_classes)
            panoptic += [torch.stack([s.mask, s.instances], dim=-1) for s in samples]
    finally:
        model.train(was_training)
    ap = mask_average_precision(predictions, targets, iou_threshold=0.5)
    pq = panoptic_quality(torch.stack([p["panoptic"] for p in predictions]), torch.stack(panoptic),
                          model.thing_classes, model.stuff_classes)
    return {"mask_ap50": ap["ap"], "pq": pq["pq"], "sq": pq["sq"], "rq": pq["rq"],
            "pq_things": pq["things"]["pq"], "pq_stuff": pq["stuff"]["pq"], "predictions": predictions}
