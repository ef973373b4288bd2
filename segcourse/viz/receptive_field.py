"""Which input pixels reach one output pixel of a stack of dilated convolutions (chapter 4).

:func:`receptive_field_map` computes it by backpropagation, not by drawing;
:func:`plot_receptive_field` shows it, holes (the *gridding* of repeated rates) in grey.
"""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["receptive_field_extent", "receptive_field_map", "plot_receptive_field"]


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
        raise ValueError(f"size must be odd and at least the receptive field ({extent}), "
                         f"got {size}")
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
