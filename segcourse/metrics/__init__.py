"""Metrics, one kind of task per file.

- ``segmentation``  confusion matrix, IoU per class, mIoU, pixel and class accuracy, streaming
- ``boundary``      the boundary band and scores restricted to it
- ``instance``      mask IoU and mask average precision (AP)
- ``panoptic``      panoptic quality (PQ = SQ x RQ)
- ``interactive``   the simulated user's next click, clicks to reach an IoU (NoC, NoF)
"""

from .boundary import boundary_accuracy, boundary_mask, boundary_miou
from .instance import mask_average_precision, mask_iou
from .interactive import clicks_to_reach, next_click, noc
from .panoptic import panoptic_quality
from .segmentation import (
    SegmentationMetric,
    class_accuracy,
    confusion_matrix,
    iou_per_class,
    mean_iou,
    pixel_accuracy,
)

__all__ = ["confusion_matrix", "iou_per_class", "mean_iou", "pixel_accuracy", "class_accuracy",
           "SegmentationMetric", "boundary_mask", "boundary_miou", "boundary_accuracy",
           "mask_iou", "mask_average_precision", "panoptic_quality",
           "next_click", "clicks_to_reach", "noc"]
