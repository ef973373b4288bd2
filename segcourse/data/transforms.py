"""Joint image/mask transforms.

An image and its mask must move together: a flip or crop applied to one and not the other
silently ruins training. Each transform here takes and returns ``(image, mask)`` with
``image`` float ``[C, H, W]`` and ``mask`` int64 ``[H, W]``. Masks are only ever resampled with
nearest-neighbour (interpolating class ids would invent classes: halfway between 0 "sky" and
4 "triangle" is not 2 "circle"), and ignore pixels (255) stay ignore -- padding adds ignore too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._checks import check_image_mask, check_size
from .shapes import IGNORE_INDEX

__all__ = ["Compose", "RandomHorizontalFlip", "RandomScaleCrop", "Resize", "Normalize",
           "IMAGENET_MEAN", "IMAGENET_STD", "resize_pair"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_pair(image: torch.Tensor, mask: torch.Tensor, size: tuple[int, int]):
    """Resize an image bilinearly (antialiased when shrinking) and its mask by nearest neighbour.

    ``image [C, H, W]`` and ``mask [H, W]`` must have the same size (else ``ValueError``)."""
    check_image_mask(image, mask)
    size = check_size(size)
    if tuple(image.shape[-2:]) == size:
        return image, mask
    image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False,
                          antialias=True)[0]
    # "nearest-exact" samples pixel centres, so image and mask stay aligned.
    mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest-exact")[0, 0].long()
    return image, mask


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image, mask):
        for t in self.transforms:
            image, mask = t(image, mask)
        return image, mask

    def __repr__(self):
        return "Compose(" + ", ".join(repr(t) for t in self.transforms) + ")"


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
        self.p = p

    def __call__(self, image, mask):
        check_image_mask(image, mask)
        if torch.rand(()) < self.p:
            return image.flip(-1), mask.flip(-1)
        return image, mask

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


class RandomScaleCrop:
    """Rescale by a random factor, pad (image 0, mask ignore) if smaller than ``size``, crop.

    The usual augmentation of DeepLab and most segmentation recipes (scale 0.5--2.0, fixed crop).
    """

    def __init__(self, size: int | tuple[int, int], scale: tuple[float, float] = (0.5, 2.0),
                 ignore_index: int = IGNORE_INDEX):
        self.size = check_size(size)
        try:
            lo, hi = (float(s) for s in scale)
        except (TypeError, ValueError):
            lo = hi = float("nan")
        if not 0 < lo <= hi < float("inf"):
            raise ValueError("scale must be a pair (low, high) with 0 < low <= high, "
                             f"got {scale!r}")
        self.scale = scale
        self.ignore_index = ignore_index

    def __call__(self, image, mask):
        check_image_mask(image, mask)
        factor = float(torch.empty(()).uniform_(*self.scale))
        H, W = image.shape[-2:]
        image, mask = resize_pair(image, mask, (max(1, round(H * factor)),
                                                max(1, round(W * factor))))
        ch, cw = self.size
        H, W = image.shape[-2:]
        pad_h, pad_w = max(ch - H, 0), max(cw - W, 0)
        if pad_h or pad_w:
            image = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)
            mask = F.pad(mask, (0, pad_w, 0, pad_h), value=self.ignore_index)
            H, W = image.shape[-2:]
        top = int(torch.randint(0, H - ch + 1, ()))
        left = int(torch.randint(0, W - cw + 1, ()))
        return (image[:, top:top + ch, left:left + cw],
                mask[top:top + ch, left:left + cw])

    def __repr__(self):
        return f"RandomScaleCrop(size={self.size}, scale={self.scale})"


class Resize:
    def __init__(self, size: int | tuple[int, int]):
        self.size = check_size(size)

    def __call__(self, image, mask):
        return resize_pair(image, mask, self.size)

    def __repr__(self):
        return f"Resize(size={self.size})"


class Normalize:
    """Subtract the mean and divide by the std per channel (image only).

    ``mean`` and ``std`` have one entry per channel of the image (or a single entry for all
    channels); anything else is a ``ValueError`` -- a 1-channel image must not come back with
    three channels."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        for name, value in (("mean", mean), ("std", std)):
            t = torch.as_tensor(value, dtype=torch.float32) if not isinstance(value, str) else None
            if t is None or t.dim() != 1 or t.numel() == 0 or not torch.isfinite(t).all():
                raise ValueError(f"{name} must be a sequence of finite numbers, one per channel, "
                                 f"got {value!r}")
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean and std must have the same length, got {len(self.mean)} "
                             f"and {len(self.std)}")
        if (self.std <= 0).any():
            raise ValueError(f"std must be positive, got {self.std.flatten().tolist()}")

    def __call__(self, image, mask):
        check_image_mask(image, mask)
        if len(self.mean) not in (1, image.shape[0]):
            raise ValueError(f"image has {image.shape[0]} channel(s) but mean and std have "
                             f"{len(self.mean)} entries: pass one per channel "
                             f"(e.g. Normalize(mean=[0.5] * {image.shape[0]}, "
                             f"std=[0.5] * {image.shape[0]}))")
        return (image - self.mean.to(image)) / self.std.to(image), mask

    def __repr__(self):
        return f"Normalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"
