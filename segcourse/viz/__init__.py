"""Figures, one topic per file; every chapter's plotting plumbing lives here (and is tested).

- ``masks``            coloured label maps, overlays, legends, prediction grids
- ``training``         training curves, confusion matrices
- ``receptive_field``  receptive fields of dilated convolution stacks (chapter 4)
- ``refinements``      dense CRF and test-time augmentation, before and after (chapter 8)
"""

from .masks import colorize, legend_patches, overlay, show_predictions, to_numpy_image
from .panels import show_labels, show_maps
from .receptive_field import plot_receptive_field, receptive_field_extent, receptive_field_map
from .refinements import crf_figure, tta_figure
from .training import plot_confusion_matrix, plot_history

__all__ = ["colorize", "overlay", "to_numpy_image", "show_predictions", "legend_patches",
           "plot_history", "plot_confusion_matrix", "receptive_field_extent",
           "receptive_field_map", "plot_receptive_field", "crf_figure", "tta_figure"]

from .gates import show_attention_gates  # chapter 3
from .tasks import show_augmented, show_panels, show_tasks  # chapter 1
from .upsampling import show_bilinear_upsampling  # chapter 2

__all__ += ["show_tasks", "show_panels", "show_augmented"]
__all__ += ["show_bilinear_upsampling", "show_attention_gates"]

from .attention import plot_attention_cost, plot_token_maps  # chapter 5  # noqa: E402

__all__ += ["plot_attention_cost", "plot_token_maps"]

from .detection import (  # chapter 7  # noqa: E402
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

__all__ += ["draw_boxes", "paint_instances", "paint_panoptic", "counting_figure",
            "roi_sampling_figure", "shift_response_figure", "pipeline_figure",
            "detections_figure", "panoptic_figure", "pq_example_figure"]

from .losses import (  # chapter 6  # noqa: E402
    plot_boundary_errors,
    plot_focal_loss,
    plot_loss_comparison,
)

__all__ += ["plot_focal_loss", "plot_loss_comparison", "plot_boundary_errors"]

__all__ += ["show_maps", "show_labels"]  # panels (chapter 8)

from .comparison import (  # chapter 9  # noqa: E402
    plot_accuracy_vs_cost,
    plot_compute_split,
    plot_iou_per_class,
    show_model_predictions,
)

__all__ += ["plot_compute_split", "plot_accuracy_vs_cost", "plot_iou_per_class",
            "show_model_predictions"]
