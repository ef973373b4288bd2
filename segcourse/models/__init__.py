"""Segmentation models, one file per family, and a registry to build them by name.

Every model registered here takes images ``[B, C, H, W]`` with any ``H, W >= 32``. Two kinds:

- ``"per_pixel"`` classifiers (chapters 2-5) return logits ``[B, num_classes, H, W]`` at input
  resolution;
- ``"mask_classification"`` models (chapter 10: Mask2Former, EoMT) return a set of (class, mask)
  pairs, ``{"class_logits", "mask_logits"}``, and give per-pixel scores ``[B, num_classes, H,
  W]`` through ``model.semantic(images)``; ``segcourse.evaluate`` and ``segcourse.train.fit``
  handle both kinds;
- ``"promptable"`` models (chapter 11: Segment Anything) know no classes: they segment the
  object a prompt (points, a box, a mask) points at, ``{"mask_logits", "iou_scores"}``; they are
  built without ``num_classes`` (``build("sam")``) and trained with a ``step`` function.

Every builder has one signature,
``name(num_classes, in_channels=3, paper=False, **overrides)``, and one body (see
:mod:`segcourse.models.config`): the family's frozen config dataclass -- its CPU-sized ``SMALL``
(the default) or, with ``paper=True``, its ``PAPER`` instance with the published sizes -- with
the fields named in ``overrides`` replaced::

    >>> from segcourse import models
    >>> models.list_models()            # doctest: +SKIP
    >>> net = models.build("unet", num_classes=5)                       # SMALL: 16 ... 256
    >>> big = models.build("unet", num_classes=2, paper=True)           # PAPER: 64 ... 1024
    >>> bil = models.build("unet", num_classes=2, paper=True, bilinear=True)

Families with a table of published sizes name a row instead: SegFormer ``variant="b0".."b5"``,
SETR ``encoder="vit_b16"`` / ``"vit_l16"``.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch.nn as nn

from .._checks import check_count

__all__ = ["KINDS", "CLASS_FREE", "CLASSIFIERS", "register", "list_models", "build"]

KINDS = ("per_pixel", "mask_classification", "promptable")
CLASS_FREE = ("promptable",)  # kinds built without num_classes
CLASSIFIERS = ("per_pixel", "mask_classification")  # kinds built with num_classes
_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_KIND: dict[str, str] = {}


def register(name: str, kind: str = "per_pixel"):
    """Decorator: register ``builder(num_classes, in_channels=3, paper=False, **overrides)``
    as a model of ``kind`` (one of :data:`KINDS`)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")

    def decorator(builder):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        params = inspect.signature(builder).parameters
        missing = [p for p in ("num_classes", "in_channels", "paper") if p not in params]
        if missing:  # the contract `build` relies on, checked once at import
            raise ValueError(f"builder {name!r} lacks the argument(s) {missing}")
        _REGISTRY[name] = builder
        _KIND[name] = kind
        return builder

    return decorator


def list_models(kind: str | tuple[str, ...] | None = None) -> list[str]:
    """Names of the registered models, sorted; only those of ``kind`` (one of :data:`KINDS`,
    or a tuple of them) if given."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if kind is not None and (not kinds or any(k not in KINDS for k in kinds)):
        raise ValueError(f"kind must be one of {KINDS}, a tuple of them, or None, got {kind!r}")
    return sorted(n for n in _REGISTRY if kind is None or _KIND[n] in kinds)


def build(name: str, num_classes: int | None = None, in_channels: int = 3, paper: bool = False,
          **overrides) -> nn.Module:
    """Construct the registered model ``name``.

    ``num_classes`` is required for the classifying kinds and must be left out (``None``) for a
    ``"promptable"`` model, which has no classes.

    ``paper=True`` gives the published configuration (the family's ``PAPER``), the default the
    CPU-sized one (``SMALL``); ``overrides`` replace fields of that config by name (a name that
    is not a field raises ``ValueError`` listing the fields).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    if _KIND[name] in CLASS_FREE:
        if num_classes is not None:
            raise ValueError(f"{name!r} is a {_KIND[name]} model and has no classes: build it "
                             f"without num_classes, got num_classes={num_classes!r}")
    else:
        if num_classes is None:
            raise ValueError(f"num_classes is required to build {name!r} (a {_KIND[name]} "
                             "model)")
        check_count(num_classes, "num_classes")
    check_count(in_channels, "in_channels")
    if not isinstance(paper, bool):
        raise ValueError(f"paper must be True or False, got {paper!r}")
    return _REGISTRY[name](num_classes=num_classes, in_channels=in_channels, paper=paper,
                           **overrides)


# Importing a family module registers its models: one name per family file. (Last, because each
# family imports `register` from this module.)
from . import (  # noqa: E402
    deeplab,  # noqa: F401  DeepLabV3, DeepLabV3+ on a dilated ResNet
    eomt,  # noqa: F401  EoMT: a plain ViT whose last blocks also carry the queries
    fcn,  # noqa: F401  FCN-32s, FCN-8s
    mask2former,  # noqa: F401  Mask2Former: ResNet, deformable pixel decoder, masked attention
    sam,  # noqa: F401  Segment Anything: ViT encoder once, prompt encoder + mask decoder per prompt
    segformer,  # noqa: F401  SegFormer-B0..B5
    setr,  # noqa: F401  SETR-Naive, SETR-PUP
    unet,  # noqa: F401  U-Net, Attention U-Net
)
