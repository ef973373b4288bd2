"""Figures of chapter 5 (transformers): what attention costs, and values on a token grid.

- :func:`plot_attention_cost` -- forward GFLOPs and attention memory against the image side, on
  log axes, one curve per model (the numbers are computed in the chapter, not here);
- :func:`plot_token_maps` -- one value per token of an ``H x W`` grid, maps side by side (e.g.
  the output norms of a plain MLP and of Mix-FFN fed identical tokens).
"""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np

from .masks import _np

__all__ = ["plot_attention_cost", "plot_token_maps"]


def _curves(name: str, curves, n: int) -> dict[str, np.ndarray]:
    """``{label: values}`` with ``n`` positive values each, as float arrays (log axes)."""
    if not isinstance(curves, Mapping) or not curves:
        raise ValueError(f"{name} must be a non-empty dict {{label: values}}, "
                         f"got {type(curves).__name__}")
    out = {}
    for label, values in curves.items():
        values = _np(values).astype(np.float64).ravel()
        if values.shape != (n,):
            raise ValueError(f"{name}[{label!r}] has {values.size} values for {n} image sides")
        if not (values > 0).all():
            raise ValueError(f"{name}[{label!r}] must be positive (the axis is logarithmic)")
        out[str(label)] = values
    return out


def plot_attention_cost(sides, gflops, mib, memory_title: str = "attention memory per layer"):
    """Two log-scale panels against the image side: forward GFLOPs, and memory in MiB.

    ``sides`` are image sides in pixels; ``gflops`` and ``mib`` map a curve label to one value
    per side. Returns the figure.
    """
    sides = _np(sides).astype(np.float64).ravel()
    if sides.size < 2 or not (sides > 0).all():
        raise ValueError(f"sides must hold at least two positive image sides, got {sides}")
    panels = [(_curves("gflops", gflops, sides.size), "GFLOPs per image",
               "forward cost of the encoder"),
              (_curves("mib", mib, sides.size), "MiB per layer, float32", memory_title)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, (curves, ylabel, title) in zip(axes, panels):
        for label, values in curves.items():
            ax.plot(sides, values, marker="o", label=label)
        ax.set(xlabel="image side (pixels)", ylabel=ylabel, yscale="log", title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_token_maps(maps, cmap: str = "viridis", size: float = 3.2):
    """Each ``[H, W]`` map of ``{title: map}`` drawn as an image, side by side, without axes.

    Every map keeps its own colour scale: the point is the pattern inside each map (which
    tokens differ), not a comparison of magnitudes between them.
    """
    if not isinstance(maps, Mapping) or not maps:
        raise ValueError(f"maps must be a non-empty dict {{title: [H, W] map}}, "
                         f"got {type(maps).__name__}")
    arrays = {str(title): _np(m).astype(np.float64) for title, m in maps.items()}
    for title, m in arrays.items():
        if m.ndim != 2:
            raise ValueError(f"maps[{title!r}] must be [H, W], got shape {m.shape}")
    fig, axes = plt.subplots(1, len(arrays), figsize=(size * len(arrays), size * 0.95),
                             squeeze=False)
    for ax, (title, m) in zip(axes[0], arrays.items()):
        ax.imshow(m, cmap=cmap, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.set_axis_off()
    fig.tight_layout()
    return fig
