"""Segmentation metrics: confusion matrix, IoU per class, mean IoU, pixel accuracy.

Conventions (shared by every chapter and by ``segcourse.train``):

- ``confusion_matrix`` rows are the *target* class, columns the *predicted* class; pixels whose
  target is ``ignore_index`` are skipped entirely (whatever was predicted there).
- ``IoU_k = TP_k / (TP_k + FP_k + FN_k)``. A class that appears in neither the target nor the
  prediction has ``0 / 0``: its IoU is **NaN** ("no evidence"), not 0 (which would punish a model
  for a class the images never contained) and not 1 (which would reward it). ``mean_iou`` averages
  the non-NaN classes, so it is the mean over classes *present* in target or prediction.
- Metrics over a whole validation set come from one confusion matrix summed over batches
  (``SegmentationMetric``), not from averaging per-batch mIoUs, which weights small batches and
  empty classes wrongly.
"""

from __future__ import annotations

import torch

from .._checks import as_tensor, check_labels, check_same_shape

__all__ = ["confusion_matrix", "iou_per_class", "mean_iou", "pixel_accuracy",
           "class_accuracy", "SegmentationMetric"]


def _as_labels(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Accept predicted labels ``[..., H, W]`` or logits ``[B, K, H, W]`` (argmax taken)."""
    if pred.is_floating_point() and pred.dim() == target.dim() + 1:
        return pred.argmax(dim=1)
    return pred


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int | None = 255) -> torch.Tensor:
    """``[K, K]`` int64 counts; ``cm[t, p]`` = number of pixels of class t predicted as p.

    ``pred`` is a label map with the shape of ``target`` (or logits ``[B, K, H, W]``, reduced by
    argmax). Pixels where ``target == ignore_index`` are not counted.
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    pred, target = as_tensor(pred, "pred"), as_tensor(target, "target")
    pred = _as_labels(pred, target)
    check_same_shape(pred, target)
    check_labels(target, num_classes, ignore_index, name="target")
    keep = (target != ignore_index if ignore_index is not None
            else torch.ones_like(target, dtype=torch.bool))
    check_labels(pred[keep], num_classes, ignore_index=None, name="pred")
    index = target[keep].long() * num_classes + pred[keep].long()
    counts = torch.bincount(index, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).cpu()


def iou_per_class(cm: torch.Tensor) -> torch.Tensor:
    """IoU of each class from a confusion matrix; NaN where the class is in neither map."""
    if cm.dim() != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"cm must be a square [K, K] matrix, got shape {tuple(cm.shape)}")
    cm = cm.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp  # predicted k + actually k - both
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))


def class_accuracy(cm: torch.Tensor) -> torch.Tensor:
    """Recall of each class (TP / pixels of that class); NaN where the class is absent."""
    cm = cm.double()
    total = cm.sum(1)
    return torch.where(total > 0, cm.diag() / total.clamp(min=1),
                       torch.full_like(total, float("nan")))


def _nanmean(x: torch.Tensor) -> float:
    valid = x[~torch.isnan(x)]
    return float(valid.mean()) if valid.numel() else float("nan")


def mean_iou(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
             ignore_index: int | None = 255) -> float:
    """Mean of the per-class IoUs, over classes present in the target or the prediction."""
    return _nanmean(iou_per_class(confusion_matrix(pred, target, num_classes, ignore_index)))


def pixel_accuracy(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                   ignore_index: int | None = 255) -> float:
    """Fraction of non-ignored pixels whose predicted class is right (NaN if all are ignored)."""
    cm = confusion_matrix(pred, target, num_classes, ignore_index)
    total = int(cm.sum())
    return float(cm.diag().sum()) / total if total else float("nan")


class SegmentationMetric:
    """Streaming metrics over a dataset: ``update`` per batch, ``compute`` once at the end.

        metric = SegmentationMetric(num_classes=5)
        for images, masks in loader:
            metric.update(model(images), masks)   # logits or labels
        metric.compute()   # {"miou", "pixel_accuracy", "mean_accuracy", "iou", "confusion_matrix"}
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        self.cm = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self.cm += confusion_matrix(pred.detach(), target, self.num_classes, self.ignore_index)

    def compute(self) -> dict:
        total = int(self.cm.sum())
        iou = iou_per_class(self.cm)
        return {
            "miou": _nanmean(iou),
            "pixel_accuracy": float(self.cm.diag().sum()) / total if total else float("nan"),
            "mean_accuracy": _nanmean(class_accuracy(self.cm)),
            "iou": iou,
            "confusion_matrix": self.cm.clone(),
        }
