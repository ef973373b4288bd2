"""Mask R-CNN from its parts: boxes, NMS, RoIAlign, FPN, anchors, RPN, box and mask heads.

Paper: K. He, G. Gkioxari, P. Dollár, R. Girshick, "Mask R-CNN", ICCV 2017 (arXiv:1703.06870),
built on the Region Proposal Network of Faster R-CNN (Ren et al., NeurIPS 2015) and the Feature
Pyramid Network (Lin et al., CVPR 2017).
Reference code it was checked against: torchvision's ``ops.roi_align`` / ``ops.nms`` (the exact
sampling and border semantics) and ``models/detection`` (``rpn.py``, ``roi_heads.py``,
``anchor_utils.py``, ``mask_rcnn.py``: sampling sizes, IoU thresholds, box-coder weights, loss
normalisation, parameter layout -- ``maskrcnn_resnet50_fpn`` has 44,401,393 parameters and so does
``mask_rcnn(91, paper=True)`` once the backbone's BatchNorm affines, which torchvision freezes as
buffers, are left out); Detectron2 for pasting masks back with ``grid_sample``.

The file reads from the smallest part to the whole model:

1. box geometry (IoU, the delta encoding of R-CNN) and non-maximum suppression;
2. RoIAlign, the paper's fix for RoIPool's quantisation;
3. the feature pyramid and the anchors laid on it;
4. the RPN: objectness and box deltas per anchor, proposal selection, its loss;
5. the RoI heads: multi-scale RoIAlign, the box head, the mask head of the paper
   (4 x conv3x3 -> 2x deconv -> per-class 28 x 28 masks), their losses, inference;
6. ``MaskRCNN`` itself, the CPU-sized and paper configurations, and mask AP for evaluation.

Labels follow torchvision: ``num_classes`` counts the background, label 0; objects are 1..K-1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._checks import check_images
from ..ops import (BBOX_CLIP, as_rois, batched_nms, box_area, box_iou, clip_boxes, decode_boxes,
                   encode_boxes, nms, remove_small_boxes, roi_align)
from .resnet import resnet

__all__ = [
    "box_area", "box_iou", "encode_boxes", "decode_boxes", "clip_boxes", "nms", "batched_nms",
    "roi_align", "FeaturePyramid", "AnchorGenerator", "RPNHead", "RegionProposalNetwork",
    "MultiScaleRoIAlign", "BoxHead", "MaskHead", "RoIHeads", "paste_masks", "MaskRCNNConfig",
    "MaskRCNN", "mask_rcnn", "targets_from_samples",
]

# --- 3. feature pyramid and anchors -----------------------------------------------------------

class FeaturePyramid(nn.Module):
    """FPN (Lin et al. 2017): 1x1 laterals, top-down nearest upsampling and sums, 3x3 smoothing.

    Takes the backbone's C2..C5 (strides 4..32) and returns P2..P5 with ``out_channels`` each,
    plus P6 = P5 subsampled by 2 (max-pool, kernel 1), which only the RPN uses for the largest
    anchors (Mask R-CNN's FPN, as in Detectron and torchvision's ``LastLevelMaxPool``).
    """

    def __init__(self, in_channels: list[int], out_channels: int):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1)
                                    for _ in in_channels)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.zeros_(m.bias)

    def forward(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        top = self.lateral[-1](features[-1])
        outs = [self.output[-1](top)]
        for i in range(len(features) - 2, -1, -1):  # coarse to fine
            lateral = self.lateral[i](features[i])
            top = lateral + F.interpolate(top, size=lateral.shape[-2:], mode="nearest")
            outs.insert(0, self.output[i](top))
        names = [f"p{i + 2}" for i in range(len(outs))]
        pyramid = dict(zip(names, outs))
        pyramid[f"p{len(outs) + 2}"] = F.max_pool2d(outs[-1], kernel_size=1, stride=2)
        return pyramid


class AnchorGenerator(nn.Module):
    """One anchor size per pyramid level, several aspect ratios (h / w) at every location.

    Base anchors are centred on (0, 0) and rounded to integers, then shifted by ``stride`` to
    every cell of the level's feature map (torchvision's ``AnchorGenerator``). Anchors are
    ordered location-major, ratio-minor, matching the RPN head's output after its reshape.
    """

    def __init__(self, sizes=(32, 64, 128, 256, 512), aspect_ratios=(0.5, 1.0, 2.0),
                 strides=(4, 8, 16, 32, 64)):
        super().__init__()
        if len(sizes) != len(strides):
            raise ValueError("one anchor size per pyramid level is expected")
        self.sizes, self.aspect_ratios, self.strides = tuple(sizes), tuple(aspect_ratios), tuple(strides)

    @property
    def num_anchors(self) -> int:
        return len(self.aspect_ratios)

    def cell_anchors(self, size: float) -> torch.Tensor:
        ratios = torch.tensor(self.aspect_ratios, dtype=torch.float32)
        h = torch.sqrt(ratios) * size     # area stays size**2 for every ratio
        w = size / torch.sqrt(ratios)
        return (torch.stack([-w, -h, w, h], dim=1) / 2).round()  # [A, 4]

    def forward(self, feature_sizes: list[tuple[int, int]], device=None) -> list[torch.Tensor]:
        anchors = []
        for (h, w), size, stride in zip(feature_sizes, self.sizes, self.strides):
            ys = torch.arange(h, dtype=torch.float32, device=device) * stride
            xs = torch.arange(w, dtype=torch.float32, device=device) * stride
            sy, sx = torch.meshgrid(ys, xs, indexing="ij")
            shifts = torch.stack([sx, sy, sx, sy], dim=-1).reshape(-1, 1, 4)  # [h*w, 1, 4]
            anchors.append((shifts + self.cell_anchors(size).to(device)).reshape(-1, 4))
        return anchors


# --- matching and sampling (shared by the RPN and the box head) ------------------------------

def match_boxes(iou: torch.Tensor, high: float, low: float, allow_low_quality: bool) -> torch.Tensor:
    """For each of N candidates the index of its best ground truth, -1 (background) or -2 (ignore).

    ``iou [G, N]``. IoU >= ``high``: matched; < ``low``: background; in between: ignored. With
    ``allow_low_quality`` each ground truth also keeps the candidates that overlap it most, even
    below ``high`` -- otherwise a small object no anchor covers well would never be learned.
    """
    if iou.shape[0] == 0:
        return torch.full((iou.shape[1],), -1, dtype=torch.int64, device=iou.device)
    best, matches = iou.max(dim=0)
    original = matches.clone()
    matches[best < low] = -1
    matches[(best >= low) & (best < high)] = -2
    if allow_low_quality:
        best_per_gt = iou.max(dim=1, keepdim=True).values
        candidates = torch.where(iou == best_per_gt)[1]
        matches[candidates] = original[candidates]
    return matches


def sample_balanced(labels: torch.Tensor, batch_size: int, positive_fraction: float):
    """Random positives (``labels >= 1``) up to a fraction of the batch, negatives (0) fill it."""
    positive = torch.where(labels >= 1)[0]
    negative = torch.where(labels == 0)[0]
    num_pos = min(int(batch_size * positive_fraction), positive.numel())
    num_neg = min(batch_size - num_pos, negative.numel())
    positive = positive[torch.randperm(positive.numel(), device=labels.device)[:num_pos]]
    negative = negative[torch.randperm(negative.numel(), device=labels.device)[:num_neg]]
    return positive, negative


# --- 4. region proposal network ---------------------------------------------------------------

class RPNHead(nn.Module):
    """3x3 conv + ReLU shared by all levels, then per anchor an objectness logit and 4 deltas."""

    def __init__(self, channels: int, num_anchors: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.objectness = nn.Conv2d(channels, num_anchors, 1)
        self.deltas = nn.Conv2d(channels, 4 * num_anchors, 1)
        for m in self.children():
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)

    def forward(self, features: list[torch.Tensor]):
        logits, deltas = [], []
        for x in features:
            t = F.relu(self.conv(x))
            B, _, H, W = t.shape
            A = self.objectness.out_channels
            # (B, A, H, W) -> (B, H*W*A): location-major like the anchors
            logits.append(self.objectness(t).permute(0, 2, 3, 1).reshape(B, -1))
            # (B, A*4, H, W) -> (B, A, 4, H, W) -> (B, H*W*A, 4)
            deltas.append(self.deltas(t).view(B, A, 4, H, W).permute(0, 3, 4, 1, 2).reshape(B, -1, 4))
        return logits, deltas


class RegionProposalNetwork(nn.Module):
    """Anchors + RPN head -> a few hundred class-agnostic proposals per image (and the RPN loss).

    Proposal selection (Faster R-CNN with FPN): per level keep the ``pre_nms_top_n`` highest
    scoring anchors, decode and clip them, drop tiny boxes, run NMS (0.7) within each level, then
    keep the ``post_nms_top_n`` best overall. Training samples 256 anchors per image, half
    positive (IoU >= 0.7 with a ground-truth box, or its best anchor) and half negative (< 0.3).
    """

    def __init__(self, channels: int, anchors: AnchorGenerator, pre_nms_top_n=(2000, 1000),
                 post_nms_top_n=(2000, 1000), nms_threshold=0.7, batch_size=256,
                 positive_fraction=0.5, fg_iou=0.7, bg_iou=0.3):
        super().__init__()
        self.anchors = anchors
        self.head = RPNHead(channels, anchors.num_anchors)
        self.pre_nms_top_n, self.post_nms_top_n = pre_nms_top_n, post_nms_top_n
        self.nms_threshold, self.batch_size, self.positive_fraction = nms_threshold, batch_size, positive_fraction
        self.fg_iou, self.bg_iou = fg_iou, bg_iou

    def forward(self, features: list[torch.Tensor], image_size: tuple[int, int], targets=None):
        logits, deltas = self.head(features)
        anchors = self.anchors([f.shape[-2:] for f in features], features[0].device)
        level = torch.cat([torch.full((len(a),), i, device=features[0].device)
                           for i, a in enumerate(anchors)])
        anchors, logits, deltas = torch.cat(anchors), torch.cat(logits, 1), torch.cat(deltas, 1)
        proposals = self.select_proposals(anchors, logits.detach(), deltas.detach(), level, image_size)
        losses = {}
        if self.training:
            losses = self.loss(anchors, logits, deltas, targets)
        return proposals, losses

    @torch.no_grad()
    def select_proposals(self, anchors, logits, deltas, level, image_size) -> list[torch.Tensor]:
        mode = 0 if self.training else 1
        pre, post = self.pre_nms_top_n[mode], self.post_nms_top_n[mode]
        proposals = []
        for b in range(logits.shape[0]):
            keep = []
            for i in level.unique().tolist():  # the `pre` best anchors of each level
                index = torch.where(level == i)[0]
                keep.append(index[logits[b, index].topk(min(pre, len(index))).indices])
            keep = torch.cat(keep)
            boxes = clip_boxes(decode_boxes(deltas[b, keep], anchors[keep])[:, 0], image_size)
            scores, lvl = torch.sigmoid(logits[b, keep]), level[keep]
            ok = remove_small_boxes(boxes, 1e-3)
            boxes, scores, lvl = boxes[ok], scores[ok], lvl[ok]
            kept = batched_nms(boxes, scores, lvl, self.nms_threshold)[:post]
            proposals.append(boxes[kept])
        return proposals

    def loss(self, anchors, logits, deltas, targets) -> dict[str, torch.Tensor]:
        labels, regression = [], []
        for t in targets:
            matches = match_boxes(box_iou(t["boxes"], anchors), self.fg_iou, self.bg_iou, True)
            lab = (matches >= 0).float()
            lab[matches == -2] = -1.0
            labels.append(lab)
            gt = t["boxes"][matches.clamp(min=0)] if len(t["boxes"]) else anchors
            regression.append(encode_boxes(gt, anchors))
        pos, neg = [], []
        for b, lab in enumerate(labels):  # sample per image, then pool the batch
            p, n = sample_balanced(lab, self.batch_size, self.positive_fraction)
            offset = b * len(anchors)
            pos.append(p + offset)
            neg.append(n + offset)
        pos, neg = torch.cat(pos), torch.cat(neg)
        sampled = torch.cat([pos, neg])
        labels, regression = torch.cat(labels), torch.cat(regression)
        logits, deltas = logits.reshape(-1), deltas.reshape(-1, 4)
        objectness = F.binary_cross_entropy_with_logits(logits[sampled], labels[sampled])
        box = F.smooth_l1_loss(deltas[pos], regression[pos], beta=1 / 9, reduction="sum") / max(sampled.numel(), 1)
        return {"loss_rpn_objectness": objectness, "loss_rpn_box": box}


# --- 5. RoI heads -----------------------------------------------------------------------------

class MultiScaleRoIAlign(nn.Module):
    """RoIAlign from the pyramid level suited to each RoI's size (FPN paper, Eq. 1).

    ``k = floor(4 + log2(sqrt(w h) / 224))`` clamped to P2..P5: a 224-pixel box (the ImageNet
    pre-training size) reads P4, one twice as large P5, half as large P3.
    """

    def __init__(self, output_size: int, sampling_ratio: int = 2, strides=(4, 8, 16, 32),
                 canonical_scale: float = 224.0, canonical_level: int = 4):
        super().__init__()
        self.output_size, self.sampling_ratio, self.strides = output_size, sampling_ratio, strides
        self.canonical_scale, self.canonical_level = canonical_scale, canonical_level
        self.k_min = int(math.log2(strides[0]))

    def levels(self, boxes: torch.Tensor) -> torch.Tensor:
        size = torch.sqrt(box_area(boxes).clamp(min=1e-6))
        k = torch.floor(self.canonical_level + torch.log2(size / self.canonical_scale) + 1e-6)
        return (k.clamp(self.k_min, self.k_min + len(self.strides) - 1) - self.k_min).long()

    def forward(self, features: list[torch.Tensor], boxes: list[torch.Tensor]) -> torch.Tensor:
        rois = as_rois(boxes, features[0])
        level = self.levels(rois[:, 1:])
        out = features[0].new_zeros(len(rois), features[0].shape[1], self.output_size, self.output_size)
        for i, (f, stride) in enumerate(zip(features, self.strides)):
            sel = torch.where(level == i)[0]
            if sel.numel():
                out = out.index_copy(0, sel, roi_align(f, rois[sel], self.output_size, 1.0 / stride,
                                                       self.sampling_ratio, aligned=True))
        return out


class BoxHead(nn.Module):
    """Two fully connected layers (the "2fc" head of FPN) -> class scores and per-class deltas."""

    def __init__(self, in_channels: int, resolution: int, representation: int, num_classes: int):
        super().__init__()
        self.fc6 = nn.Linear(in_channels * resolution * resolution, representation)
        self.fc7 = nn.Linear(representation, representation)
        self.cls_score = nn.Linear(representation, num_classes)
        self.bbox_pred = nn.Linear(representation, 4 * num_classes)

    def forward(self, x: torch.Tensor):
        x = F.relu(self.fc7(F.relu(self.fc6(x.flatten(1)))))  # (K, C, 7, 7) -> (K, C*49) -> (K, R)
        return self.cls_score(x), self.bbox_pred(x)


class MaskHead(nn.Sequential):
    """The paper's FPN mask head (Fig. 4, right): 4 x (3x3 conv + ReLU) on 14x14 RoI features,
    a 2x2 stride-2 deconvolution + ReLU to 28x28, then a 1x1 conv giving one mask per class."""

    def __init__(self, in_channels: int, channels: int, num_classes: int):
        layers = []
        for i in range(4):
            layers += [nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
        layers += [nn.ConvTranspose2d(channels, channels, 2, stride=2), nn.ReLU(inplace=True),
                   nn.Conv2d(channels, num_classes, 1)]
        super().__init__(*layers)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)


def paste_masks(masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Resample ``[n, M, M]`` box-relative masks into ``[n, H, W]`` image-sized ones.

    Mask cell j of a box spans ``x1 + [j, j+1) * w / M``; for every image pixel centre we look up
    where it falls in its box's mask and interpolate bilinearly, zero outside the box -- one
    ``grid_sample`` for all masks (Detectron2's approach), consistent with the aligned RoIAlign
    that produced the mask targets.
    """
    n = masks.shape[0]
    H, W = image_size
    if n == 0:
        return masks.new_zeros(0, H, W)
    x1, y1, x2, y2 = boxes.unbind(dim=1)
    px = torch.arange(W, device=masks.device, dtype=masks.dtype) + 0.5
    py = torch.arange(H, device=masks.device, dtype=masks.dtype) + 0.5
    gx = (px[None] - x1[:, None]) / (x2 - x1).clamp(min=1e-6)[:, None] * 2 - 1  # [n, W] in [-1, 1] inside
    gy = (py[None] - y1[:, None]) / (y2 - y1).clamp(min=1e-6)[:, None] * 2 - 1  # [n, H]
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)  # [n, H, W, 2]
    return F.grid_sample(masks[:, None], grid, mode="bilinear", align_corners=False)[:, 0]


class RoIHeads(nn.Module):
    """Box and mask heads on the proposals: training samples and losses, inference and pasting."""

    def __init__(self, channels: int, num_classes: int, representation: int, mask_channels: int,
                 batch_size=512, positive_fraction=0.25, fg_iou=0.5, score_threshold=0.05,
                 nms_threshold=0.5, detections_per_image=100):
        super().__init__()
        self.box_pool = MultiScaleRoIAlign(7, sampling_ratio=2)
        self.box_head = BoxHead(channels, 7, representation, num_classes)
        self.mask_pool = MultiScaleRoIAlign(14, sampling_ratio=2)
        self.mask_head = MaskHead(channels, mask_channels, num_classes)
        self.batch_size, self.positive_fraction, self.fg_iou = batch_size, positive_fraction, fg_iou
        self.score_threshold, self.nms_threshold = score_threshold, nms_threshold
        self.detections_per_image = detections_per_image
        self.box_weights = (10.0, 10.0, 5.0, 5.0)
        self.mask_size = 28

    def forward(self, features, proposals, image_size, targets=None):
        if self.training:
            return [], self.loss(features, proposals, targets)
        return self.detect(features, proposals, image_size), {}

    def sample(self, proposals, targets):
        """Per image: append the ground truth, label by IoU >= 0.5, sample 25% positives."""
        rois, labels, gt_index, regression = [], [], [], []
        for props, t in zip(proposals, targets):
            props = torch.cat([props, t["boxes"]])
            matches = match_boxes(box_iou(t["boxes"], props), self.fg_iou, self.fg_iou, False)
            lab = torch.zeros_like(matches)
            lab[matches >= 0] = t["labels"][matches[matches >= 0]]
            pos, neg = sample_balanced(lab, self.batch_size, self.positive_fraction)
            keep = torch.cat([pos, neg])
            gt = t["boxes"][matches[keep].clamp(min=0)] if len(t["boxes"]) else props[keep]
            rois.append(props[keep])
            labels.append(lab[keep])
            gt_index.append(matches[keep].clamp(min=0))
            regression.append(encode_boxes(gt, props[keep], self.box_weights))
        return rois, labels, gt_index, regression

    def loss(self, features, proposals, targets) -> dict[str, torch.Tensor]:
        rois, labels, gt_index, regression = self.sample(proposals, targets)
        class_logits, deltas = self.box_head(self.box_pool(features, rois))
        all_labels, all_regression = torch.cat(labels), torch.cat(regression)
        pos = torch.where(all_labels > 0)[0]
        deltas = deltas.reshape(len(deltas), -1, 4)[pos, all_labels[pos]]  # the true class's deltas
        losses = {
            "loss_classifier": F.cross_entropy(class_logits, all_labels),
            "loss_box": F.smooth_l1_loss(deltas, all_regression[pos], beta=1 / 9, reduction="sum")
            / max(all_labels.numel(), 1),
        }
        # Mask branch: positive RoIs only; the target is the matched object's mask, cropped to the
        # RoI and resampled to 28 x 28 by the same (aligned) RoIAlign, then binarised.
        pos_rois = [r[l > 0] for r, l in zip(rois, labels)]
        mask_targets = []
        for r, l, g, t in zip(rois, labels, gt_index, targets):
            keep = l > 0
            if keep.any():
                boxes = torch.cat([g[keep, None].to(r), r[keep]], dim=1)  # roi's batch index = its object
                mask_targets.append(roi_align(t["masks"][:, None].to(r), boxes, self.mask_size,
                                              1.0, 0, aligned=True)[:, 0] >= 0.5)
        if pos.numel() == 0:
            losses["loss_mask"] = self.mask_head[0].weight.sum() * 0.0  # keep the graph, add nothing
            return losses
        mask_logits = self.mask_head(self.mask_pool(features, pos_rois))
        mask_logits = mask_logits[torch.arange(len(pos), device=pos.device), all_labels[pos]]
        losses["loss_mask"] = F.binary_cross_entropy_with_logits(mask_logits, torch.cat(mask_targets).to(mask_logits))
        return losses

    @torch.no_grad()
    def detect(self, features, proposals, image_size) -> list[dict[str, torch.Tensor]]:
        class_logits, deltas = self.box_head(self.box_pool(features, proposals))
        scores_all = F.softmax(class_logits, dim=-1)
        boxes_all = clip_boxes(decode_boxes(deltas, torch.cat(proposals), self.box_weights), image_size)
        num_classes = scores_all.shape[1]
        results = []
        for scores, boxes in zip(scores_all.split([len(p) for p in proposals]),
                                 boxes_all.split([len(p) for p in proposals])):
            labels = torch.arange(num_classes, device=scores.device).expand_as(scores)
            # every (proposal, class) pair is a candidate detection; class 0 is background
            boxes, scores, labels = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
            keep = torch.where(scores > self.score_threshold)[0]
            keep = keep[remove_small_boxes(boxes[keep], 1e-2)]
            keep = keep[batched_nms(boxes[keep], scores[keep], labels[keep], self.nms_threshold)]
            keep = keep[: self.detections_per_image]
            results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
        mask_logits = self.mask_head(self.mask_pool(features, [r["boxes"] for r in results]))
        for r, logits in zip(results, mask_logits.split([len(r["boxes"]) for r in results])):
            probs = torch.sigmoid(logits[torch.arange(len(logits), device=logits.device), r["labels"]])
            r["mask_probs"] = paste_masks(probs, r["boxes"], image_size)  # [n, H, W] in [0, 1]
            r["masks"] = r["mask_probs"] >= 0.5
        return results


# --- 6. the model -----------------------------------------------------------------------------

@dataclass
class MaskRCNNConfig:
    """Every size and threshold of the model; defaults are CPU-sized for 64-pixel shapes images.

    ``mask_rcnn(num_classes, paper=True)`` swaps in :data:`PAPER` (ResNet-50-FPN, 256-channel
    pyramid and mask head, 1024-d box head, 512 RoIs per image, COCO anchor sizes).
    """

    num_classes: int = 4                       # objects + background (label 0)
    in_channels: int = 3
    depth: int = 18                            # ResNet depth (paper: 50 or 101)
    width: int = 16                            # ResNet stem width (paper: 64)
    fpn_channels: int = 64                     # paper: 256
    anchor_sizes: tuple = (8, 16, 32, 64, 128)  # one per level P2..P6 (paper: 32..512)
    aspect_ratios: tuple = (0.5, 1.0, 2.0)
    rpn_pre_nms_top_n: tuple = (300, 300)      # per level, (train, test) (paper: 2000, 1000)
    rpn_post_nms_top_n: tuple = (300, 100)     # per image, (train, test) (paper: 2000, 1000)
    rpn_nms_threshold: float = 0.7
    rpn_batch_size: int = 256                  # anchors sampled per image for the RPN loss
    roi_batch_size: int = 64                   # RoIs sampled per image (paper: 512)
    representation: int = 256                  # box head fc width (paper: 1024)
    mask_channels: int = 32                    # mask head width (paper: 256)
    score_threshold: float = 0.05
    nms_threshold: float = 0.5
    detections_per_image: int = 100


PAPER = dict(depth=50, width=64, fpn_channels=256, anchor_sizes=(32, 64, 128, 256, 512),
             rpn_pre_nms_top_n=(2000, 1000), rpn_post_nms_top_n=(2000, 1000), roi_batch_size=512,
             representation=1024, mask_channels=256)

# ImageNet statistics, so that ImageNet-pretrained backbones see what they were trained on.
_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class MaskRCNN(nn.Module):
    """ResNet-FPN backbone -> RPN -> RoIAlign -> box head and mask head.

    ``model(images, targets)`` in training mode returns a dict of losses; in eval mode
    ``model(images)`` returns one dict per image with ``boxes [n, 4]``, ``labels [n]``,
    ``scores [n]``, ``mask_probs [n, H, W]`` and ``masks [n, H, W]`` (bool), at input size.
    Targets are dicts with ``boxes [n, 4]`` (x1, y1, x2, y2), ``labels [n]`` in 1..K-1 and
    ``masks [n, H, W]``. Images of any size >= 32 work: they are zero-padded to a multiple of
    32 internally so every pyramid level is exactly half the previous one.
    """

    def __init__(self, config: MaskRCNNConfig):
        super().__init__()
        self.config = c = config
        self.backbone = resnet(depth=c.depth, output_stride=32, in_channels=c.in_channels, width=c.width)
        names = ["layer1", "layer2", "layer3", "layer4"]
        self.fpn = FeaturePyramid([self.backbone.channels[n] for n in names], c.fpn_channels)
        self.rpn = RegionProposalNetwork(c.fpn_channels, AnchorGenerator(c.anchor_sizes, c.aspect_ratios),
                                         c.rpn_pre_nms_top_n, c.rpn_post_nms_top_n, c.rpn_nms_threshold,
                                         c.rpn_batch_size)
        self.roi_heads = RoIHeads(c.fpn_channels, c.num_classes, c.representation, c.mask_channels,
                                  c.roi_batch_size, score_threshold=c.score_threshold,
                                  nms_threshold=c.nms_threshold, detections_per_image=c.detections_per_image)
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
        return self.fpn([feats[n] for n in ("layer1", "layer2", "layer3", "layer4")])

    def instances(self, pyramid: dict, image_size: tuple[int, int], targets=None):
        """RPN + RoI heads on a pyramid; (detections, losses) -- one of them is empty."""
        levels = list(pyramid.values())
        proposals, rpn_losses = self.rpn(levels, image_size, targets)
        detections, roi_losses = self.roi_heads(levels[:4], proposals, image_size, targets)
        return detections, {**rpn_losses, **roi_losses}

    def forward(self, images: torch.Tensor, targets: list[dict] | None = None):
        if self.training:
            _check_targets(targets, images, self.config.num_classes)
        detections, losses = self.instances(self.features(images), tuple(images.shape[-2:]), targets)
        return losses if self.training else detections


def _check_targets(targets, images, num_classes: int) -> None:
    if targets is None or len(targets) != images.shape[0]:
        raise ValueError("in training mode pass one target dict per image "
                         "(boxes [n, 4], labels [n], masks [n, H, W])")
    H, W = images.shape[-2:]
    for t in targets:
        n = len(t["boxes"])
        if t["boxes"].shape != (n, 4) or t["labels"].shape != (n,) or t["masks"].shape != (n, H, W):
            raise ValueError(f"target shapes must be boxes [n, 4], labels [n], masks [n, {H}, {W}]; got "
                             f"{tuple(t['boxes'].shape)}, {tuple(t['labels'].shape)}, {tuple(t['masks'].shape)}")
        if n and (int(t["labels"].min()) < 1 or int(t["labels"].max()) >= num_classes):
            raise ValueError(f"object labels must be in 1..{num_classes - 1} (0 is the background)")


def mask_rcnn(num_classes: int, paper: bool = False, **overrides) -> MaskRCNN:
    """CPU-sized Mask R-CNN, or with ``paper=True`` the ResNet-50-FPN sizes of the paper."""
    config = MaskRCNNConfig(num_classes=num_classes, **(PAPER if paper else {}))
    return MaskRCNN(replace(config, **overrides))


def targets_from_samples(samples, thing_classes) -> list[dict[str, torch.Tensor]]:
    """Mask R-CNN targets from ``ShapesDataset.sample`` objects.

    Dataset class ``thing_classes[k]`` becomes object label ``k + 1``; ``semantic`` (the dataset's
    class map) is kept for Panoptic FPN's stuff head.
    """
    lookup = {c: k + 1 for k, c in enumerate(thing_classes)}
    targets = []
    for s in samples:
        ids = torch.arange(1, len(s.instance_classes) + 1)
        targets.append({
            "boxes": s.boxes.float(),
            "labels": torch.tensor([lookup[int(c)] for c in s.instance_classes], dtype=torch.int64),
            "masks": s.instances[None] == ids[:, None, None],
            "semantic": s.mask,
        })
    return targets
