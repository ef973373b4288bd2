"""Interactive explorers for the chapters (ipywidgets), redrawing the static figures of
:mod:`segcourse.viz`, which tests check.

A live widget needs a running kernel, so a chapter shows the static figure first, then the
widget in a cell the book does not render.

- :func:`dilation_explorer` -- sliders for the dilation rates, redrawing the figure (chapter 4).
- :func:`crf_explorer` -- :func:`~segcourse.viz.crf_figure` with sliders for the CRF's kernel
  widths, weights and iterations (chapter 8).
- :func:`tta_explorer` -- :func:`~segcourse.viz.tta_figure` with checkboxes for the scales and the
  flip (chapter 8).
"""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import torch

from .viz import crf_figure, plot_receptive_field, receptive_field_extent, tta_figure
from .viz._checks import check_batch

__all__ = ["dilation_explorer", "crf_explorer", "tta_explorer"]


def _show(fig) -> None:
    """Display a figure inside an ``ipywidgets.Output`` on any backend, then free it."""
    from IPython.display import display

    display(fig)
    plt.close(fig)


def _check_explorer_inputs(images, masks) -> None:
    """At least one image, and one mask of its size per image (the slider indexes both)."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or len(images) == 0:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a non-empty tensor [N, 3, H, W], got {got}")
    check_batch(images, {"masks": masks})


def dilation_explorer(num_layers: int = 3, max_dilation: int = 8):
    """Sliders for the dilation rate of each 3x3 layer; redraws the receptive field live.

    Returns an ``ipywidgets.VBox``; display it in a notebook with a running kernel.
    """
    import ipywidgets as widgets  # only needed for the live explorer

    if num_layers < 1 or max_dilation < 1:
        raise ValueError("num_layers and max_dilation must be >= 1")
    sliders = [widgets.IntSlider(value=2, min=1, max=max_dilation, description=f"layer {i + 1}",
                                 continuous_update=False) for i in range(num_layers)]
    # a fixed canvas for the largest setting, so the picture does not jump as rates change
    size = receptive_field_extent([max_dilation] * num_layers)
    out = widgets.Output()

    def redraw(*_):
        with out:
            out.clear_output(wait=True)
            _show(plot_receptive_field([s.value for s in sliders], size=size))

    for s in sliders:
        s.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox(sliders[:3]), *([widgets.HBox(sliders[3:])]
                                                      if num_layers > 3 else []), out])


def crf_explorer(images: torch.Tensor, probs: torch.Tensor, masks: torch.Tensor, palette, **start):
    """Sliders for the dense CRF's iterations, weights and widths on one of ``images`` (live).

    ``images`` ``[N, 3, H, W]`` in [0, 1], ``probs`` ``[N, K, H, W]``, ``masks`` ``[N, H, W]``;
    ``start`` sets sliders' initial values by parameter name (default: ``dense_crf``'s defaults).
    Returns an ``ipywidgets.VBox`` that redraws :func:`crf_figure`.
    """
    import ipywidgets as widgets  # only needed for the live explorer

    _check_explorer_inputs(images, masks)
    if not isinstance(probs, torch.Tensor) or probs.dim() != 4 or len(probs) != len(images):
        got = tuple(probs.shape) if isinstance(probs, torch.Tensor) else type(probs).__name__
        raise ValueError(f"probs must be [N, K, H, W] with one map per image "
                         f"(N = {len(images)}), got {got}")

    def slider(kind, value, low, high, step, label):
        return kind(value=value, min=low, max=high, step=step, description=label,
                    continuous_update=False)

    controls = {
        "index": slider(widgets.IntSlider, 0, 0, len(images) - 1, 1, "image"),
        "iterations": slider(widgets.IntSlider, 5, 0, 15, 1, "iterations"),
        "w_gaussian": slider(widgets.FloatSlider, 3.0, 0.0, 10.0, 0.5, "w smooth"),
        "theta_gamma": slider(widgets.FloatSlider, 3.0, 0.5, 10.0, 0.5, "θγ (px)"),
        "w_bilateral": slider(widgets.FloatSlider, 10.0, 0.0, 30.0, 1.0, "w appear"),
        "theta_alpha": slider(widgets.FloatSlider, 80.0, 2.0, 160.0, 2.0, "θα (px)"),
        "theta_beta": slider(widgets.FloatSlider, 13.0, 1.0, 80.0, 1.0, "θβ (RGB)"),
    }
    unknown = set(start) - set(controls)
    if unknown:
        raise ValueError(f"unknown CRF parameter(s) {sorted(unknown)}; "
                         f"choose from {sorted(controls)}")
    for name, value in start.items():
        controls[name].value = value
    out = widgets.Output()

    def redraw(*_):
        params = {name: c.value for name, c in controls.items()}
        index = params.pop("index")
        with out:
            out.clear_output(wait=True)
            _show(crf_figure(images[index], probs[index], masks[index], palette, **params))

    for control in controls.values():
        control.observe(redraw, names="value")
    redraw()
    column = list(controls.values())
    return widgets.VBox([widgets.HBox([widgets.VBox(column[:4]), widgets.VBox(column[4:])]), out])


def tta_explorer(model, images: torch.Tensor, masks: torch.Tensor, palette,
                 scales: Sequence[float] = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)):
    """Tick the scales and the flip to average over and watch the TTA prediction change (live)."""
    import ipywidgets as widgets  # only needed for the live explorer

    _check_explorer_inputs(images, masks)
    index = widgets.IntSlider(value=0, min=0, max=len(images) - 1, description="image",
                              continuous_update=False)
    boxes = [widgets.Checkbox(value=s == 1.0, description=f"scale {s:g}", indent=False)
             for s in scales]
    flip = widgets.Checkbox(value=False, description="flip", indent=False)
    out = widgets.Output()

    def redraw(*_):
        chosen = [s for s, box in zip(scales, boxes) if box.value] or [1.0]
        with out:
            out.clear_output(wait=True)
            _show(tta_figure(model, images[index.value], masks[index.value], palette,
                             scales=chosen, flip=flip.value))

    for control in (index, flip, *boxes):
        control.observe(redraw, names="value")
    redraw()
    return widgets.VBox([index, widgets.HBox(boxes + [flip]), out])
