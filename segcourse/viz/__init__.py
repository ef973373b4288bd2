"""Figures, one topic per file; every chapter's plotting plumbing lives here (and is tested).

- ``masks``            coloured label maps, overlays, legends, prediction grids
- ``training``         training curves, confusion matrices
- ``tasks``            one scene as every segmentation task; augmented pairs (chapter 1)
- ``upsampling``       bilinear upsampling as a transposed convolution (chapter 2)
- ``gates``            attention-gate maps over their images (chapter 3)
- ``receptive_field``  receptive fields of dilated convolution stacks (chapter 4)
- ``attention``        the cost of attention and token maps (chapter 5)
- ``losses``           loss curves and where each loss makes its errors (chapter 6)
- ``detection``        boxes, RoI sampling, detections, panoptic maps, PQ (chapter 7)
- ``panels``           an image with heat maps or label maps beside it (chapter 8)
- ``refinements``      dense CRF and test-time augmentation, before and after (chapter 8)
- ``comparison``       models side by side: compute, accuracy vs cost, per-class IoU (chapter 9)
- ``queries``          matching, per-layer query maps, what queries learn (chapter 10)
- ``prompts``          clicks and boxes, ambiguous clicks, mIoU per click, segment everything
  (chapter 11)
- ``deploy``           latency per runtime, accuracy vs speed, FLOPs folded away, serving SAM
  (chapter 12)
"""

from .attention import plot_attention_cost, plot_token_maps
from .comparison import (
    plot_accuracy_vs_cost,
    plot_compute_split,
    plot_iou_per_class,
    show_model_predictions,
)
from .deploy import (
    pareto_front,
    plot_accuracy_speed,
    plot_click_latency,
    plot_fold,
    plot_latency,
)
from .detection import (
    counting_figure,
    detections_figure,
    draw_boxes,
    paint_instances,
    paint_panoptic,
    panoptic_figure,
    pipeline_figure,
    pq_example_figure,
    roi_sampling_figure,
    shift_response_figure,
)
from .gates import show_attention_gates
from .losses import plot_boundary_errors, plot_focal_loss, plot_loss_comparison
from .masks import colorize, legend_patches, overlay, show_predictions, to_numpy_image
from .panels import show_labels, show_maps
from .prompts import (
    amg_figure,
    click_sequence_figure,
    draw_prompts,
    multimask_figure,
    plot_click_curves,
    prompt_figure,
)
from .queries import (
    matching_figure,
    plot_cost_matrix,
    plot_layer_maps,
    plot_query_gallery,
    three_tasks_figure,
)
from .receptive_field import plot_receptive_field, receptive_field_extent, receptive_field_map
from .refinements import crf_figure, tta_figure
from .tasks import show_augmented, show_panels, show_tasks
from .training import plot_confusion_matrix, plot_history
from .upsampling import show_bilinear_upsampling

__all__ = [
    "colorize", "overlay", "to_numpy_image", "show_predictions", "legend_patches",
    "plot_history", "plot_confusion_matrix",
    "show_tasks", "show_panels", "show_augmented",
    "show_bilinear_upsampling",
    "show_attention_gates",
    "receptive_field_extent", "receptive_field_map", "plot_receptive_field",
    "plot_attention_cost", "plot_token_maps",
    "plot_focal_loss", "plot_loss_comparison", "plot_boundary_errors",
    "draw_boxes", "paint_instances", "paint_panoptic", "counting_figure",
    "roi_sampling_figure", "shift_response_figure", "pipeline_figure", "detections_figure",
    "panoptic_figure", "pq_example_figure",
    "show_maps", "show_labels", "crf_figure", "tta_figure",
    "plot_compute_split", "plot_accuracy_vs_cost", "plot_iou_per_class",
    "show_model_predictions",
    "plot_cost_matrix", "matching_figure", "plot_layer_maps", "plot_query_gallery",
    "three_tasks_figure",
    "draw_prompts", "prompt_figure", "multimask_figure", "plot_click_curves",
    "click_sequence_figure", "amg_figure",
    "plot_latency", "pareto_front", "plot_accuracy_speed", "plot_fold", "plot_click_latency",
]
