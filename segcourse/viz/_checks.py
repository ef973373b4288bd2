"""The one check the figure helpers share: images, label maps and predictions that belong
together must agree in count and size (a mismatch is a ``ValueError`` naming the argument,
never a half-drawn figure or a numpy broadcasting error)."""

from __future__ import annotations

import numpy as np
import torch


def _shape(x) -> tuple[int, ...]:
    return tuple(x.shape) if hasattr(x, "shape") else np.shape(x)


def image_size(image, name: str = "image") -> tuple[int, int]:
    """``(H, W)`` of an image ``[C, H, W]`` (C = 1 or 3), ``[H, W, C]`` or ``[H, W]``."""
    shape = _shape(image)
    if len(shape) == 2:
        return shape
    if len(shape) == 3 and shape[0] in (1, 3):
        return shape[1:]
    if len(shape) == 3 and shape[-1] in (1, 3, 4):
        return shape[:2]
    raise ValueError(f"{name} must be an image [3, H, W] or [H, W, 3], got shape {shape}")


def check_labels_match(image, labels: dict, image_name: str = "image") -> None:
    """Each ``labels[name]`` (``[H, W]``) has the size of ``image``."""
    size = tuple(image_size(image, image_name))
    for name, mask in labels.items():
        if mask is not None and tuple(_shape(mask)) != size:
            raise ValueError(f"{name} has shape {tuple(_shape(mask))}, expected the "
                             f"{image_name}'s {size}")


def check_batch(images, labels: dict, images_name: str = "images") -> None:
    """``images`` (N images) and each ``labels[name]`` (N label maps ``[H, W]``, or ``None``)
    agree in count and, image by image, in size."""
    n = len(images)
    for name, masks in labels.items():
        if masks is None:
            continue
        if len(masks) != n:
            raise ValueError(f"{name} holds {len(masks)} label maps but {images_name} holds {n} "
                             "images: pass one per image")
        for i in range(n):
            check_labels_match(images[i], {f"{name}[{i}]": masks[i]}, f"{images_name}[{i}]")


def check_palette(palette, name: str = "palette") -> np.ndarray:
    """``palette`` as ``uint8 [K, 3]`` (K >= 1, values 0-255)."""
    arr = np.asarray(palette.detach().cpu() if isinstance(palette, torch.Tensor) else palette)
    if (arr.ndim != 2 or arr.shape[1] != 3 or len(arr) == 0
            or not np.issubdtype(arr.dtype, np.number)):
        raise ValueError(f"{name} must be [K, 3] RGB colours (0-255), one per class, got "
                         f"shape {arr.shape}")
    if arr.min() < 0 or arr.max() > 255:
        raise ValueError(f"{name} colours must be in 0-255, got {arr.min()} .. {arr.max()}")
    return arr.astype(np.uint8)
