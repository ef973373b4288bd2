"""The RoI heads of Mask R-CNN: a box head and a mask head on RoIAlign features of proposals.

Paper: K. He, G. Gkioxari, P. Dollár, R. Girshick, "Mask R-CNN", ICCV 2017 (arXiv:1703.06870),
Sec. 3 and Fig. 4 (right: the FPN heads); the box head is FPN's "2fc" head (Lin et al., CVPR
2017, Sec. 4.2).
Reference code: torchvision ``models/detection/roi_heads.py`` (``RoIHeads``: 512 RoIs per image,
25% positive at IoU >= 0.5, box-coder weights (10, 10, 5, 5), ``fastrcnn_loss``,
``maskrcnn_loss``, ``postprocess_detections``), ``faster_rcnn.py`` (``TwoMLPHead``,
``FastRCNNPredictor``) and ``mask_rcnn.py`` (``MaskRCNNHeads``, ``MaskRCNNPredictor``); the
parameter layout matches torchvision's module for module.

Deliberate differences, both Detectron2's (``structures/masks.py``, ``layers/mask_ops.py``):

- mask targets (:func:`project_masks_on_boxes`) are cut out with the *aligned* RoIAlign, one
  sample per pixel, and binarised at 0.5 (``BitMasks.crop_and_resize``, used by
  ``mask_rcnn_loss``); torchvision's ``project_masks_on_boxes`` uses ``aligned=False`` and keeps
  the soft, interpolated values as targets;
- masks are pasted back into the image with one ``grid_sample`` (:func:`paste_masks`,
  ``_do_paste_mask``) consistent with that aligned sampling; torchvision pads each 28 x 28 mask
  by one pixel, resizes it to the integer box and copies it in.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops.boxes import box_iou, clip_boxes, decode_boxes, encode_boxes, remove_small_boxes
from ..ops.matching import match_boxes, sample_balanced
from ..ops.nms import batched_nms
from ..ops.poolers import MultiScaleRoIAlign
from ..ops.roi_align import roi_align

__all__ = ["BoxHead", "MaskHead", "paste_masks", "project_masks_on_boxes", "RoIHeads"]


class BoxHead(nn.Module):
    """Two fully connected layers (the "2fc" head of FPN) -> class scores and per-class deltas."""

    def __init__(self, in_channels: int, resolution: int, representation: int, num_classes: int):
        super().__init__()
        self.fc6 = nn.Linear(in_channels * resolution * resolution, representation)
        self.fc7 = nn.Linear(representation, representation)
        self.cls_score = nn.Linear(representation, num_classes)
        self.bbox_pred = nn.Linear(representation, 4 * num_classes)

    def forward(self, x: torch.Tensor):
        x = F.relu(self.fc6(x.flatten(1)))  # (K, C, 7, 7) -> (K, C*49) -> (K, R)
        x = F.relu(self.fc7(x))
        return self.cls_score(x), self.bbox_pred(x)


class MaskHead(nn.Sequential):
    """The paper's FPN mask head (Fig. 4, right): 4 x (3x3 conv + ReLU) on 14x14 RoI features,
    a 2x2 stride-2 deconvolution + ReLU to 28x28, then a 1x1 conv giving one mask per class."""

    def __init__(self, in_channels: int, channels: int, num_classes: int):
        layers = []
        for i in range(4):
            layers += [nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1),
                       nn.ReLU(inplace=True)]
        layers += [nn.ConvTranspose2d(channels, channels, 2, stride=2), nn.ReLU(inplace=True),
                   nn.Conv2d(channels, num_classes, 1)]
        super().__init__(*layers)
        for m in self.modules():  # torchvision's MaskRCNNHeads / MaskRCNNPredictor init
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)


def project_masks_on_boxes(masks: torch.Tensor, boxes: torch.Tensor, matched: torch.Tensor,
                           size: int) -> torch.Tensor:
    """Mask targets ``[n, size, size]`` (bool): object ``matched[i]``'s full-image mask
    ``masks [G, H, W]`` cropped to RoI ``boxes[i]`` and resampled.

    Detectron2's ``BitMasks.crop_and_resize``: aligned RoIAlign with adaptive sampling (about
    one sample per image pixel), then ``>= 0.5``. Each RoI reads only its own object's mask (its
    "batch index" is the object's), so the [G, H, W] masks are never copied per RoI.
    """
    rois = torch.cat([matched[:, None].to(boxes), boxes], dim=1)
    return roi_align(masks[:, None].to(boxes), rois, size, 1.0, 0, aligned=True)[:, 0] >= 0.5


def paste_masks(masks: torch.Tensor, boxes: torch.Tensor,
                image_size: tuple[int, int]) -> torch.Tensor:
    """Resample ``[n, M, M]`` box-relative masks into ``[n, H, W]`` image-sized ones.

    Mask cell j of a box spans ``x1 + [j, j+1) * w / M``; for every image pixel centre we look up
    where it falls in its box's mask and interpolate bilinearly, zero outside the box -- one
    ``grid_sample`` for all masks (Detectron2's ``_do_paste_mask``).
    """
    n = masks.shape[0]
    H, W = image_size
    if n == 0:
        return masks.new_zeros(0, H, W)
    x1, y1, x2, y2 = boxes.unbind(dim=1)
    px = torch.arange(W, device=masks.device, dtype=masks.dtype) + 0.5
    py = torch.arange(H, device=masks.device, dtype=masks.dtype) + 0.5
    # each in [-1, 1] inside the box: grid_sample's coordinates with align_corners=False
    gx = (px[None] - x1[:, None]) / (x2 - x1).clamp(min=1e-6)[:, None] * 2 - 1  # [n, W]
    gy = (py[None] - y1[:, None]) / (y2 - y1).clamp(min=1e-6)[:, None] * 2 - 1  # [n, H]
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
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
        """``(detections, losses)``: losses in training mode, detections in eval mode."""
        if self.training:
            return [], self.loss(features, proposals, targets)
        return self.detect(features, proposals, image_size), {}

    def sample(self, proposals, targets):
        """Per image: append the ground truth, label by IoU >= 0.5, sample 25% positives."""
        rois, labels, matched, regression = [], [], [], []
        for props, t in zip(proposals, targets):
            # the ground-truth boxes themselves are proposals too: positives from the first step
            props = torch.cat([props, t["boxes"].to(props)])
            matches = match_boxes(box_iou(t["boxes"], props), self.fg_iou, self.fg_iou, False)
            lab = torch.zeros_like(matches)
            lab[matches >= 0] = t["labels"][matches[matches >= 0]]
            pos, neg = sample_balanced(lab, self.batch_size, self.positive_fraction)
            keep = torch.cat([pos, neg])
            gt = t["boxes"][matches[keep].clamp(min=0)] if len(t["boxes"]) else props[keep]
            rois.append(props[keep])
            labels.append(lab[keep])
            matched.append(matches[keep].clamp(min=0))
            regression.append(encode_boxes(gt, props[keep], self.box_weights))
        return rois, labels, matched, regression

    def loss(self, features, proposals, targets) -> dict[str, torch.Tensor]:
        """torchvision's ``fastrcnn_loss`` and ``maskrcnn_loss`` on a sample of the RoIs."""
        rois, labels, matched, regression = self.sample(proposals, targets)
        class_logits, deltas = self.box_head(self.box_pool(features, rois))
        all_labels, all_regression = torch.cat(labels), torch.cat(regression)
        pos = torch.where(all_labels > 0)[0]
        deltas = deltas.reshape(len(deltas), -1, 4)[pos, all_labels[pos]]  # the true class's
        box_loss = F.smooth_l1_loss(deltas, all_regression[pos], beta=1 / 9, reduction="sum")
        losses = {"loss_classifier": F.cross_entropy(class_logits, all_labels),
                  "loss_box": box_loss / max(all_labels.numel(), 1)}
        if pos.numel() == 0:
            # Add nothing, but keep EVERY mask-head parameter in the graph (torchvision's
            # `mask_logits.sum() * 0`): under DDP a parameter without a gradient on one process
            # stalls the all-reduce of the next step.
            losses["loss_mask"] = sum(p.sum() for p in self.mask_head.parameters()) * 0.0
            return losses
        # Mask branch: positive RoIs only, each against its matched object's mask, and only the
        # logits of that object's class (the paper's decoupling of masks and classes).
        keep = [lab > 0 for lab in labels]
        targets_28 = torch.cat([project_masks_on_boxes(t["masks"], r[k], m[k], self.mask_size)
                                for r, m, k, t in zip(rois, matched, keep, targets) if k.any()])
        mask_logits = self.mask_head(self.mask_pool(features, [r[k] for r, k in zip(rois, keep)]))
        mask_logits = mask_logits[torch.arange(len(pos), device=pos.device), all_labels[pos]]
        losses["loss_mask"] = F.binary_cross_entropy_with_logits(mask_logits,
                                                                 targets_28.to(mask_logits))
        return losses

    @torch.no_grad()
    def detect(self, features, proposals, image_size) -> list[dict[str, torch.Tensor]]:
        """torchvision's ``postprocess_detections``, then the mask head on the detections."""
        class_logits, deltas = self.box_head(self.box_pool(features, proposals))
        scores_all = F.softmax(class_logits, dim=-1)
        boxes_all = clip_boxes(decode_boxes(deltas, torch.cat(proposals), self.box_weights),
                               image_size)
        num_classes = scores_all.shape[1]
        counts = [len(p) for p in proposals]
        results = []
        for scores, boxes in zip(scores_all.split(counts), boxes_all.split(counts)):
            labels = torch.arange(num_classes, device=scores.device).expand_as(scores)
            # every (proposal, class) pair is a candidate detection; class 0 is background
            boxes, scores = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1)
            labels = labels[:, 1:].reshape(-1)
            keep = torch.where(scores > self.score_threshold)[0]
            keep = keep[remove_small_boxes(boxes[keep], 1e-2)]
            keep = keep[batched_nms(boxes[keep], scores[keep], labels[keep], self.nms_threshold)]
            keep = keep[: self.detections_per_image]
            results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
        mask_logits = self.mask_head(self.mask_pool(features, [r["boxes"] for r in results]))
        for r, logits in zip(results, mask_logits.split([len(r["boxes"]) for r in results])):
            index = torch.arange(len(logits), device=logits.device)
            probs = torch.sigmoid(logits[index, r["labels"]])
            r["mask_probs"] = paste_masks(probs, r["boxes"], image_size)  # [n, H, W] in [0, 1]
            r["masks"] = r["mask_probs"] >= 0.5
        return results
