"""Chapter 3's figure: an Attention U-Net's gate coefficients over the images they gate."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

from ._checks import check_batch
from .masks import _np, to_numpy_image

__all__ = ["show_attention_gates"]


def _resolution(level: int) -> str:
    return "full-resolution" if level == 0 else f"1/{2 ** level}-resolution"


def show_attention_gates(images: torch.Tensor, attention_maps, masks=None,
                         levels=(0, 1, 2), ignore_index: int = 255):
    """One row per image: the image, then the coefficients ``alpha`` of the chosen gate levels.

    ``attention_maps`` is :attr:`AttentionUNet.attention_maps` after a forward pass on
    ``images`` ``[N, 3, H, W]``: one ``[N, 1, h, w]`` tensor per level, finest first. Each map is
    drawn over the image's own pixel grid, whatever its resolution, with a shared 0-1 colour
    scale; ``masks`` ``[N, H, W]``, when given, add the ground-truth outlines in white
    (``ignore_index`` pixels draw none).
    """
    images = torch.as_tensor(images)
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [N, 3, H, W], got {tuple(images.shape)}")
    if not levels or max(levels) >= len(attention_maps) or min(levels) < 0:
        raise ValueError(f"levels {tuple(levels)} must index the {len(attention_maps)} maps")
    n, (H, W) = len(images), images.shape[-2:]
    for level in levels:
        if len(attention_maps[level]) != n:
            raise ValueError(f"attention_maps[{level}] holds {len(attention_maps[level])} maps "
                             f"for {n} images")
    if masks is not None:
        check_batch(images, {"masks": masks})
    cols = 1 + len(levels)
    fig, axes = plt.subplots(n, cols, figsize=(2.4 * cols, 2.35 * n), squeeze=False)
    extent = (-0.5, W - 0.5, H - 0.5, -0.5)  # every level over the image's pixels
    im = None
    for r in range(n):
        axes[r, 0].imshow(to_numpy_image(images[r]))
        for c, level in enumerate(levels, start=1):
            alpha = _np(attention_maps[level][r]).reshape(attention_maps[level].shape[-2:])
            im = axes[r, c].imshow(alpha, cmap="viridis", vmin=0, vmax=1, extent=extent)
            if masks is not None:
                mask = np.ma.masked_equal(_np(masks[r]), ignore_index)
                top = int(mask.max()) if mask.count() else 0
                if top > 0:  # an outline between every pair of neighbouring labels
                    axes[r, c].contour(mask, levels=np.arange(top) + 0.5, colors="white",
                                       linewidths=0.6)
    titles = ["image"] + [f"α, {_resolution(level)} skip" for level in levels]
    for ax, title in zip(axes[0], titles):
        ax.set_title(title, fontsize=10)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes, shrink=0.5, label="attention coefficient α")
    return fig
