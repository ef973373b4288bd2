"""Chapter 2's figure: bilinear upsampling as a transposed convolution (FCN's "deconvolution")."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["show_bilinear_upsampling"]


def _tent(size: int) -> torch.Tensor:
    """The 1-D bilinear kernel of length ``size``: ``1 - |i - c| / f`` around its centre ``c``.

    ``f = ceil(size / 2)`` is the upsampling factor; ``c = f - 1/2`` for even sizes (the kernels
    of FCN's transposed convolutions, size ``2f``), ``f - 1`` for odd ones. Its outer product with
    itself is :func:`segcourse.models.fcn.bilinear_kernel`.
    """
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    f = (size + 1) // 2
    c = f - 1 if size % 2 else f - 0.5
    return 1 - (torch.arange(size, dtype=torch.float32) - c).abs() / f


def show_bilinear_upsampling(signal, factor: int = 2, large_factor: int = 8):
    """Three panels: the 2-D bilinear kernels for ``factor`` and ``large_factor``, and a 1-D
    ``signal`` upsampled by ``factor`` with a transposed convolution -- one scaled tent per input
    value, ``factor`` samples apart, and their sum."""
    signal = torch.as_tensor(signal, dtype=torch.float32)
    if signal.dim() != 1 or len(signal) < 1:
        raise ValueError("signal must be a non-empty 1-D sequence, got shape "
                         f"{tuple(signal.shape)}")
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for ax, f in zip(axes[:2], (factor, large_factor)):
        t = _tent(2 * f)
        ax.imshow((t[:, None] * t[None, :]).numpy(), cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"kernel for ×{f} ({2 * f} × {2 * f})")
        ax.set_xticks([])
        ax.set_yticks([])
    t = _tent(2 * factor)
    for i, value in enumerate(signal):
        start = factor * i  # input i stamps its tent onto outputs start .. start + 2f - 1
        axes[2].plot(np.arange(start, start + 2 * factor), (value * t).numpy(), "--", lw=1)
    up = F.conv_transpose1d(signal[None, None], t[None, None], stride=factor)[0, 0]
    axes[2].plot(np.arange(len(up)), up.numpy(), "k.-", label="sum = upsampled")
    axes[2].set_title(f"1-D: one scaled tent per input, {factor} apart")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    return fig
