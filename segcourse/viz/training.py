"""Training curves and confusion matrices."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from .masks import _np

__all__ = ["plot_history", "plot_confusion_matrix"]


def plot_history(history, title: str | None = None):
    """Training loss (and validation loss / mIoU when present) per epoch."""
    has_val = bool(history["val_miou"])
    fig, axes = plt.subplots(1, 2 if has_val else 1, figsize=(9 if has_val else 4.5, 3.2),
                             squeeze=False)
    ax = axes[0, 0]
    ax.plot(history["epoch"], history["train_loss"], marker="o", label="train")
    if history["val_loss"]:
        ax.plot(history["epoch"], history["val_loss"], marker="o", label="validation")
    ax.set(xlabel="epoch", ylabel="loss", title="loss")
    ax.legend()
    if has_val:
        ax = axes[0, 1]
        ax.plot(history["epoch"], history["val_miou"], marker="o", color="tab:green")
        ax.set(xlabel="epoch", ylabel="mIoU", title="validation mIoU", ylim=(0, 1))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_confusion_matrix(cm, classes=None, normalize: bool = True, ax=None):
    """Rows = ground truth, columns = prediction; row-normalised (recall) by default."""
    cm = _np(cm).astype(np.float64)
    values = cm / np.maximum(cm.sum(1, keepdims=True), 1) if normalize else cm
    if ax is None:
        _, ax = plt.subplots(figsize=(0.6 * len(cm) + 2.5, 0.6 * len(cm) + 2))
    im = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    names = classes if classes is not None else [str(i) for i in range(len(cm))]
    ax.set_xticks(range(len(cm)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(cm)), names)
    ax.set(xlabel="predicted", ylabel="ground truth")
    for i in range(len(cm)):
        for j in range(len(cm)):
            text = f"{values[i, j]:.2f}" if normalize else f"{int(cm[i, j])}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if values[i, j] > 0.6 * values.max() else "black")
    ax.figure.colorbar(im, ax=ax, fraction=0.046)
    ax.figure.tight_layout()
    return ax.figure
