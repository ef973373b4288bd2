"""Chapter 1's figures: the five recognition tasks on one sample, rows of panels, augmentations."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

from ._checks import check_labels_match
from .masks import colorize, legend_patches, no_ticks, to_numpy_image

__all__ = ["show_tasks", "show_panels", "show_augmented"]


def _picture(x) -> np.ndarray:
    """What ``imshow`` takes: a ``[3, H, W]`` tensor becomes ``[H, W, 3]``; arrays pass as given."""
    if isinstance(x, torch.Tensor) and x.dim() == 3 and x.shape[0] == 3:
        return to_numpy_image(x)
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def show_tasks(sample, classes, palette):
    """One ``ShapesSample`` as the five tasks see it: classification, detection, semantic,
    instance and panoptic segmentation (one panel each), with a class legend."""
    if len(classes) != len(palette):
        raise ValueError(f"classes ({len(classes)}) and palette ({len(palette)}) differ in length")
    image = to_numpy_image(sample.image)
    fig, axes = plt.subplots(1, 5, figsize=(15, 3.4))
    present = sorted(set(sample.mask.unique().tolist()) - {255})
    axes[0].imshow(image)
    axes[0].set_title("classification\n" + ", ".join(classes[c] for c in present), fontsize=9)
    axes[1].imshow(image)
    for (x1, y1, x2, y2), c in zip(sample.boxes.tolist(), sample.instance_classes.tolist()):
        colour = np.asarray(palette[c]) / 255
        axes[1].add_patch(plt.Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1,
                                        fill=False, color=colour, lw=2))
        axes[1].text(x1, y1 - 2, classes[c], color=colour, fontsize=7, weight="bold")
    axes[1].set_title("detection\nbox + class per thing", fontsize=9)
    axes[2].imshow(colorize(sample.mask, palette))
    axes[2].set_title("semantic\nclass per pixel", fontsize=9)
    ids = sample.instances.numpy()
    axes[3].imshow(image * 0.3)
    axes[3].imshow(np.ma.masked_equal(ids, 0), cmap="tab10", vmin=1, vmax=10,
                   interpolation="nearest")
    axes[3].set_title("instance\nmask per thing", fontsize=9)
    # Panoptic: every pixel in its class colour, things shaded by the parity of their instance id
    # so that two touching things of one class stay apart.
    panoptic = colorize(sample.mask, palette).astype(float)
    panoptic[ids > 0] *= (0.55 + 0.45 * (ids[ids > 0] % 2))[:, None]
    axes[4].imshow(panoptic.astype(np.uint8))
    axes[4].set_title("panoptic\n(class, instance id) per pixel", fontsize=9)
    no_ticks(axes)
    fig.legend(handles=legend_patches(classes, palette), loc="lower center", ncol=len(classes),
               frameon=False, fontsize=8)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def show_panels(panels: dict, size: float = 3.0, suptitle: str | None = None):
    """One row of pictures, ``{title: picture}``, left to right.

    A picture is anything ``imshow`` takes (an RGB array, a coloured mask) or an image tensor
    ``[3, H, W]`` in [0, 1].
    """
    if not panels:
        raise ValueError("panels must hold at least one {title: picture} entry")
    fig, axes = plt.subplots(1, len(panels), figsize=(size * len(panels), size), squeeze=False)
    for ax, (title, picture) in zip(axes[0], panels.items()):
        ax.imshow(_picture(picture), interpolation="nearest")
        ax.set_title(title, fontsize=10)
    no_ticks(axes)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def show_augmented(pairs, palette, suptitle: str | None = None):
    """Augmented ``(image, mask)`` pairs: images in the top row, their masks below."""
    pairs = list(pairs)
    if not pairs:
        raise ValueError("pairs must hold at least one (image, mask) pair")
    fig, axes = plt.subplots(2, len(pairs), figsize=(2.25 * len(pairs), 4.6), squeeze=False)
    for col, (image, mask) in enumerate(pairs):
        check_labels_match(image, {f"pairs[{col}] mask": mask}, f"pairs[{col}] image")
        axes[0, col].imshow(to_numpy_image(image))
        axes[1, col].imshow(colorize(mask, palette), interpolation="nearest")
    no_ticks(axes)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig
