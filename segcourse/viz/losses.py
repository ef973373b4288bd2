"""Figures of chapter 6 (losses): the focal loss's curves, a comparison of losses, and where a
model is right or wrong near class boundaries.

- :func:`plot_focal_loss` -- ``-(1 - p_t)^gamma log p_t`` against ``p_t`` for several gammas;
- :func:`plot_loss_comparison` -- mIoU and the IoU of one (rare) class, one pair of bars per loss;
- :func:`plot_boundary_errors` -- boundary-band pixels coloured right (green) or wrong (red), one
  row per model, one column per image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from .masks import _np

__all__ = ["plot_focal_loss", "plot_loss_comparison", "plot_boundary_errors"]

RIGHT, WRONG, ELSEWHERE = (0.2, 0.6, 0.2), (0.85, 0.1, 0.1), (0.85, 0.85, 0.85)


def plot_focal_loss(gammas: Sequence[float] = (0, 0.5, 1, 2, 5), ax=None):
    """The focal loss of one pixel, ``-(1 - p_t)^gamma log p_t``, against ``p_t`` in (0, 1].

    ``gamma = 0`` is cross-entropy; larger gammas flatten the curve where ``p_t`` is high (easy
    pixels).
    """
    gammas = list(gammas)
    if not gammas or any(not np.isfinite(g) or g < 0 for g in gammas):
        raise ValueError(f"gammas must be a non-empty list of finite values >= 0, got {gammas}")
    pt = np.linspace(0.01, 1, 200)
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.2))
    for gamma in gammas:
        ax.plot(pt, -(1 - pt) ** gamma * np.log(pt), label=f"$\\gamma = {gamma:g}$")
    ax.set(xlabel="probability of the true class $p_t$", ylabel="loss", ylim=(0, 4),
           title="focal loss: $\\gamma = 0$ is cross-entropy")
    ax.legend()
    ax.figure.tight_layout()
    return ax.figure


def plot_loss_comparison(results: Mapping[str, Mapping], rare: int, rare_name: str | None = None):
    """Bars of each loss's mIoU and of its IoU on class ``rare``.

    ``results`` maps a loss name to a dict with ``"miou"`` (a float) and ``"iou"`` (per-class
    IoUs), as :func:`segcourse.train.evaluate` returns it.
    """
    if not isinstance(results, Mapping) or not results:
        raise ValueError("results must be a non-empty dict {loss name: evaluate(...) scores}")
    for name, scores in results.items():
        if "miou" not in scores or "iou" not in scores:
            raise ValueError(f"results[{name!r}] needs 'miou' and 'iou', got {sorted(scores)}")
        if not 0 <= rare < len(scores["iou"]):
            raise ValueError(f"rare must index the {len(scores['iou'])} classes, got {rare}")
    names = list(results)
    miou = [float(results[n]["miou"]) for n in names]
    rare_iou = [float(results[n]["iou"][rare]) for n in names]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.bar(x - 0.2, miou, 0.4, label="mIoU")
    ax.bar(x + 0.2, rare_iou, 0.4,
           label=f"IoU of the rare class ({rare_name if rare_name else rare})")
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left")
    ax.set_title("same network, same data, same steps: only the loss differs")
    fig.tight_layout()
    return fig


def plot_boundary_errors(preds: Mapping[str, torch.Tensor], masks: torch.Tensor,
                         band: torch.Tensor, count: int = 3):
    """Band pixels right (green) or wrong (red), the rest grey: a row per model, a column per image.

    ``preds`` maps a model name to labels ``[N, H, W]``; ``masks`` are the targets and ``band``
    the bool boundary band (e.g. :func:`segcourse.metrics.boundary_mask`), both ``[N, H, W]``.
    Each panel's title gives the share of its band pixels that are right.
    """
    masks, band = _np(masks), _np(band).astype(bool)
    if not isinstance(preds, Mapping) or not preds:
        raise ValueError("preds must be a non-empty dict {model name: labels [N, H, W]}")
    if masks.ndim != 3 or band.shape != masks.shape:
        raise ValueError(f"masks and band must be [N, H, W] of one shape, got {masks.shape} "
                         f"and {band.shape}")
    count = min(int(count), len(masks))
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    fig, axes = plt.subplots(len(preds), count, figsize=(7 / 3 * count, 2.5 * len(preds)),
                             squeeze=False)
    for row, (name, pred) in enumerate(preds.items()):
        pred = _np(pred)
        if pred.shape != masks.shape:
            raise ValueError(f"preds[{name!r}] has shape {pred.shape}, masks {masks.shape}")
        for col in range(count):
            right = band[col] & (pred[col] == masks[col])
            wrong = band[col] & (pred[col] != masks[col])
            canvas = np.empty(masks.shape[1:] + (3,))
            canvas[...] = ELSEWHERE
            canvas[right], canvas[wrong] = RIGHT, WRONG
            ax = axes[row, col]
            ax.imshow(canvas, interpolation="nearest")
            ax.axis("off")
            share = right.sum() / max(band[col].sum(), 1)
            ax.set_title(f"{name}: {share:.0%} right", fontsize=9)
    fig.tight_layout()
    return fig
