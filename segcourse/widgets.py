"""Interactive explorers for the chapters (ipywidgets), built on pure functions that tests check.

A live widget needs a running kernel, so a chapter shows a static figure made with the same
plotting function first, then the widget in a cell the book does not render.

- :func:`receptive_field_map` -- which input pixels reach one output pixel of a stack of dilated
  3x3 convolutions, and through how many paths; computed by backpropagation, not drawn by hand.
- :func:`plot_receptive_field` -- that map as a figure (holes in grey).
- :func:`dilation_explorer` -- sliders for the dilation rates, redrawing the figure (chapter 4).
- :func:`crf_figure` / :func:`crf_explorer` -- image, ground truth, network and dense-CRF
  prediction; sliders for the CRF's kernel widths, weights and iterations (chapter 8).
- :func:`tta_figure` / :func:`tta_explorer` -- the plain and the test-time-augmented prediction;
  checkboxes for the scales and the flip (chapter 8).
"""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["receptive_field_extent", "receptive_field_map", "plot_receptive_field",
           "dilation_explorer"]


def _check_dilations(dilations: Sequence[int]) -> tuple[int, ...]:
    dilations = tuple(dilations)
    if not dilations or not all(isinstance(d, (int, np.integer)) and d >= 1 for d in dilations):
        raise ValueError(f"dilations must be a non-empty sequence of ints >= 1, got {dilations!r}")
    return tuple(int(d) for d in dilations)


def receptive_field_extent(dilations: Sequence[int], kernel_size: int = 3) -> int:
    """Side of the square window a stack of convolutions sees: 1 + sum_i d_i (k - 1)."""
    return 1 + sum(d * (kernel_size - 1) for d in _check_dilations(dilations))


def receptive_field_map(dilations: Sequence[int], size: int | None = None,
                        kernel_size: int = 3) -> torch.Tensor:
    """Number of paths from each input pixel to the centre output pixel of a conv stack.

    The stack is ``len(dilations)`` convolutions with ``kernel_size`` x ``kernel_size`` kernels of
    ones, dilation ``d_i`` and "same" padding, on a ``size`` x ``size`` input (default: just the
    receptive field, which must fit). We set the gradient of the centre output to 1 and
    backpropagate: through a linear stack of all-ones kernels the gradient that lands on input
    pixel ``p`` is exactly the number of paths from ``p`` to the output, so zeros are the pixels
    the output never sees (the *gridding* holes of repeated rates) -- no drawing by hand.

    Returns a float64 tensor ``[size, size]`` of integer path counts.
    """
    dilations = _check_dilations(dilations)
    extent = receptive_field_extent(dilations, kernel_size)
    size = extent if size is None else int(size)
    if size < extent or size % 2 == 0:
        raise ValueError(f"size must be odd and at least the receptive field ({extent}), got {size}")
    x = torch.zeros(1, 1, size, size, dtype=torch.float64, requires_grad=True)
    weight = torch.ones(1, 1, kernel_size, kernel_size, dtype=torch.float64)
    y = x
    for d in dilations:
        y = F.conv2d(y, weight, padding=d * (kernel_size - 1) // 2, dilation=d)
    one_hot = torch.zeros_like(y)
    one_hot[..., size // 2, size // 2] = 1.0      # d(centre output) / d(output) = one-hot
    (grad,) = torch.autograd.grad(y, x, grad_outputs=one_hot)
    return grad[0, 0]


def plot_receptive_field(dilations: Sequence[int], size: int | None = None, ax=None):
    """Draw :func:`receptive_field_map`: path counts in colour, pixels never seen in grey."""
    paths = receptive_field_map(dilations, size).numpy()
    if ax is None:
        _, ax = plt.subplots(figsize=(3.6, 3.6))
    seen = paths > 0
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.85")   # masked = holes: light grey
    ax.imshow(np.ma.masked_where(~seen, np.log1p(paths)), cmap=cmap, interpolation="nearest")
    extent = receptive_field_extent(dilations)
    corner = (paths.shape[0] - extent) / 2 - 0.5                # outline the receptive field
    ax.add_patch(plt.Rectangle((corner, corner), extent, extent, fill=False, color="k", lw=1))
    ax.set_xticks([]), ax.set_yticks([])
    ax.set_title(f"rates {tuple(dilations)}: {extent}x{extent} receptive field,\n"
                 f"{int(seen.sum())} of {extent * extent} pixels seen", fontsize=9)
    return ax.figure


def dilation_explorer(num_layers: int = 3, max_dilation: int = 8):
    """Sliders for the dilation rate of each 3x3 layer; redraws the receptive field live.

    Returns an ``ipywidgets.VBox``; display it in a notebook with a running kernel.
    """
    import ipywidgets as widgets                  # only needed for the live explorer

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


# --- chapter 8: inference refinements (dense CRF, test-time augmentation) ---------------------
#
# crf_figure / tta_figure draw image | ground truth | network | refined, with each prediction's
# mIoU; crf_explorer / tta_explorer redraw them live from sliders and checkboxes.

__all__ += ["crf_figure", "crf_explorer", "tta_figure", "tta_explorer"]


def _label_row(panels, palette, title_size: int = 9):
    """One row of panels: ``(title, tensor, is_image)``; label maps are coloured with ``palette``."""
    from .viz import colorize, to_numpy_image

    fig, axes = plt.subplots(1, len(panels), figsize=(2.5 * len(panels), 2.9))
    for ax, (title, panel, is_image) in zip(axes, panels):
        ax.imshow(to_numpy_image(panel) if is_image else colorize(panel, palette), interpolation="nearest")
        ax.set_title(title, fontsize=title_size)
        ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    return fig


def _show(fig) -> None:
    """Display a figure inside an ``ipywidgets.Output`` on any backend, then free it."""
    from IPython.display import display

    display(fig)
    plt.close(fig)


def crf_figure(image: torch.Tensor, probs: torch.Tensor, mask: torch.Tensor, palette, **crf_params):
    """Image, ground truth, network prediction and dense-CRF prediction, each with its mIoU.

    ``image`` ``[3, H, W]`` in [0, 1] (scaled to 0-255 for the CRF), ``probs`` ``[K, H, W]`` the
    network's softmax, ``mask`` ``[H, W]``; ``crf_params`` go to :func:`segcourse.crf.dense_crf`.
    """
    from .crf import dense_crf
    from .metrics import mean_iou

    K = probs.shape[0]
    raw = probs.argmax(0)
    refined = dense_crf(image * 255, probs, **crf_params).argmax(0)
    return _label_row([("image", image, True), ("ground truth", mask, False),
                       (f"network, mIoU {mean_iou(raw[None], mask[None], K):.3f}", raw, False),
                       (f"+ dense CRF, mIoU {mean_iou(refined[None], mask[None], K):.3f}", refined, False)],
                      palette)


def crf_explorer(images: torch.Tensor, probs: torch.Tensor, masks: torch.Tensor, palette, **start):
    """Sliders for the dense CRF's iterations, weights and widths on one of ``images`` (live).

    ``images`` ``[N, 3, H, W]`` in [0, 1], ``probs`` ``[N, K, H, W]``, ``masks`` ``[N, H, W]``;
    ``start`` sets sliders' initial values by parameter name (default: ``dense_crf``'s defaults).
    Returns an ``ipywidgets.VBox`` that redraws :func:`crf_figure`.
    """
    import ipywidgets as widgets                  # only needed for the live explorer

    def slider(kind, value, low, high, step, label):
        return kind(value=value, min=low, max=high, step=step, description=label, continuous_update=False)

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
        raise ValueError(f"unknown CRF parameter(s) {sorted(unknown)}; choose from {sorted(controls)}")
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


def tta_figure(model, image: torch.Tensor, mask: torch.Tensor, palette,
               scales: Sequence[float] = (0.75, 1.0, 1.25), flip: bool = True):
    """Image, ground truth, the plain prediction and the TTA prediction, each with its mIoU."""
    from .metrics import mean_iou
    from .tta import tta_predict

    plain = tta_predict(model, image[None], scales=(1.0,), flip=False)[0]
    averaged = tta_predict(model, image[None], scales=scales, flip=flip)[0]
    K = plain.shape[0]
    plain, averaged = plain.argmax(0).cpu(), averaged.argmax(0).cpu()
    views = f"{len(scales)} scale{'s' if len(scales) > 1 else ''}{' x 2 flips' if flip else ''}"
    return _label_row([("image", image, True), ("ground truth", mask, False),
                       (f"plain, mIoU {mean_iou(plain[None], mask[None], K):.3f}", plain, False),
                       (f"TTA {views}, mIoU {mean_iou(averaged[None], mask[None], K):.3f}", averaged, False)],
                      palette)


def tta_explorer(model, images: torch.Tensor, masks: torch.Tensor, palette,
                 scales: Sequence[float] = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)):
    """Tick the scales and the flip to average over and watch the TTA prediction change (live)."""
    import ipywidgets as widgets                  # only needed for the live explorer

    index = widgets.IntSlider(value=0, min=0, max=len(images) - 1, description="image",
                              continuous_update=False)
    boxes = [widgets.Checkbox(value=s == 1.0, description=f"scale {s:g}", indent=False) for s in scales]
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
