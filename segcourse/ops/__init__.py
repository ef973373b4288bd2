"""Generic operators that models build on, one kind per file (torchvision's ``ops`` layout).

- ``boxes``      box area, pairwise IoU, the R-CNN delta encoding, clipping, boxes of masks
- ``nms``        greedy non-maximum suppression, per group with ``batched_nms``
- ``roi_align``  RoIAlign, the bilinear crop-and-resize of Mask R-CNN
- ``poolers``    multi-scale RoIAlign: each box read from the pyramid level of its size
- ``matching``   candidates matched to ground truth by IoU, balanced positive/negative sampling
- ``misc``       frozen BatchNorm for detection backbones
- ``hungarian``  bipartite matching: the one-to-one assignment of least total cost
- ``point_sampling``  maps read at points; PointRend's choice of the most uncertain points
- ``deformable_attention``  multi-scale deformable attention (Deformable DETR), via grid_sample
"""

from .boxes import (
    BBOX_CLIP,
    box_area,
    box_iou,
    clip_boxes,
    decode_boxes,
    encode_boxes,
    masks_to_boxes,
    remove_small_boxes,
)
from .deformable_attention import MultiScaleDeformableAttention, multi_scale_deformable_attention
from .hungarian import hungarian
from .matching import BACKGROUND, IGNORE, match_boxes, sample_balanced
from .misc import FrozenBatchNorm2d, convert_frozen_batchnorm
from .nms import batched_nms, nms
from .point_sampling import point_sample, uncertain_points
from .poolers import MultiScaleRoIAlign
from .roi_align import as_rois, roi_align

__all__ = ["box_area", "box_iou", "encode_boxes", "decode_boxes", "clip_boxes",
           "remove_small_boxes", "masks_to_boxes", "nms", "batched_nms", "roi_align", "as_rois",
           "BBOX_CLIP"]
__all__ += ["MultiScaleRoIAlign", "match_boxes", "sample_balanced", "BACKGROUND", "IGNORE",
            "FrozenBatchNorm2d", "convert_frozen_batchnorm"]
__all__ += ["hungarian", "point_sample", "uncertain_points", "MultiScaleDeformableAttention",
            "multi_scale_deformable_attention"]
