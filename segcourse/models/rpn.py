"""Region Proposal Network: a few hundred class-agnostic boxes that probably hold an object.

Paper: S. Ren, K. He, R. Girshick, J. Sun, "Faster R-CNN: Towards Real-Time Object Detection
with Region Proposal Networks", NeurIPS 2015 (arXiv:1506.01497), Sec. 3.1; on a feature pyramid
as in Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017, Sec. 4.1 (one
anchor size per level, three aspect ratios, a head shared by all levels).
Reference code: torchvision ``models/detection/anchor_utils.py`` (``AnchorGenerator``) and
``models/detection/rpn.py`` (``RPNHead``, ``RegionProposalNetwork``: 2000 / 1000 proposals,
NMS 0.7 per level, 256 sampled anchors half positive, IoU 0.7 / 0.3, loss normalisation).

Read top to bottom: anchors tile every level; the head scores and refines each anchor; the best
refined anchors survive NMS as proposals; in training, matched anchors give the RPN's loss.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops.boxes import box_iou, clip_boxes, decode_boxes, encode_boxes, remove_small_boxes
from ..ops.matching import IGNORE, match_boxes, sample_balanced
from ..ops.nms import batched_nms

__all__ = ["AnchorGenerator", "RPNHead", "RegionProposalNetwork"]


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
            raise ValueError(f"one anchor size per pyramid level is expected: {len(sizes)} "
                             f"sizes for {len(strides)} strides")
        self.sizes, self.strides = tuple(sizes), tuple(strides)
        self.aspect_ratios = tuple(aspect_ratios)

    @property
    def num_anchors(self) -> int:
        """Anchors per location."""
        return len(self.aspect_ratios)

    def cell_anchors(self, size: float) -> torch.Tensor:
        """The ``[A, 4]`` anchors of one location, centred on (0, 0)."""
        ratios = torch.tensor(self.aspect_ratios, dtype=torch.float32)
        h = torch.sqrt(ratios) * size     # area stays size**2 for every ratio
        w = size / torch.sqrt(ratios)
        return (torch.stack([-w, -h, w, h], dim=1) / 2).round()

    def forward(self, feature_sizes: list[tuple[int, int]], device=None) -> list[torch.Tensor]:
        """Per level, the ``[h * w * A, 4]`` anchors of a ``(h, w)`` feature map."""
        anchors = []
        for (h, w), size, stride in zip(feature_sizes, self.sizes, self.strides):
            ys = torch.arange(h, dtype=torch.float32, device=device) * stride
            xs = torch.arange(w, dtype=torch.float32, device=device) * stride
            sy, sx = torch.meshgrid(ys, xs, indexing="ij")
            shifts = torch.stack([sx, sy, sx, sy], dim=-1).reshape(-1, 1, 4)  # [h*w, 1, 4]
            anchors.append((shifts + self.cell_anchors(size).to(device)).reshape(-1, 4))
        return anchors


class RPNHead(nn.Module):
    """3x3 conv + ReLU shared by all levels, then per anchor an objectness logit and 4 deltas."""

    def __init__(self, channels: int, num_anchors: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.objectness = nn.Conv2d(channels, num_anchors, 1)
        self.deltas = nn.Conv2d(channels, 4 * num_anchors, 1)
        for m in self.children():  # torchvision's RPNHead initialisation
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)

    def forward(self, features: list[torch.Tensor]):
        """Per level: logits ``[B, H*W*A]`` and deltas ``[B, H*W*A, 4]``."""
        logits, deltas = [], []
        for x in features:
            t = F.relu(self.conv(x))
            B, _, H, W = t.shape
            A = self.objectness.out_channels
            # (B, A, H, W) -> (B, H*W*A): location-major like the anchors
            logits.append(self.objectness(t).permute(0, 2, 3, 1).reshape(B, -1))
            # (B, A*4, H, W) -> (B, A, 4, H, W) -> (B, H*W*A, 4)
            d = self.deltas(t).view(B, A, 4, H, W)
            deltas.append(d.permute(0, 3, 4, 1, 2).reshape(B, -1, 4))
        return logits, deltas


class RegionProposalNetwork(nn.Module):
    """Anchors + RPN head -> class-agnostic proposals per image (and, in training, the RPN loss).

    Proposal selection (Faster R-CNN with FPN): per level keep the ``pre_nms_top_n`` highest
    scoring anchors, decode and clip them, drop tiny boxes, run NMS (0.7) within each level, then
    keep the ``post_nms_top_n`` best overall. ``(train, test)`` pairs: more proposals in
    training, so the box head sees more varied RoIs. Training samples ``batch_size`` anchors per
    image, up to half positive (IoU >= 0.7 with a ground-truth box, or its best anchor) and the
    rest negative (< 0.3); anchors in between are ignored.
    """

    def __init__(self, channels: int, anchors: AnchorGenerator, pre_nms_top_n=(2000, 1000),
                 post_nms_top_n=(2000, 1000), nms_threshold=0.7, batch_size=256,
                 positive_fraction=0.5, fg_iou=0.7, bg_iou=0.3):
        super().__init__()
        self.anchors = anchors
        self.head = RPNHead(channels, anchors.num_anchors)
        self.pre_nms_top_n, self.post_nms_top_n = pre_nms_top_n, post_nms_top_n
        self.nms_threshold, self.batch_size = nms_threshold, batch_size
        self.positive_fraction, self.fg_iou, self.bg_iou = positive_fraction, fg_iou, bg_iou

    def forward(self, features: list[torch.Tensor], image_size: tuple[int, int], targets=None):
        """``(proposals, losses)``: a list of ``[n, 4]`` boxes per image; losses in training."""
        logits, deltas = self.head(features)
        device = features[0].device
        anchors = self.anchors([f.shape[-2:] for f in features], device)
        level = torch.cat([torch.full((len(a),), i, device=device)
                           for i, a in enumerate(anchors)])
        anchors, logits, deltas = torch.cat(anchors), torch.cat(logits, 1), torch.cat(deltas, 1)
        # proposals are inputs to the RoI heads, not a path for their gradient (as torchvision)
        proposals = self.select_proposals(anchors, logits.detach(), deltas.detach(), level,
                                          image_size)
        losses = self.loss(anchors, logits, deltas, targets) if self.training else {}
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
        """Objectness BCE on the sampled anchors, smooth-L1 (beta 1/9) on the positives' deltas,
        both normalised by the number sampled (torchvision's ``compute_loss``)."""
        labels, regression = [], []
        for t in targets:
            matches = match_boxes(box_iou(t["boxes"], anchors), self.fg_iou, self.bg_iou, True)
            lab = (matches >= 0).float()
            lab[matches == IGNORE] = -1.0  # neither positive nor negative: never sampled
            labels.append(lab)
            gt = t["boxes"][matches.clamp(min=0)] if len(t["boxes"]) else anchors
            regression.append(encode_boxes(gt, anchors))
        pos, neg = [], []
        for b, lab in enumerate(labels):  # sample per image, then pool the batch
            p, n = sample_balanced(lab, self.batch_size, self.positive_fraction)
            pos.append(p + b * len(anchors))
            neg.append(n + b * len(anchors))
        pos, neg = torch.cat(pos), torch.cat(neg)
        sampled = torch.cat([pos, neg])
        labels, regression = torch.cat(labels), torch.cat(regression)
        logits, deltas = logits.reshape(-1), deltas.reshape(-1, 4)
        objectness = F.binary_cross_entropy_with_logits(logits[sampled], labels[sampled])
        box = F.smooth_l1_loss(deltas[pos], regression[pos], beta=1 / 9, reduction="sum")
        return {"loss_rpn_objectness": objectness, "loss_rpn_box": box / max(sampled.numel(), 1)}
