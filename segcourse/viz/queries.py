"""Figures of mask classification (chapter 10): matching, per-layer query maps, what queries learn.

A mask-classification model (``segcourse.models.mask2former``, ``segcourse.models.eomt``)
predicts a set of (class, mask) pairs, one per query; these figures show which query a
bipartite matching gave each object, how one query's attention and mask change over the decoder
layers, and what each query predicts on average over many images.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from ._checks import image_size
from .detection import paint_instances, paint_panoptic
from .masks import _np, colorize, draw_grid, no_ticks, to_numpy_image

__all__ = ["plot_cost_matrix", "matching_figure", "plot_layer_maps", "plot_query_gallery",
           "three_tasks_figure"]


def _matrix(x, name: str, dims: int) -> np.ndarray:
    x = _np(x).astype(float)
    if x.ndim != dims:
        raise ValueError(f"{name} must have {dims} dimensions, got shape {x.shape}")
    return x


def plot_cost_matrix(cost, rows, cols, row_label: str = "query", col_label: str = "object",
                     col_names=None, ax=None):
    """The ``[Q, M]`` matching cost as a heat map; the matched pairs ``(rows[k], cols[k])``
    are circled."""
    cost = _matrix(cost, "cost", 2)
    rows, cols = np.asarray(rows, dtype=int).ravel(), np.asarray(cols, dtype=int).ravel()
    if rows.shape != cols.shape:
        raise ValueError(f"rows and cols must have the same length, got {rows.size} and "
                         f"{cols.size}")
    if rows.size and (rows.max() >= cost.shape[0] or cols.max() >= cost.shape[1]
                      or min(rows.min(), cols.min()) < 0):
        raise ValueError(f"matched pairs must index the {cost.shape[0]} x {cost.shape[1]} cost")
    if ax is None:
        width = min(1.2 + 0.45 * cost.shape[1], 7.5)
        fig, ax = plt.subplots(figsize=(width, min(1.0 + 0.22 * cost.shape[0], 7.5)))
    # a few very costly pairs (a stuff mask against an object) would flatten the colour scale
    image = ax.imshow(cost, cmap="viridis_r", aspect="auto", interpolation="nearest",
                      vmax=float(np.percentile(cost, 75)) if cost.size else None)
    ax.scatter(cols, rows, s=90, facecolors="none", edgecolors="w", linewidths=1.6)
    ax.set_xlabel(col_label)
    ax.set_ylabel(row_label)
    ax.set_xticks(range(cost.shape[1]))
    ax.set_xticklabels(col_names if col_names is not None else range(cost.shape[1]),
                       rotation=45 if col_names is not None else 0, ha="right"
                       if col_names is not None else "center", fontsize=8)
    ax.figure.colorbar(image, ax=ax, label="cost (lower is better)", fraction=0.08,
                       extend="max")
    ax.set_title("matching cost; circles: the assignment", fontsize=10)
    return ax.figure


def matching_figure(image, target_masks, names, pred_masks, rows, cols, pred_names=None):
    """One column per object: its ground-truth mask (top) and its matched query's (bottom).

    ``target_masks [M, H, W]`` and ``names`` (M strings) are the objects; ``pred_masks
    [Q, H, W]`` the queries' masks (probabilities or booleans); ``(rows, cols)`` the matching
    (query ``rows[k]`` took object ``cols[k]``); ``pred_names`` (Q strings) titles the queries.
    """
    H, W = image_size(image)
    target_masks = _matrix(target_masks, "target_masks", 3)
    pred_masks = _matrix(pred_masks, "pred_masks", 3)
    for name, m in (("target_masks", target_masks), ("pred_masks", pred_masks)):
        if m.shape[1:] != (H, W):
            raise ValueError(f"{name} must be [n, {H}, {W}] like the image, got {m.shape}")
    if len(names) != len(target_masks):
        raise ValueError(f"names must name the {len(target_masks)} objects, got {len(names)}")
    order = np.argsort(np.asarray(cols, dtype=int))
    rows = np.asarray(rows, dtype=int)[order]
    cols = np.asarray(cols, dtype=int)[order]
    n = len(cols)
    if n == 0:
        raise ValueError("the matching is empty: nothing to show")
    fig, axes = plt.subplots(2, n, figsize=(1.7 * n, 4.1), squeeze=False)
    for k, (q, m) in enumerate(zip(rows, cols)):
        top, _ = paint_instances(image, target_masks[m:m + 1] > 0.5)
        axes[0, k].imshow(top)
        axes[0, k].set_title(f"object {m}\n{names[m]}", fontsize=8)
        axes[1, k].imshow(to_numpy_image(image) * 0.35)
        axes[1, k].imshow(pred_masks[q], cmap="magma", vmin=0, vmax=1, alpha=0.75)
        title = f"query {q}" + (f"\n{pred_names[q]}" if pred_names is not None else "")
        axes[1, k].set_title(title, fontsize=8)
    no_ticks(axes)
    fig.tight_layout()
    return fig


def plot_layer_maps(image, rows: dict, titles=None, point=None):
    """A grid: one row per entry of ``rows`` (name -> L maps), one column per layer.

    A row's maps are a tensor ``[L, h, w]`` or a list of L ``[h_l, w_l]`` maps of different
    sizes (a decoder's levels); each is upsampled to the image and drawn over it -- e.g. one
    query's cross-attention and its mask at every decoder layer. ``titles`` names the columns.
    """
    H, W = image_size(image)
    if not rows:
        raise ValueError("rows must hold at least one name -> [L, h, w] maps")
    maps = {}
    for name, m in rows.items():
        layers = [_matrix(x, f"rows[{name!r}][{i}]", 2) for i, x in enumerate(m)]
        maps[name] = [F.interpolate(torch.from_numpy(x)[None, None].float(), size=(H, W),
                                    mode="nearest")[0, 0].numpy() for x in layers]
    layers = {len(m) for m in maps.values()}
    if len(layers) != 1:
        raise ValueError(f"every row needs the same number of layers, got {sorted(layers)}")
    L = layers.pop()
    if titles is not None and len(titles) != L:
        raise ValueError(f"titles must name the {L} columns, got {len(titles)}")
    fig, axes = plt.subplots(len(maps), L, figsize=(1.6 * L, 1.75 * len(maps) + 0.2),
                             squeeze=False)
    for r, (name, up) in enumerate(maps.items()):
        for c in range(L):
            ax = axes[r, c]
            ax.imshow(to_numpy_image(image) * 0.4)
            hi = up[c].max()
            ax.imshow(up[c], cmap="magma", vmin=0, vmax=hi if hi > 0 else 1, alpha=0.75)
            if r == 0 and titles is not None:
                ax.set_title(titles[c], fontsize=8)
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
            if point is not None:
                ax.plot([point[1]], [point[0]], "c+", ms=7)
    no_ticks(axes)  # the row names (y labels) stay
    fig.tight_layout()
    return fig


def plot_query_gallery(mean_masks, titles, columns: int = 8):
    """Each query's average mask over many images (``mean_masks [Q, H, W]``), titled by
    ``titles`` (Q strings, e.g. the class the query predicts most often)."""
    mean_masks = _matrix(mean_masks, "mean_masks", 3)
    Q = len(mean_masks)
    if len(titles) != Q:
        raise ValueError(f"titles must name the {Q} queries, got {len(titles)}")
    columns = min(columns, Q)
    rows = math.ceil(Q / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.25 * columns, 1.45 * rows),
                             squeeze=False)
    for q, ax in enumerate(axes.flat):
        if q < Q:
            ax.imshow(mean_masks[q], cmap="magma", vmin=0, vmax=1)
            ax.set_title(titles[q], fontsize=7)
        else:
            ax.axis("off")
    no_ticks(axes)
    fig.tight_layout()
    return fig


def three_tasks_figure(images, masks, semantic, segments, palette, min_score: float = 0.5):
    """One row per image: the image, its ground truth, and the three answers of one model --
    the semantic map, the instances with score >= ``min_score`` (one colour each) and the
    panoptic map (class colours, white segment borders, void black).

    ``images [N, 3, H, W]``, ``masks`` and ``semantic`` ``[N, H, W]``, ``segments`` per image
    a dict with ``masks``, ``scores`` and ``panoptic [H, W, 2]`` (a model's ``segment``).
    """
    N, H, W = len(images), *image_size(images[0])
    for name, x in (("masks", masks), ("semantic", semantic)):
        if tuple(x.shape) != (N, H, W):
            raise ValueError(f"{name} must be [{N}, {H}, {W}] like the images, got "
                             f"{tuple(x.shape)}")
    if len(segments) != N or any(k not in s for s in segments
                                 for k in ("masks", "scores", "panoptic")):
        raise ValueError(f"segments must hold {N} dicts with 'masks', 'scores', 'panoptic'")
    rows = []
    for image, mask, sem, seg in zip(images, masks, semantic, segments):
        keep = seg["scores"] >= min_score
        instances, _ = paint_instances(image, seg["masks"][keep])
        panoptic = paint_panoptic(seg["panoptic"][..., 0], seg["panoptic"][..., 1], palette)
        rows.append([("image", to_numpy_image(image)), ("truth", colorize(mask, palette)),
                     ("semantic", colorize(sem, palette)),
                     (f"instances (score ≥ {min_score:g})", instances),
                     ("panoptic", panoptic)])
    fig, axes = plt.subplots(N, 5, figsize=(8.0, 1.65 * N + 0.3), squeeze=False)
    draw_grid(axes, rows, title_size=8)
    fig.tight_layout()
    return fig
