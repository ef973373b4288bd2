"""One set of (mask, class) predictions, three answers: semantic, panoptic, instance.

A mask-classification model gives per image Q queries, each a class distribution over K + 1
classes (the last: "no object") and a mask. Mask2Former (Cheng et al., CVPR 2022; the rules
from MaskFormer, NeurIPS 2021, Sec. 3.4) reads every task off these outputs:

- **semantic**: per pixel and class, sum over queries of p(class) x sigmoid(mask) -- a soft
  vote of all queries; the argmax is the class map.
- **panoptic**: keep the queries whose most likely class is an object with probability above
  ``object_mask_threshold``; each pixel goes to the kept query with the largest
  p(class) x sigmoid(mask), if that mask is >= 0.5 there; a query keeping less than
  ``overlap_threshold`` of its own mask is dropped; stuff segments of one class merge.
- **instance**: the ``top_k`` (query, thing class) pairs by p(class), each with the binary mask
  ``mask > 0`` and score p(class) x the mean sigmoid mask inside it.

Reference code: facebookresearch/Mask2Former ``mask2former/maskformer_model.py``
(``semantic_inference``, ``panoptic_inference``, ``instance_inference``), which this follows,
at the input resolution (mask logits bilinearly upsampled first, as there).

Where HF transformers' ``Mask2FormerImageProcessor`` post-processing differs (the tests compare
where the algorithms agree):
- all three first upsample the masks to a fixed 384 x 384 and resize from there; we upsample
  once, to the requested size.
- ``post_process_panoptic_segmentation`` measures a query's own area on p(class) x sigmoid
  (not sigmoid) >= 0.5, gives a pixel to its argmax query even where that mask is < 0.5, keeps
  a segment only if its kept share is strictly > the threshold (the original: >=), and reuses
  segment ids after a merged stuff segment; default threshold 0.5 (the original: 0.8).
- ``post_process_instance_segmentation`` takes the top Q (number of queries) pairs over all
  classes, drops scores below 0.5 and empty masks, and binarises at 384 x 384 before a
  nearest resize; the original takes the top 100 over all classes and, for panoptic models,
  keeps the thing classes among them. We restrict to thing classes *before* the top-k, so a
  model of many stuff classes still returns ``top_k`` thing detections (identical when every
  class is a thing).

Output formats are those of the rest of segcourse: panoptic maps are
:func:`segcourse.models.panoptic_fpn.panoptic_fusion`'s (``[H, W, 2]`` of category and
instance id; things 1, 2, ...; stuff 0; :data:`~segcourse.models.panoptic_fpn.VOID` where no
segment), read by :func:`segcourse.metrics.panoptic_quality`; instance dicts are Mask R-CNN's,
read by :func:`segcourse.metrics.mask_average_precision`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._checks import check_class_ids, check_count, check_number, check_size
from .panoptic_fpn import VOID

__all__ = ["semantic_inference", "panoptic_inference", "instance_inference", "MaskClassifier"]


def _check_outputs(class_logits, mask_logits) -> None:
    for name, x, dims in (("class_logits", class_logits, "[B, Q, K+1]"),
                          ("mask_logits", mask_logits, "[B, Q, h, w]")):
        if not isinstance(x, torch.Tensor) or x.dim() != len(dims.split(",")):
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name} must be a tensor {dims}, got {shape}")
        if not x.is_floating_point():
            raise ValueError(f"{name} must be floating point, got dtype {x.dtype}")
    if class_logits.shape[:2] != mask_logits.shape[:2] or class_logits.shape[-1] < 2:
        raise ValueError(f"class_logits [B, Q, K+1] and mask_logits [B, Q, h, w] must share B "
                         f"and Q (and K >= 1), got {tuple(class_logits.shape)} and "
                         f"{tuple(mask_logits.shape)}")


def _check_things(thing_classes, num_classes: int) -> tuple[int, ...]:
    things = check_class_ids(thing_classes, "thing_classes", allow_empty=True)
    if any(c >= num_classes for c in things):
        raise ValueError(f"thing_classes {things} must be class ids below K = {num_classes} "
                         "(class_logits has K + 1 entries, the last is 'no object')")
    return things


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """float16 / bfloat16 logits (mixed precision) in float32; float64 stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _upsample(mask_logits: torch.Tensor, size) -> torch.Tensor:
    """``[B, Q, h, w]`` mask logits -> ``[B, Q, H, W]`` float, bilinear (align_corners=False)."""
    return F.interpolate(_at_least_float32(mask_logits), size=size, mode="bilinear",
                         align_corners=False)


# ---------------------------------------------------------------- semantic

def semantic_inference(class_logits: torch.Tensor, mask_logits: torch.Tensor,
                       size) -> torch.Tensor:
    """Class scores ``[B, K, H, W]``: sum over queries of p(class) x sigmoid(mask).

    ``size``: ``(H, W)``, the input resolution. Scores lie in ``[0, Q]``; ``argmax(1)`` is the
    semantic map that ``segcourse.metrics.mean_iou`` scores.
    """
    _check_outputs(class_logits, mask_logits)
    size = check_size(size)
    probs = _at_least_float32(class_logits).softmax(-1)[..., :-1]  # drop "no object"
    return torch.einsum("bqk,bqhw->bkhw", probs, _upsample(mask_logits, size).sigmoid())


# ---------------------------------------------------------------- panoptic

def _panoptic(probs: torch.Tensor, masks: torch.Tensor, things: tuple, object_mask_threshold,
              overlap_threshold) -> torch.Tensor:
    """One image: ``probs [Q, K+1]`` (softmax), ``masks [Q, H, W]`` (sigmoid) -> ``[H, W, 2]``."""
    K = probs.shape[-1] - 1
    H, W = masks.shape[-2:]
    category = torch.full((H, W), VOID, dtype=torch.int64, device=masks.device)
    instance = torch.zeros((H, W), dtype=torch.int64, device=masks.device)
    scores, classes = probs.max(-1)
    keep = (classes != K) & (scores > object_mask_threshold)
    scores, classes, masks = scores[keep], classes[keep], masks[keep]
    if len(masks):
        owner = (scores[:, None, None] * masks).argmax(0)  # the most confident query per pixel
        next_id = 1
        for k, c in enumerate(classes.tolist()):
            own = masks[k] >= 0.5
            claimed = owner == k
            mask = claimed & own
            original_area, claimed_area = int(own.sum()), int(claimed.sum())
            if claimed_area == 0 or original_area == 0 or not bool(mask.any()):
                continue
            if claimed_area / original_area < overlap_threshold:
                continue  # mostly hidden behind more confident queries: a duplicate
            category[mask] = c
            if c in things:
                instance[mask] = next_id
                next_id += 1
            # a stuff class is one segment: its instance id stays 0, so segments of the same
            # class merge (Mask2Former's stuff_memory_list)
    return torch.stack([category, instance], dim=-1)


def panoptic_inference(class_logits: torch.Tensor, mask_logits: torch.Tensor, size,
                       thing_classes=(), object_mask_threshold: float = 0.8,
                       overlap_threshold: float = 0.8) -> list[torch.Tensor]:
    """Per image an int64 ``[H, W, 2]`` map of (category, instance id), Mask2Former's rules.

    Categories are class ids 0..K-1 (``VOID``, id 0, where no segment claims a pixel); thing
    segments get ids 1, 2, ... in query order, stuff segments id 0 (one per class), as
    :func:`segcourse.models.panoptic_fpn.panoptic_fusion` does.
    """
    _check_outputs(class_logits, mask_logits)
    size = check_size(size)
    things = _check_things(thing_classes, class_logits.shape[-1] - 1)
    object_mask_threshold = check_number(object_mask_threshold, "object_mask_threshold", 0, 1)
    overlap_threshold = check_number(overlap_threshold, "overlap_threshold", 0, 1)
    probs = _at_least_float32(class_logits).softmax(-1)
    masks = _upsample(mask_logits, size).sigmoid()
    return [_panoptic(p, m, things, object_mask_threshold, overlap_threshold)
            for p, m in zip(probs, masks)]


# ---------------------------------------------------------------- instance

def _instances(probs: torch.Tensor, mask_logits: torch.Tensor, things: tuple,
               top_k: int) -> dict:
    """One image: ``probs [Q, K+1]`` (softmax), ``mask_logits [Q, H, W]`` (upsampled)."""
    Q, (H, W) = len(probs), mask_logits.shape[-2:]
    T = len(things)
    index = torch.tensor(things, dtype=torch.int64, device=probs.device)
    if T == 0:  # a model of stuff only detects nothing
        return {"masks": torch.zeros(0, H, W, dtype=torch.bool, device=probs.device),
                "scores": probs.new_zeros(0), "labels": index.clone(), "categories": index}
    class_probs = probs[:, index]  # [Q, T]: thing classes only
    top, flat = class_probs.flatten().topk(min(top_k, Q * T))  # query-major: flat = q * T + t
    query, thing = flat // T, flat % T
    masks = mask_logits[query]
    binary = masks > 0
    # mask score: the mean foreground probability inside the predicted mask
    inside = (masks.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    scores = top * inside
    order = scores.argsort(descending=True, stable=True)
    return {"masks": binary[order].reshape(-1, H, W), "scores": scores[order],
            "labels": thing[order] + 1, "categories": index[thing[order]]}


def instance_inference(class_logits: torch.Tensor, mask_logits: torch.Tensor, size,
                       thing_classes=(), top_k: int = 100) -> list[dict]:
    """Per image the ``top_k`` (query, thing class) detections, by decreasing score.

    Returns per image ``{"masks": [n, H, W] bool, "scores": [n], "labels": [n] in 1..T (the
    position in ``thing_classes`` + 1, Mask R-CNN's labels), "categories": [n] class ids}``;
    ``n = min(top_k, Q * T)`` (0 when there are no thing classes). Masks are ``logit > 0``.
    """
    _check_outputs(class_logits, mask_logits)
    size = check_size(size)
    things = _check_things(thing_classes, class_logits.shape[-1] - 1)
    top_k = check_count(top_k, "top_k")
    probs = _at_least_float32(class_logits).softmax(-1)
    masks = _upsample(mask_logits, size)
    return [_instances(p, m, things, top_k) for p, m in zip(probs, masks)]


# ---------------------------------------------------------------- the models' mixin

class MaskClassifier:
    """Task answers of a mask-classification model (Mask2Former, EoMT).

    The model is an ``nn.Module`` whose eval-mode ``forward(images)`` returns
    ``{"class_logits", "mask_logits"}`` and which has ``thing_classes``. Inference settings are
    class attributes (Mask2Former's defaults) that a model or its user may override.
    """

    def set_categories(self, num_classes: int, thing_classes) -> None:
        """``thing_classes``: the class ids (below ``num_classes``) of countable objects;
        ``stuff_classes``: every other class."""
        self.thing_classes = check_class_ids(thing_classes, "thing_classes", allow_empty=True)
        if any(k >= num_classes for k in self.thing_classes):
            raise ValueError(f"thing_classes {self.thing_classes} must be class ids below "
                             f"num_classes = {num_classes}")
        self.stuff_classes = tuple(k for k in range(num_classes) if k not in self.thing_classes)

    object_mask_threshold: float = 0.8  # panoptic: least class probability of a segment
    overlap_threshold: float = 0.8      # panoptic: least share of its mask a segment keeps
    top_k: int = 100                    # instance: detections per image (Detectron2's 100)

    def _predict(self, images: torch.Tensor) -> dict:
        """The output dict in eval mode; the caller's mode is restored."""
        was_training = self.training
        self.eval()
        try:
            return self(images)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def semantic(self, images: torch.Tensor) -> torch.Tensor:
        """Class scores ``[B, K, H, W]`` at the input size (``.argmax(1)``: the class map)."""
        out = self._predict(images)
        return semantic_inference(out["class_logits"], out["mask_logits"], images.shape[-2:])

    @torch.no_grad()
    def segment(self, images: torch.Tensor) -> list[dict]:
        """Per image Panoptic FPN's eval dict: the instance detections (``masks``, ``scores``,
        ``labels`` 1..T, ``categories``) and ``panoptic [H, W, 2]``."""
        out = self._predict(images)
        class_logits, mask_logits = out["class_logits"], out["mask_logits"]
        _check_outputs(class_logits, mask_logits)
        things = _check_things(self.thing_classes, class_logits.shape[-1] - 1)
        top_k = check_count(self.top_k, "top_k")
        thresholds = (check_number(self.object_mask_threshold, "object_mask_threshold", 0, 1),
                      check_number(self.overlap_threshold, "overlap_threshold", 0, 1))
        probs = _at_least_float32(class_logits).softmax(-1)
        results = []
        for p, m in zip(probs, _upsample(mask_logits, images.shape[-2:])):  # upsampled once
            result = _instances(p, m, things, top_k)
            result["panoptic"] = _panoptic(p, m.sigmoid(), things, *thresholds)
            results.append(result)
        return results
