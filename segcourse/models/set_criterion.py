"""Mask classification as set prediction: target masks, Hungarian matching and the losses.

A mask-classification model (MaskFormer, Mask2Former, EoMT) predicts Q (mask, class) pairs per
image, in no particular order; an image has n <= Q ground-truth segments. Training therefore
first matches each target to one prediction -- the one-to-one assignment of least total cost
(Hungarian matching, as DETR does for boxes) -- and only then computes losses: every matched
prediction learns its target's class and mask, every unmatched one learns "no object".

Papers: B. Cheng, A. Schwing, A. Kirillov, "Per-Pixel Classification is Not All You Need for
Semantic Segmentation" (MaskFormer, NeurIPS 2021); B. Cheng, I. Misra, A. Schwing, A.
Kirillov, R. Girdhar, "Masked-attention Mask Transformer for Universal Image Segmentation"
(Mask2Former, CVPR 2022; Sec. 3.2.2 and 4.1: losses on sampled points, weights 2 / 5 / 5).
Reference code: facebookresearch/Mask2Former ``mask2former/modeling/matcher.py`` and
``criterion.py``; HF transformers ``modeling_mask2former.py`` (``Mask2FormerHungarianMatcher``,
``Mask2FormerLoss``), which the tests match exactly, random draws included.

Our one addition: targets may mark pixels "ignore" (label 255 of a semantic map). Points that
fall there get weight 0 in the matching cost and in the mask losses; with no ignored pixel the
numbers are exactly Mask2Former's. (The reference has no ignore: its semantic targets leave
such pixels negative in every mask, i.e. it teaches "no mask here".)
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .._checks import check_class_ids, check_count, check_labels
from ..ops.hungarian import hungarian
from ..ops.point_sampling import check_point_sampling, point_sample, uncertain_points

__all__ = ["mask_targets", "HungarianMatcher", "SetCriterion"]

IGNORE = 255  # label of pixels that no target mask claims and no loss should see


# ---------------------------------------------------------------- targets -> criterion format

def _semantic_targets(semantic: torch.Tensor, num_classes: int) -> list[dict]:
    """One mask per class present in each ``[H, W]`` map (MaskFormer's semantic targets)."""
    check_labels(semantic, num_classes, IGNORE, name="targets")
    out = []
    for sem in semantic:
        classes = torch.unique(sem)
        classes = classes[classes != IGNORE].long()  # torch.unique sorts: masks in class order
        out.append({"labels": classes, "masks": sem[None] == classes[:, None, None],
                    "ignore": sem == IGNORE})
    return out


def _instance_target(t, i: int, num_classes: int, things: tuple, size) -> dict:
    """Things from the instance masks, one mask per stuff class of ``semantic``, its 255s."""
    if not isinstance(t, dict) or "masks" not in t or "labels" not in t:
        keys = sorted(t) if isinstance(t, dict) else type(t).__name__
        raise ValueError(f"targets[{i}] must be a dict with 'labels' [n] and 'masks' "
                         f"[n, H, W] (segcourse.data.InstanceTargets), got {keys}")
    masks, labels = t["masks"], t["labels"]
    if not isinstance(masks, torch.Tensor) or masks.dim() != 3:
        shape = tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__
        raise ValueError(f"targets[{i}]['masks'] must be a tensor [n, H, W], got {shape}")
    if tuple(masks.shape[1:]) != size:
        raise ValueError(f"targets[{i}]['masks'] are {tuple(masks.shape[1:])}, but the images "
                         f"are {size}: target masks must have the image size")
    if masks.dtype != torch.bool and not bool(((masks == 0) | (masks == 1)).all()):
        raise ValueError(f"targets[{i}]['masks'] must be boolean (or 0 / 1) masks")
    check_labels(labels, len(things) + 1, None, name=f"targets[{i}]['labels']")
    if labels.dim() != 1 or len(labels) != len(masks):
        raise ValueError(f"targets[{i}]: 'labels' [n] and 'masks' [n, H, W] must agree, got "
                         f"{tuple(labels.shape)} and {tuple(masks.shape)}")
    if bool((labels == 0).any()):
        raise ValueError(f"targets[{i}]['labels'] must be object labels 1..{len(things)} "
                         f"(label l is thing_classes[l - 1] of {things}); 0 is the background")
    lookup = torch.tensor((-1, *things), dtype=torch.int64, device=labels.device)
    classes, masks = [lookup[labels.long()]], [masks.bool()]
    ignore = torch.zeros(size, dtype=torch.bool, device=masks[0].device)
    if "semantic" in t:
        sem = t["semantic"]
        check_labels(sem, num_classes, IGNORE, name=f"targets[{i}]['semantic']")
        if tuple(sem.shape) != size:
            raise ValueError(f"targets[{i}]['semantic'] must be {size} like the masks, got "
                             f"{tuple(sem.shape)}")
        stuff = torch.unique(sem)
        stuff = stuff[(stuff != IGNORE) & ~torch.isin(stuff, lookup)].long()
        classes.append(stuff.to(lookup.device))
        masks.append((sem[None] == stuff[:, None, None]).to(masks[0].device))
        ignore = (sem == IGNORE).to(ignore.device)
    return {"labels": torch.cat(classes), "masks": torch.cat(masks), "ignore": ignore}


def mask_targets(targets, num_classes: int, thing_classes=(), image_size=None) -> list[dict]:
    """The criterion's targets from either target format of segcourse's data.

    Args:
        targets: (a) a semantic map ``[B, H, W]`` of class ids 0..K-1 (255 = ignore): one target
            mask per class present; or (b) a list of B dicts as ``segcourse.data.InstanceTargets``
            gives them: ``labels [n]`` (object label l is dataset class ``thing_classes[l-1]``),
            ``masks [n, H, W]`` and, optionally, ``semantic [H, W]``, whose stuff classes
            (those not in ``thing_classes``) become one mask each.
        num_classes: K, the number of dataset classes (ids 0..K-1).
        thing_classes: the dataset class ids that are countable objects (format b).
        image_size: ``(H, W)`` the masks must have; by default that of the first target.

    Returns: per image ``{"labels": [n] int64 in 0..K-1, "masks": [n, H, W] bool,
    "ignore": [H, W] bool}`` on the targets' device.
    """
    num_classes = check_count(num_classes, "num_classes")
    things = check_class_ids(thing_classes, "thing_classes", allow_empty=True)
    if any(c >= num_classes for c in things):
        raise ValueError(f"thing_classes {things} must be class ids below num_classes = "
                         f"{num_classes}")
    if isinstance(targets, torch.Tensor):
        if targets.dim() != 3:
            raise ValueError(f"a semantic target must be a [B, H, W] map, got shape "
                             f"{tuple(targets.shape)}")
        if image_size is not None and tuple(targets.shape[1:]) != tuple(image_size):
            raise ValueError(f"targets are {tuple(targets.shape[1:])} maps, but the images are "
                             f"{tuple(image_size)}")
        return _semantic_targets(targets, num_classes)
    if not isinstance(targets, (list, tuple)) or not targets:
        raise ValueError("targets must be a [B, H, W] semantic map or a non-empty list of "
                         f"target dicts, got {type(targets).__name__}")
    if image_size is None:
        first = targets[0].get("masks") if isinstance(targets[0], dict) else None
        image_size = tuple(first.shape[1:]) if isinstance(first, torch.Tensor) \
            and first.dim() == 3 else None
    size = tuple(int(s) for s in image_size) if image_size is not None else None
    return [_instance_target(t, i, num_classes, things, size) for i, t in enumerate(targets)]


def _check_criterion_targets(targets, batch: int, num_classes: int, device) -> list[dict]:
    """The criterion's own format (see :func:`mask_targets`), moved to ``device``."""
    if not isinstance(targets, (list, tuple)) or len(targets) != batch:
        got = len(targets) if isinstance(targets, (list, tuple)) else type(targets).__name__
        raise ValueError(f"targets must be a list of {batch} dicts (one per image) with "
                         f"'labels' and 'masks' (see mask_targets), got {got}")
    out, size = [], None
    for i, t in enumerate(targets):
        if not isinstance(t, dict) or "labels" not in t or "masks" not in t:
            raise ValueError(f"targets[{i}] must be a dict with 'labels' [n] and 'masks' "
                             "[n, H, W]; mask_targets() makes them from segcourse's targets")
        labels, masks = t["labels"], t["masks"]
        check_labels(labels, num_classes, None, name=f"targets[{i}]['labels']")
        if not isinstance(masks, torch.Tensor) or masks.dim() != 3 \
                or labels.shape != masks.shape[:1]:
            shape = tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks)
            raise ValueError(f"targets[{i}]: labels [n] and masks [n, H, W] must agree, got "
                             f"{tuple(labels.shape)} and {shape}")
        if size is not None and tuple(masks.shape[1:]) != size:
            raise ValueError(f"targets[{i}]['masks'] are {tuple(masks.shape[1:])}, targets[0]'s "
                             f"{size}: every image's masks must have the same size")
        size = tuple(masks.shape[1:])
        ignore = t.get("ignore")
        if ignore is not None and tuple(ignore.shape) != tuple(masks.shape[1:]):
            raise ValueError(f"targets[{i}]['ignore'] must be [H, W] = {tuple(masks.shape[1:])}"
                             f", got {tuple(ignore.shape)}")
        out.append({"labels": labels.to(device).long(), "masks": masks.to(device),
                    "ignore": None if ignore is None or not bool(ignore.any())
                    else ignore.to(device)})
    return out


def _check_outputs(layer: dict, num_classes: int, where: str) -> None:
    if not isinstance(layer, dict) or "class_logits" not in layer or "mask_logits" not in layer:
        raise ValueError(f"{where} must be a dict with 'class_logits' [B, Q, K+1] and "
                         "'mask_logits' [B, Q, h, w]")
    c, m = layer["class_logits"], layer["mask_logits"]
    if c.dim() != 3 or m.dim() != 4 or c.shape[:2] != m.shape[:2] or c.shape[2] != num_classes + 1:
        raise ValueError(f"{where}: class_logits must be [B, Q, {num_classes + 1}] and "
                         f"mask_logits [B, Q, h, w] with the same B, Q; got "
                         f"{tuple(c.shape)} and {tuple(m.shape)}")


def _valid_weight(ignore, coords: torch.Tensor) -> torch.Tensor | None:
    """Weight 1 for a point of ``coords [B, P, 2]`` in a pixel not ignored, else 0 -> ``[B, P]``
    (None where nothing is ignored). The pixel a point falls in decides: a bilinear read would
    leave ~1e-7 on points deep inside an ignored region, which a weighted mean over a mask
    whose points are all ignored would blow up to full weight."""
    if ignore is None:
        return None
    return point_sample((~ignore[:, None]).float(), coords, mode="nearest")[:, 0]


def _check_weights(*weights) -> tuple[float, ...]:
    """class / mask / dice weights: finite numbers >= 0, not all 0 (the reference asserts it)."""
    if any(isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < float("inf")
           for w in weights) or not any(weights):
        raise ValueError(f"class_weight, mask_weight, dice_weight must be finite numbers >= 0, "
                         f"not all 0; got {weights}")
    return tuple(float(w) for w in weights)


# ---------------------------------------------------------------- matching

class HungarianMatcher(nn.Module):
    """Mask2Former's matcher: per image, the assignment of targets to queries of least cost

        cost = class_weight * (-p(target class)) + mask_weight * BCE + dice_weight * dice,

    BCE and dice between sigmoid masks and targets read at ``num_points`` uniformly random
    points, the same for every query and target of the image (cheap: no full-size masks).
    """

    def __init__(self, class_weight: float = 2.0, mask_weight: float = 5.0,
                 dice_weight: float = 5.0, num_points: int = 12544):
        super().__init__()
        self.class_weight, self.mask_weight, self.dice_weight = _check_weights(
            class_weight, mask_weight, dice_weight)
        self.num_points = check_count(num_points, "num_points")

    def cost(self, class_logits: torch.Tensor, mask_logits: torch.Tensor, target: dict,
             coords: torch.Tensor) -> torch.Tensor:
        """``[Q, n]`` matching cost of one image: ``class_logits [Q, K+1]``, ``mask_logits
        [Q, h, w]``, a criterion target, ``coords [1, P, 2]`` the points to compare at."""
        prob = class_logits.float().softmax(-1)
        cost_class = -prob[:, target["labels"]]  # -p, not -log p: bounded, as in DETR
        x = point_sample(mask_logits[None].float(), coords)[0]  # [Q, P]
        t = point_sample(target["masks"][None].float(), coords)[0]  # [n, P]
        w = _valid_weight(None if target.get("ignore") is None else target["ignore"][None],
                          coords)
        w = torch.ones_like(x[:1]) if w is None else w  # [1, P]
        pos = F.binary_cross_entropy_with_logits(x, torch.ones_like(x), reduction="none")
        neg = F.binary_cross_entropy_with_logits(x, torch.zeros_like(x), reduction="none")
        # mean BCE over the (valid) points of every pair, as two matrix products
        scale = w / w.sum().clamp(min=1e-6)
        cost_mask = (pos * scale) @ t.T + (neg * scale) @ (1 - t).T
        s = x.sigmoid() * w  # dice with +1 smoothing (V-Net / Mask2Former), on valid points
        cost_dice = 1 - (2 * s @ t.T + 1) / (s.sum(-1)[:, None] + (t * w).sum(-1)[None] + 1)
        return (self.mask_weight * cost_mask + self.class_weight * cost_class
                + self.dice_weight * cost_dice)

    @torch.no_grad()
    def forward(self, class_logits: torch.Tensor, mask_logits: torch.Tensor, targets: list[dict],
                point_coords: torch.Tensor | None = None) -> list[tuple[torch.Tensor, ...]]:
        """Per image ``(rows, cols)``: query ``rows[k]`` is matched to target ``cols[k]``.

        ``targets`` in the criterion's format (:func:`mask_targets`); ``point_coords [B, P, 2]``
        the points per image (default: ``num_points`` uniformly random ones, drawn per image as
        the reference draws them).
        """
        B = len(mask_logits)
        if point_coords is not None and (point_coords.dim() != 3 or len(point_coords) != B
                                         or point_coords.shape[-1] != 2):
            raise ValueError(f"point_coords must be [B={B}, P, 2] (x, y in [0, 1]), got "
                             f"{tuple(point_coords.shape)}")
        if len(targets) != B:
            raise ValueError(f"one target per image: got {len(targets)} for a batch of {B}")
        if not torch.isfinite(class_logits).all() or not torch.isfinite(mask_logits).all():
            raise ValueError("class_logits / mask_logits hold NaN or inf: the model has "
                             "diverged (lower the learning rate, or clip gradients)")
        indices = []
        with torch.autocast(mask_logits.device.type, enabled=False):  # costs in float32
            for b, target in enumerate(targets):
                coords = (torch.rand(1, self.num_points, 2, device=mask_logits.device)
                          if point_coords is None else point_coords[b: b + 1])
                if len(target["labels"]) == 0:
                    empty = torch.zeros(0, dtype=torch.int64, device=mask_logits.device)
                    indices.append((empty, empty.clone()))
                    continue
                indices.append(hungarian(self.cost(class_logits[b], mask_logits[b], target,
                                                   coords)))
        return indices


# ---------------------------------------------------------------- losses

class SetCriterion(nn.Module):
    """Mask2Former's training loss over the final and every auxiliary layer of a model.

    For each layer: match (:class:`HungarianMatcher`), then
    - ``loss_class``: cross-entropy over K+1 classes for all Q queries, unmatched ones
      learning "no object" (index K) with weight ``no_object_weight`` (0.1, as DETR);
    - ``loss_mask`` / ``loss_dice``: sigmoid BCE (mean over points) and dice of each matched
      pair on ``num_points`` points, ``importance_sample_ratio`` of them the most uncertain of
      ``oversample_ratio * num_points`` random candidates of the prediction (PointRend), the
      rest uniform; summed over pairs and divided by the number of target masks of the batch
      (averaged over processes under DDP, at least 1).
    Returns ``{"loss_class", "loss_mask", "loss_dice"}``, each weighted and summed over layers.
    """

    def __init__(self, num_classes: int, matcher: HungarianMatcher | None = None,
                 no_object_weight: float = 0.1, class_weight: float = 2.0,
                 mask_weight: float = 5.0, dice_weight: float = 5.0, num_points: int = 12544,
                 oversample_ratio: float = 3.0, importance_sample_ratio: float = 0.75):
        super().__init__()
        self.num_classes = check_count(num_classes, "num_classes")
        self.matcher = matcher if matcher is not None else HungarianMatcher(
            class_weight, mask_weight, dice_weight, num_points)
        if not isinstance(self.matcher, HungarianMatcher):
            raise ValueError(f"matcher must be a HungarianMatcher, got {type(matcher).__name__}")
        if isinstance(no_object_weight, bool) or not isinstance(no_object_weight, (int, float)) \
                or not 0 <= no_object_weight < float("inf"):
            raise ValueError(f"no_object_weight must be a finite number >= 0, "
                             f"got {no_object_weight!r}")
        self.class_weight, self.mask_weight, self.dice_weight = _check_weights(
            class_weight, mask_weight, dice_weight)
        self.num_points = check_point_sampling(num_points, oversample_ratio,
                                               importance_sample_ratio)
        self.oversample_ratio = float(oversample_ratio)
        self.importance_sample_ratio = float(importance_sample_ratio)
        class_weights = torch.ones(num_classes + 1)
        class_weights[-1] = no_object_weight
        # derived from the arguments, so not part of a checkpoint
        self.register_buffer("empty_weight", class_weights, persistent=False)

    @classmethod
    def from_config(cls, c) -> SetCriterion:
        """The criterion a model's config describes: any config with the fields num_classes,
        no_object_weight, class_weight, mask_weight, dice_weight, num_points, oversample_ratio
        and importance_sample_ratio (Mask2FormerConfig, EomtConfig)."""
        return cls(c.num_classes, None, c.no_object_weight, c.class_weight, c.mask_weight,
                   c.dice_weight, c.num_points, c.oversample_ratio, c.importance_sample_ratio)

    def num_masks(self, targets: list[dict], device) -> torch.Tensor:
        """Target masks per process: the batch's count, averaged over DDP processes, >= 1."""
        n = torch.tensor(float(sum(len(t["labels"]) for t in targets)), device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(n)
            n = n / dist.get_world_size()
        return n.clamp(min=1)

    def loss_class(self, class_logits: torch.Tensor, targets: list[dict], indices) -> torch.Tensor:
        B, Q, _ = class_logits.shape
        classes = torch.full((B, Q), self.num_classes, dtype=torch.int64,
                             device=class_logits.device)
        for b, (rows, cols) in enumerate(indices):
            classes[b, rows] = targets[b]["labels"][cols]
        ce = F.cross_entropy(class_logits.float().transpose(1, 2), classes, reduction="none")
        weight = self.empty_weight[classes]
        # torch's weighted mean sum(w * ce) / sum(w) over the B * Q queries, but 0, not NaN,
        # when every weight is 0 (no target in the batch and no_object_weight = 0)
        return (weight * ce).sum() / weight.sum().clamp(min=torch.finfo(ce.dtype).tiny)

    def loss_masks(self, mask_logits: torch.Tensor, targets: list[dict], indices,
                   num_masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pred = torch.cat([mask_logits[b, rows] for b, (rows, _) in enumerate(indices)])
        if len(pred) == 0:  # no target in the batch: zero, with a (zero) gradient
            zero = mask_logits.sum() * 0.0
            return zero, zero.clone()
        pred = pred[:, None].float()  # [N, 1, h, w] matched predictions
        target = torch.cat([targets[b]["masks"][cols] for b, (_, cols) in enumerate(indices)])
        has_ignore = any(t["ignore"] is not None for t in targets)
        device = mask_logits.device
        with torch.no_grad():
            coords = uncertain_points(pred, self.num_points, self.oversample_ratio,
                                      self.importance_sample_ratio)  # [N, P, 2]
            labels = point_sample(target[:, None].float(), coords)[:, 0]  # [N, P]
            weight = None
            if has_ignore:
                ignore = torch.stack([t["ignore"] if t["ignore"] is not None else torch.zeros(
                    t["masks"].shape[1:], dtype=torch.bool, device=device) for t in targets])
                image = torch.cat([torch.full_like(cols, b) for b, (_, cols) in
                                   enumerate(indices)])
                weight = _valid_weight(ignore[image], coords)
        logits = point_sample(pred, coords)[:, 0]  # [N, P], with gradient
        bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        probs = logits.sigmoid()
        if weight is None:  # the reference, term for term
            loss_mask = bce.mean(1)
            inter, total = (probs * labels).sum(1), probs.sum(1) + labels.sum(1)
        else:  # ignored points weigh 0
            loss_mask = (bce * weight).sum(1) / weight.sum(1).clamp(min=1e-6)
            inter = (probs * labels * weight).sum(1)
            total = (probs * weight).sum(1) + (labels * weight).sum(1)
        loss_dice = 1 - (2 * inter + 1) / (total + 1)
        return loss_mask.sum() / num_masks, loss_dice.sum() / num_masks

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, torch.Tensor]:
        _check_outputs(outputs, self.num_classes, "outputs")
        layers = [outputs, *outputs.get("aux_outputs", ())]
        for i, layer in enumerate(layers[1:]):
            _check_outputs(layer, self.num_classes, f"outputs['aux_outputs'][{i}]")
        device = outputs["mask_logits"].device
        targets = _check_criterion_targets(targets, len(outputs["mask_logits"]),
                                           self.num_classes, device)
        num_masks = self.num_masks(targets, device)
        losses = {"loss_class": 0.0, "loss_mask": 0.0, "loss_dice": 0.0}
        for layer in layers:  # final layer first, then the auxiliary ones (the reference order)
            indices = self.matcher(layer["class_logits"], layer["mask_logits"], targets)
            mask, dice = self.loss_masks(layer["mask_logits"], targets, indices, num_masks)
            losses["loss_class"] = losses["loss_class"] + self.class_weight * self.loss_class(
                layer["class_logits"], targets, indices)
            losses["loss_mask"] = losses["loss_mask"] + self.mask_weight * mask
            losses["loss_dice"] = losses["loss_dice"] + self.dice_weight * dice
        return losses
