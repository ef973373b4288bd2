"""One row of panels: an image, then maps of the same size beside it (chapter 8).

- :func:`show_maps`    heat maps, e.g. the CRF kernel of one pixel with every other pixel;
- :func:`show_labels`  coloured label maps, e.g. one per setting of a refinement, each titled
  with its mIoU against the ground truth.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch

from .masks import colorize, to_numpy_image

__all__ = ["show_maps", "show_labels"]


def _check_panels(image: torch.Tensor, panels: dict, name: str) -> None:
    """``image`` ``[3, H, W]`` and a non-empty dict of ``[H, W]`` tensors named ``name``."""
    if not isinstance(image, torch.Tensor) or image.dim() != 3:
        got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image must be a tensor [3, H, W], got {got}")
    if not isinstance(panels, dict) or not panels:
        raise ValueError(f"{name} must be a non-empty dict {{title: [H, W] tensor}}")
    for title, panel in panels.items():
        if tuple(panel.shape) != tuple(image.shape[-2:]):
            raise ValueError(f"{name}[{title!r}] has shape {tuple(panel.shape)}, "
                             f"expected the image's {tuple(image.shape[-2:])}")


def _row(count: int, size: float):
    fig, axes = plt.subplots(1, count, figsize=(size * count, size + 0.4), squeeze=False)
    for ax in axes[0]:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes[0]


def show_maps(image: torch.Tensor, maps: dict, point: tuple[int, int] | None = None,
              cmap: str = "magma", size: float = 3.0):
    """The image, then one heat map ``[H, W]`` per entry of ``maps`` (titled by its key).

    ``point`` ``(row, col)`` marks one pixel with a cyan cross on every panel -- the pixel whose
    kernel the maps show, say. Returns the figure.
    """
    _check_panels(image, maps, "maps")
    fig, axes = _row(1 + len(maps), size)
    axes[0].imshow(to_numpy_image(image))
    axes[0].set_title("image")
    for ax, (title, values) in zip(axes[1:], maps.items()):
        ax.imshow(values.detach().cpu().numpy(), cmap=cmap)
        ax.set_title(title)
    if point is not None:
        row, col = point
        for ax in axes:
            ax.plot(col, row, "cx", ms=10, mew=2)
    fig.tight_layout()
    return fig


def show_labels(image: torch.Tensor, labels: dict, palette, target: torch.Tensor | None = None,
                num_classes: int | None = None, size: float = 2.0):
    """The image, then one coloured label map ``[H, W]`` per entry of ``labels``.

    With ``target`` each title gets a second line, the map's mIoU against it over
    ``num_classes`` classes (default: one per palette colour). Returns the figure.
    """
    from ..metrics import mean_iou

    _check_panels(image, labels, "labels")
    if target is not None and tuple(target.shape) != tuple(image.shape[-2:]):
        raise ValueError(f"target has shape {tuple(target.shape)}, "
                         f"expected the image's {tuple(image.shape[-2:])}")
    K = len(palette) if num_classes is None else num_classes
    fig, axes = _row(1 + len(labels), size)
    axes[0].imshow(to_numpy_image(image))
    axes[0].set_title("image", fontsize=9)
    for ax, (title, label_map) in zip(axes[1:], labels.items()):
        label_map = label_map.detach().cpu()
        ax.imshow(colorize(label_map, palette), interpolation="nearest")
        if target is not None:
            title += f"\nmIoU {mean_iou(label_map[None], target.cpu()[None], K):.3f}"
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
