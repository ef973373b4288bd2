"""Interactive explorers for the chapters (ipywidgets), built on pure functions that tests check.

A live widget needs a running kernel, so a chapter shows a static figure made with the same
plotting function first, then the widget in a cell the book does not render.

- :func:`receptive_field_map` -- which input pixels reach one output pixel of a stack of dilated
  3x3 convolutions, and through how many paths; computed by backpropagation, not drawn by hand.
- :func:`plot_receptive_field` -- that map as a figure (holes in grey).
- :func:`dilation_explorer` -- sliders for the dilation rates, redrawing the figure.
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
    side = paths.shape[0]
    ax.set_xticks([]), ax.set_yticks([])
    ax.set_title(f"rates {tuple(dilations)}: {side}x{side} window,\n"
                 f"{int(seen.sum())} of {side * side} pixels seen", fontsize=9)
    return ax.figure


def dilation_explorer(num_layers: int = 3, max_dilation: int = 8):
    """Sliders for the dilation rate of each 3x3 layer; redraws the receptive field live.

    Returns an ``ipywidgets.VBox``; display it in a notebook with a running kernel.
    """
    import ipywidgets as widgets                  # only needed for the live explorer
    from IPython.display import display

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
            fig = plot_receptive_field([s.value for s in sliders], size=size)
            display(fig)
            plt.close(fig)                        # shown once, by display, not again by pyplot

    for s in sliders:
        s.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox(sliders[:3]), *([widgets.HBox(sliders[3:])]
                                                      if num_layers > 3 else []), out])
