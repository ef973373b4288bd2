"""Models side by side (chapter 9): where the compute goes, accuracy against cost, per-class IoU,
and every model's predictions on the same images.

``rows`` are the dicts of :func:`segcourse.profiling.compare_models`: ``"model"``, ``"params"``,
``"gflops"``, ``"latency_ms"``, ``"miou"`` and ``"iou"`` (one IoU per class).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

from ._checks import check_batch
from .masks import colorize, draw_grid, legend_patches, to_numpy_image

__all__ = ["plot_compute_split", "plot_accuracy_vs_cost", "plot_iou_per_class",
           "show_model_predictions"]

# the three costs of plot_accuracy_vs_cost: row key, axis label, scale of the value
COSTS = (("params", "parameters (millions)", 1e-6),
         ("gflops", "GFLOPs at 256 x 256", 1.0),
         ("latency_ms", "CPU latency at 256 x 256 (ms)", 1.0))


def _check_rows(rows, keys) -> None:
    if not rows:
        raise ValueError("rows must be a non-empty list of compare_models rows")
    for row in rows:
        missing = [key for key in keys if key not in row]
        if missing:
            raise ValueError(f"rows: {row.get('model', row)!r} lacks {missing}")


def plot_compute_split(split: dict, size: tuple[int, int] = (256, 256)):
    """Stacked horizontal bars, one per model: ``split[name] = (encoder, decoder)`` GFLOPs."""
    if not split or any(len(parts) != 2 for parts in split.values()):
        raise ValueError("split must map each model name to (encoder, decoder) GFLOPs")
    names = list(split)
    encoder = [split[n][0] for n in names]
    decoder = [split[n][1] for n in names]
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(names) + 0.7))
    y = np.arange(len(names))
    ax.barh(y, encoder, color="#4c72b0", label="encoder")
    ax.barh(y, decoder, left=encoder, color="#dd8452", label="decoder")
    ax.set_yticks(y, names)
    ax.invert_yaxis()                                    # the first model on top
    ax.set_xlabel(f"GFLOPs for one {size[0]} x {size[1]} image")
    ax.legend(loc="upper right")
    ax.set_title("where the compute goes")
    fig.tight_layout()
    return fig


def plot_accuracy_vs_cost(rows, below=()):
    """Validation mIoU against parameters, GFLOPs and CPU latency: three log-x panels.

    Each model is a dot labelled with its name; names in ``below`` are written under their dot
    instead of above it, for neighbours whose labels would collide.
    """
    _check_rows(rows, ("model", "miou") + tuple(key for key, _, _ in COSTS))
    fig, axes = plt.subplots(1, len(COSTS), figsize=(14, 4.2), sharey=True)
    colors = plt.get_cmap("tab10")(np.arange(len(rows)) % 10)
    for ax, (key, label, scale) in zip(axes, COSTS):
        for row, color in zip(rows, colors):
            x = row[key] * scale
            ax.scatter(x, row["miou"], s=50, color=color)
            offset = (5, -11) if row["model"] in below else (5, 4)
            ax.annotate(row["model"], (x, row["miou"]), fontsize=8,
                        textcoords="offset points", xytext=offset)
        ax.set(xscale="log", xlabel=label)
        ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))   # 1, 2, 5, 10, 20, ...
        ax.xaxis.set_major_formatter(ScalarFormatter())          # written plainly
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.margins(x=0.15)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation mIoU")
    fig.suptitle("accuracy after the same training budget, against size, compute and latency")
    fig.tight_layout()
    return fig


def plot_iou_per_class(rows, classes):
    """A heat map of validation IoU, one row per model and one column per class, values written."""
    _check_rows(rows, ("model", "iou"))
    iou = np.array([row["iou"] for row in rows], dtype=float)
    if iou.shape[1] != len(classes):
        raise ValueError(f"rows have {iou.shape[1]} IoUs per model but classes names "
                         f"{len(classes)}")
    fig, ax = plt.subplots(figsize=(7.5, 0.35 * len(rows) + 1.3))
    image = ax.imshow(iou, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), [row["model"] for row in rows])
    for (i, j), value in np.ndenumerate(iou):            # dark cells get white text
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8,
                color="white" if value < 0.6 else "black")
    fig.colorbar(image, ax=ax, label="IoU")
    ax.set_title("validation IoU per class")
    fig.tight_layout()
    return fig


def show_model_predictions(images, masks, preds: dict, palette, classes=None,
                           panel: float = 1.45):
    """One row per image: the image, its ground truth, then each model's labels.

    ``images`` ``[N, 3, H, W]``, ``masks`` ``[N, H, W]``, ``preds`` ``{model name: [N, H, W]}``;
    small panels (``panel`` inches) so that many models fit across the page.
    """
    if not isinstance(preds, dict) or not preds:
        raise ValueError("preds must be a non-empty dict {model name: labels [N, H, W]}")
    check_batch(images, {"masks": masks})
    for name, labels in preds.items():
        if tuple(labels.shape) != tuple(masks.shape):
            raise ValueError(f"preds[{name!r}] has shape {tuple(labels.shape)}, "
                             f"expected the masks' {tuple(masks.shape)}")
    columns = [("image", None), ("ground truth", masks), *preds.items()]
    fig, axes = plt.subplots(len(images), len(columns), squeeze=False,
                             figsize=(panel * len(columns), 1.5 * len(images) + 0.3))
    draw_grid(axes, [[(title, to_numpy_image(images[i]) if labels is None
                       else colorize(labels[i], palette)) for title, labels in columns]
                     for i in range(len(images))], title_size=8)
    if classes is not None:
        fig.legend(handles=legend_patches(classes, palette), loc="lower center",
                   ncol=len(classes), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 if classes is not None else 0, 1, 1))
    return fig
