"""Label maps as pictures: coloured masks, overlays, legends, grids of predictions."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

from ._checks import check_batch, check_labels_match, check_palette

__all__ = ["colorize", "overlay", "to_numpy_image", "show_predictions", "legend_patches"]

IGNORE_COLOUR = np.array([255, 255, 255], dtype=np.uint8)  # ignore pixels show white


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def colorize(mask, palette, ignore_index: int = 255) -> np.ndarray:
    """Label map ``[H, W]`` -> RGB ``uint8 [H, W, 3]`` using ``palette[class]``; ignore is white."""
    mask = _np(mask).astype(np.int64)
    palette = check_palette(palette)
    out = np.empty(mask.shape + (3,), dtype=np.uint8)
    ignore = mask == ignore_index
    valid = ~ignore
    if valid.any() and mask[valid].min() < 0:
        raise ValueError(f"mask has negative label {mask[valid].min()} (labels are 0 .. K-1 or "
                         f"ignore_index={ignore_index})")
    if valid.any() and mask[valid].max() >= len(palette):
        raise ValueError(f"mask has labels outside the palette's {len(palette)} classes: label "
                         f"{mask[valid].max()} needs a palette of at least "
                         f"{mask[valid].max() + 1} colours")
    out[valid] = palette[mask[valid]]
    out[ignore] = IGNORE_COLOUR
    return out


def to_numpy_image(image) -> np.ndarray:
    """Image ``[3, H, W]`` (float in [0, 1]) -> ``[H, W, 3]`` float array clipped to [0, 1]."""
    image = _np(image)
    if image.ndim == 3 and image.shape[0] in (1, 3):
        image = image.transpose(1, 2, 0)
    return np.clip(image.astype(np.float32), 0, 1)


def overlay(image, mask, palette, alpha: float = 0.5, ignore_index: int = 255) -> np.ndarray:
    """Blend the coloured mask over the image (ignore pixels keep the image)."""
    check_labels_match(image, {"mask": mask})
    rgb = to_numpy_image(image)
    colours = colorize(mask, palette, ignore_index).astype(np.float32) / 255
    keep = (_np(mask) == ignore_index)[..., None]
    return np.where(keep, rgb, (1 - alpha) * rgb + alpha * colours)


def legend_patches(classes, palette):
    from matplotlib.patches import Patch
    return [Patch(color=np.asarray(c) / 255, label=name) for name, c in zip(classes, palette)]


def no_ticks(axes) -> None:
    """Hide the ticks of every axis in ``axes`` (one axis or an array of them)."""
    for ax in np.ravel(axes):
        ax.set_xticks([])
        ax.set_yticks([])


def draw_grid(axes, rows, title_size: int = 10) -> None:
    """Draw ``rows`` -- one list of ``(title, picture)`` per grid row -- into ``axes [R, C]``;
    the titles go on the first row, no ticks anywhere."""
    for r, panels in enumerate(rows):
        for c, (title, picture) in enumerate(panels):
            axes[r, c].imshow(picture, interpolation="nearest")
            if r == 0:
                axes[r, c].set_title(title, fontsize=title_size)
    no_ticks(axes)


def show_predictions(images, masks, preds=None, palette=None, classes=None, max_rows: int = 4,
                     titles=("image", "ground truth", "prediction")):
    """A grid: one row per sample, columns image / ground truth / prediction(s).

    ``preds`` may be one label tensor ``[N, H, W]`` or a dict ``{name: labels}`` to compare models.
    """
    if palette is None:
        raise ValueError("show_predictions needs the palette (e.g. dataset.palette)")
    pred_sets = ({} if preds is None
                 else (dict(preds) if isinstance(preds, dict) else {titles[2]: preds}))
    named = {"preds": preds} if pred_sets and not isinstance(preds, dict) else {
        f"preds[{name!r}]": p for name, p in pred_sets.items()}
    check_batch(images, {"masks": masks, **named})
    n = min(len(images), max_rows)
    cols = 2 + len(pred_sets)
    fig, axes = plt.subplots(n, cols, figsize=(2.2 * cols, 2.2 * n), squeeze=False)
    draw_grid(axes, [[(titles[0], to_numpy_image(images[r])),
                      (titles[1], colorize(masks[r], palette)),
                      *[(name, colorize(p[r], palette)) for name, p in pred_sets.items()]]
                     for r in range(n)])
    if classes is not None:
        fig.legend(handles=legend_patches(classes, palette), loc="lower center",
                   ncol=min(len(classes), 7), fontsize=8, frameon=False,
                   bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, 0.05 if classes is not None else 0, 1, 1))
    return fig
