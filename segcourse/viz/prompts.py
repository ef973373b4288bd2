"""Figures of promptable segmentation (chapter 11, Segment Anything): clicks, boxes, the three
masks of an ambiguous click, click-by-click refinement, mIoU per click, "segment everything".

Coordinates follow ``segcourse.models.sam``: a point ``(x, y)`` is a pixel index (column,
row) -- the prompt encoder adds the +0.5 to the pixel's centre -- and ``imshow`` centres pixel
``(row, col)`` at ``(col, row)``, so a point is drawn at ``(x, y)`` unshifted. A box ``(x1,
y1, x2, y2)`` is in the course's continuous convention (``x2 = last column + 1``, as
``InstanceTargets`` and :func:`~segcourse.models.sam_automatic.generate_masks`), so it is
drawn shifted by -0.5 (:func:`~segcourse.viz.detection.draw_boxes`). Labels are SAM's: 1
positive, 0 negative, -1 padding (not drawn).

The look follows the authors' notebooks (segment-anything ``notebooks/predictor_example.ipynb``:
``show_points`` green and red stars, ``show_box`` a green rectangle, ``show_mask`` in
(30, 144, 255); ``automatic_mask_generator_example.ipynb``: ``show_anns`` paints masks largest
first). Where we differ: negative clicks are red crosses, not stars (told apart without
colour), and :func:`amg_figure` reuses :func:`~segcourse.viz.detection.paint_instances`' tab10
colours (they repeat after 10 masks; the authors draw random colours).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from ._checks import image_size
from .detection import draw_boxes, paint_instances
from .masks import _np, no_ticks, overlay, to_numpy_image

__all__ = ["draw_prompts", "prompt_figure", "multimask_figure", "plot_click_curves",
           "click_sequence_figure", "amg_figure"]

MASK_PALETTE = np.array([[0, 0, 0], [30, 144, 255]], dtype=np.uint8)  # SAM demo's blue
POSITIVE, NEGATIVE = "#22c55e", "#ef4444"
CHOSEN = "#f59e0b"  # frame of the mask SAM would show (highest predicted IoU)


# --- checks ------------------------------------------------------------------------------------

def _points(points, labels, name: str = "points") -> tuple[np.ndarray, np.ndarray]:
    """``points [..., 2]`` and ``labels [...]`` (default all positive) as ``[N, 2]``, ``[N]``."""
    if points is None:
        if labels is not None:
            raise ValueError(f"labels given without {name}")
        return np.zeros((0, 2)), np.zeros(0, dtype=np.int64)
    xy = _np(points).astype(np.float64)
    if xy.ndim < 1 or xy.shape[-1] != 2:
        raise ValueError(f"{name} must be [N, 2] pixel coordinates (x, y), got shape {xy.shape}")
    xy = xy.reshape(-1, 2)
    lab = np.ones(len(xy), dtype=np.int64) if labels is None else _np(labels).reshape(-1)
    if len(lab) != len(xy):
        raise ValueError(f"labels must hold one label per point ({len(xy)}), got {len(lab)}")
    if not np.isin(lab, (-1, 0, 1)).all():
        raise ValueError(f"labels must be 1 (positive), 0 (negative) or -1 (padding), got "
                         f"{sorted(set(lab.tolist()) - {-1, 0, 1})}")
    return xy, lab.astype(np.int64)


def _mask(mask, size, name: str) -> np.ndarray:
    """``mask`` as bool ``[H, W]`` of the image's ``size``."""
    m = _np(mask)
    if m.shape != tuple(size):
        raise ValueError(f"{name} must be a mask [H, W] of the image's size {tuple(size)}, got "
                         f"shape {m.shape}")
    return m.astype(bool)


def _score(value, name: str) -> float | None:
    if value is None:
        return None
    v = _np(value)
    if isinstance(value, bool) or v.size != 1 or not np.issubdtype(v.dtype, np.number):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return float(v.reshape(()))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0  # both empty: a perfect match


# --- drawing -----------------------------------------------------------------------------------

def draw_prompts(ax, points=None, labels=None, boxes=None, size: float = 140) -> None:
    """Positive points as green stars, negative as red crosses (padding, label -1, skipped),
    boxes ``[n, 4]`` (x1, y1, x2, y2, continuous) as rectangles; see the module docstring for
    the coordinates."""
    xy, lab = _points(points, labels)
    for kind, colour, marker in ((1, POSITIVE, "*"), (0, NEGATIVE, "X")):
        keep = lab == kind
        if keep.any():
            ax.scatter(xy[keep, 0], xy[keep, 1], s=size, c=colour, marker=marker,
                       edgecolors="white", linewidths=1.0, zorder=3)
    if boxes is not None:
        b = _np(boxes)
        if b.ndim < 1 or b.shape[-1] != 4:
            raise ValueError(f"boxes must be [n, 4] (x1, y1, x2, y2), got shape {b.shape}")
        draw_boxes(ax, b.reshape(-1, 4), POSITIVE, lw=2.0)


def _masked(ax, image, mask, alpha: float = 0.55) -> None:
    ax.imshow(overlay(image, mask.astype(np.int64), MASK_PALETTE, alpha, ignore_index=0),
              interpolation="nearest")


def _row(n: int, side: float = 2.6):
    fig, axes = plt.subplots(1, n, figsize=(side * n, side + 0.4), squeeze=False)
    return fig, axes[0]


def _panel(panel, k: int) -> dict:
    keys = ("title", "mask", "points", "labels", "boxes", "score")
    if isinstance(panel, dict):
        unknown = set(panel) - set(keys)
        if unknown or "mask" not in panel:
            raise ValueError(f"panels[{k}] must have a 'mask' and only the keys {keys}, got "
                             f"{sorted(panel)}")
        return {key: panel.get(key) for key in keys}
    if not isinstance(panel, (tuple, list)) or not 5 <= len(panel) <= 6:
        raise ValueError(f"panels[{k}] must be a dict or a tuple (title, mask, points, labels, "
                         f"boxes[, score]), got {type(panel).__name__} of length "
                         f"{len(panel) if isinstance(panel, (tuple, list)) else '-'}")
    return dict(zip(keys, tuple(panel) + (None,) * (len(keys) - len(panel))))


def prompt_figure(image, panels):
    """One row: per panel the image with its mask overlaid and its prompts drawn, titled with
    its score ("IoU 0.93") when given. A panel is a dict or a tuple ``(title, mask [H, W],
    points, labels, boxes[, score])`` -- e.g. one click / two clicks / a box / box + negative."""
    if not isinstance(panels, (list, tuple)) or len(panels) == 0:
        raise ValueError("panels must be a non-empty list of panels")
    size = image_size(image)
    panels = [_panel(p, k) for k, p in enumerate(panels)]
    fig, axes = _row(len(panels))
    for k, (ax, p) in enumerate(zip(axes, panels)):
        _masked(ax, image, _mask(p["mask"], size, f"panels[{k}] mask"))
        draw_prompts(ax, p["points"], p["labels"], p["boxes"])
        score = _score(p["score"], f"panels[{k}] score")
        title = p["title"] or ""
        ax.set_title(title if score is None else f"{title}\nIoU {score:.2f}", fontsize=10)
    no_ticks(axes)
    fig.tight_layout()
    return fig


def multimask_figure(image, point, masks, iou_scores, target=None):
    """The ambiguity of one click: the M (3) masks SAM returns for ``point`` (x, y), each titled
    with its predicted IoU (and its true IoU with ``target [H, W]``); the mask of highest
    predicted IoU -- the one SAM shows -- is framed."""
    size = image_size(image)
    m = _np(masks)
    if m.ndim != 3 or m.shape[1:] != tuple(size) or len(m) == 0:
        raise ValueError(f"masks must be [M, H, W] with the image's size {tuple(size)}, got "
                         f"shape {m.shape}")
    scores = _np(iou_scores).astype(np.float64).reshape(-1)
    if len(scores) != len(m):
        raise ValueError(f"iou_scores must hold one score per mask ({len(m)}), got "
                         f"{len(scores)}")
    xy, lab = _points(point, None, "point")
    if len(xy) != 1:
        raise ValueError(f"point must be one (x, y), got {len(xy)} points")
    truth = None if target is None else _mask(target, size, "target")
    best = int(scores.argmax())
    fig, axes = _row(len(m))
    for k, ax in enumerate(axes):
        _masked(ax, image, m[k].astype(bool))
        draw_prompts(ax, xy, lab)
        title = f"mask {k + 1}: predicted IoU {scores[k]:.2f}"
        if truth is not None:
            title += f"\ntrue IoU {_iou(m[k].astype(bool), truth):.2f}"
        ax.set_title(title, fontsize=9, fontweight="bold" if k == best else "normal")
        if k == best:
            for spine in ax.spines.values():
                spine.set(color=CHOSEN, linewidth=3)
    no_ticks(axes)
    fig.tight_layout()
    return fig


def plot_click_curves(curves: dict, thresholds=(0.85, 0.9), references: dict | None = None):
    """mIoU after 1..K clicks, one line per setting (``{name: [mIoU per click]}``); dashed
    horizontal lines at the NoC thresholds, dotted ones for ``references`` (``{name: mIoU}``,
    e.g. a Mask R-CNN trained on the same data)."""
    if not isinstance(curves, dict) or not curves:
        raise ValueError("curves must be a non-empty dict {name: mIoU per click}")
    references = {} if references is None else references
    if not isinstance(references, dict):
        raise ValueError(f"references must be a dict {{name: mIoU}}, got "
                         f"{type(references).__name__}")

    def check(values, name):
        v = _np(values).astype(np.float64).reshape(-1)
        if v.size == 0 or not np.isfinite(v).all() or v.min() < 0 or v.max() > 1:
            raise ValueError(f"{name} must be mIoU values in [0, 1] (at least one), got {v}")
        return v

    series = {name: check(v, f"curves[{name!r}]") for name, v in curves.items()}
    levels = {name: check(v, f"references[{name!r}]")[0] for name, v in references.items()}
    marks = check(list(thresholds), "thresholds") if thresholds else []
    k_max = max(len(v) for v in series.values())
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, v in series.items():
        ax.plot(np.arange(1, len(v) + 1), v, marker="o", ms=4, label=name)
    for i, (name, level) in enumerate(levels.items()):
        ax.axhline(level, ls=":", lw=1.5, color=plt.cm.Dark2(i % 8), label=name)
    for t in marks:
        ax.axhline(t, ls="--", lw=0.8, color="0.5")
        ax.text(k_max, t, f" NoC@{t * 100:g}", va="center", ha="left", fontsize=8,
                color="0.4")
    ax.set_xticks(range(1, k_max + 1))
    ax.set_xlim(0.7, k_max + 0.3)
    ax.set_xlabel("number of clicks")
    ax.set_ylabel("mIoU")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def click_sequence_figure(image, target, steps):
    """Click-by-click refinement of one object: the target, then per step ``(mask, points,
    labels, iou)`` the mask after that click with all clicks so far, the newest one ringed
    (the target's outline is drawn on every step)."""
    if not isinstance(steps, (list, tuple)) or len(steps) == 0:
        raise ValueError("steps must be a non-empty list of (mask, points, labels, iou)")
    size = image_size(image)
    truth = None if target is None else _mask(target, size, "target")
    fig, axes = _row(len(steps) + (truth is not None))
    if truth is not None:
        _masked(axes[0], image, truth)
        axes[0].set_title("target", fontsize=10)
    for k, (ax, step) in enumerate(zip(axes[truth is not None:], steps)):
        if not isinstance(step, (tuple, list)) or len(step) != 4:
            raise ValueError(f"steps[{k}] must be (mask, points, labels, iou)")
        mask, points, labels, iou = step
        _masked(ax, image, _mask(mask, size, f"steps[{k}] mask"))
        if truth is not None and truth.any():
            ax.contour(truth.astype(float), levels=[0.5], colors="white", linewidths=0.8,
                       linestyles="--")
        xy, lab = _points(points, labels, f"steps[{k}] points")
        draw_prompts(ax, xy, lab)
        real = np.flatnonzero(lab != -1)
        if len(real):  # the newest click: the last real one
            ax.scatter(*xy[real[-1]], s=420, facecolors="none", edgecolors="yellow",
                       linewidths=2, zorder=4)
        score = _score(iou, f"steps[{k}] iou")
        ax.set_title(f"click {k + 1}" + ("" if score is None else f": IoU {score:.2f}"),
                     fontsize=10)
    no_ticks(axes)
    fig.tight_layout()
    return fig


def amg_figure(image, masks, scores=None, points=None):
    """ "Segment everything": the image, and every generated mask ``[n, H, W]`` in its own
    colour (larger masks first, so small ones stay visible), with the grid ``points [G, 2]``
    that produced them as white dots."""
    size = image_size(image)
    m = _np(masks)
    if m.ndim != 3 or m.shape[1:] != tuple(size):
        raise ValueError(f"masks must be [n, H, W] with the image's size {tuple(size)}, got "
                         f"shape {m.shape}")
    m = m.astype(bool)
    title = f"{len(m)} masks"
    if scores is not None:
        s = _np(scores).astype(np.float64).reshape(-1)
        if len(s) != len(m):
            raise ValueError(f"scores must hold one score per mask ({len(m)}), got {len(s)}")
        if len(s):
            title += f", predicted IoU >= {s.min():.2f}"
    order = np.argsort(-m.sum(axis=(1, 2)), kind="stable")
    picture, _ = paint_instances(image, m[order])
    fig, axes = _row(2, side=3.2)
    axes[0].imshow(to_numpy_image(image), interpolation="nearest")
    axes[0].set_title("image", fontsize=10)
    axes[1].imshow(picture, interpolation="nearest")
    axes[1].set_title(title, fontsize=10)
    if points is not None:
        xy, _ = _points(points, None)
        axes[1].scatter(xy[:, 0], xy[:, 1], s=9, c="white", edgecolors="black",
                        linewidths=0.5, zorder=3)
    no_ticks(axes)
    fig.tight_layout()
    return fig
