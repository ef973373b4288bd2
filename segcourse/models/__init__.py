"""Segmentation models, one file per family, and a registry to build them by name.

Every *semantic* model registered here takes images ``[B, C, H, W]`` with any ``H, W >= 32`` and
returns logits ``[B, num_classes, H, W]`` at input resolution. Registry defaults are small enough
to train on a laptop CPU; the paper configurations are one keyword argument away (see each
family's docstring).

    >>> from segcourse import models
    >>> models.list_models()            # doctest: +SKIP
    >>> net = models.build("unet", num_classes=5)
"""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

__all__ = ["register", "list_models", "build"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    """Decorator: register ``builder(num_classes, in_channels=3, **kwargs) -> nn.Module``."""

    def decorator(builder):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = builder
        return builder

    return decorator


def list_models() -> list[str]:
    """Names of the registered semantic segmentation models, sorted."""
    return sorted(_REGISTRY)


def build(name: str, num_classes: int, in_channels: int = 3, **kwargs) -> nn.Module:
    """Construct the registered model ``name``; extra keyword arguments go to its constructor."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return _REGISTRY[name](num_classes=num_classes, in_channels=in_channels, **kwargs)


# Importing a family module registers its models. Keep one line per family file.
from . import fcn  # noqa: E402,F401  (FCN-32s, FCN-8s)
from . import unet  # noqa: E402,F401  (U-Net, Attention U-Net)
from . import segformer  # noqa: E402,F401  (SegFormer-B0..B5)
from . import setr  # noqa: E402,F401  (SETR-Naive, SETR-PUP)
from . import deeplab  # noqa: E402,F401  (DeepLabV3, DeepLabV3+ on a dilated ResNet)
