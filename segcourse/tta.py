"""Test-time augmentation (TTA): average a model's predictions over rescaled and flipped copies.

    probs = tta_predict(model, images, scales=(0.75, 1.0, 1.25), flip=True)   # [B, K, H, W]
    labels = probs.argmax(1)

Each view is one round trip: resize the batch to ``scale x (H, W)``, run the model, turn its logits
into probabilities, undo the flip, resize the probabilities back to ``(H, W)``. The views' class
probabilities are averaged. This is the multi-scale + flip inference of DeepLab and most
segmentation benchmarks (e.g. mmsegmentation's ``aug_test``). A scale above 1 shows the model
small objects larger; a scale below 1 gives it more context; the flip averages away left-right
biases. Averaging probabilities rather than logits keeps one over-confident view from dominating.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._checks import check_images

__all__ = ["tta_predict"]


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


@torch.no_grad()
def tta_predict(model: nn.Module, images: torch.Tensor,
                scales: Sequence[float] = (0.75, 1.0, 1.25), flip: bool = True,
                batch_size: int | None = None) -> torch.Tensor:
    """Class probabilities ``[B, K, H, W]`` averaged over ``len(scales) * (1 + flip)`` views.

    Args:
        model: maps images ``[B, C, h, w]`` to logits ``[B, K, h, w]`` (any ``h, w`` it supports;
            the scaled sizes are ``round(scale * H)``, so keep them within the model's minimum).
        images: ``[B, C, H, W]`` float batch, on any device and of any float dtype (moved to
            the model's device and cast to its parameters' dtype).
        scales: resize factors; ``(1.0,)`` with ``flip=False`` is plain inference.
        flip: also predict on the horizontally flipped images (flipped back before averaging).
        batch_size: split the batch into chunks of this size (None: all at once).

    Runs without gradients in eval mode and restores the model's train/eval mode afterwards.
    Returns float32 probabilities on the device of ``images``.
    """
    check_images(images, name="images")
    if not isinstance(scales, Sequence) or isinstance(scales, str):
        raise ValueError(f"scales must be a sequence of positive numbers, e.g. ({scales!r},), "
                         f"got {type(scales).__name__} {scales!r}")
    if not scales or any(not isinstance(s, (int, float)) or not s > 0 for s in scales):
        raise ValueError(f"scales must be a non-empty sequence of positive numbers, got {scales}")
    scales = [float(s) for s in scales]
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else images.device
    # the views are fed in the model's dtype (float64 images into a float32 model are cast)
    dtype = parameter.dtype if parameter is not None else images.dtype
    B, _, H, W = images.shape
    step = batch_size or B
    was_training = model.training
    model.eval()
    try:
        chunks = []
        for start in range(0, B, step):
            batch = images[start:start + step].to(device, dtype)
            total = None
            for scale in scales:
                size = (max(1, round(scale * H)), max(1, round(scale * W)))
                view = _resize(batch, size)
                if flip:  # the flipped copy rides in the same forward pass: (2b, C, h, w)
                    view = torch.cat([view, view.flip(-1)])
                probs = model(view).float().softmax(1)
                if flip:
                    plain, flipped = probs.chunk(2)
                    probs = torch.cat([plain, flipped.flip(-1)])   # undo the flip
                probs = _resize(probs, (H, W))
                # (views, b, K, H, W) -> sum over the views
                probs = probs.reshape(-1, batch.shape[0], *probs.shape[1:]).sum(0)
                total = probs if total is None else total + probs
            chunks.append((total / (len(scales) * (2 if flip else 1))).to(images.device))
    finally:
        model.train(was_training)
    return torch.cat(chunks)
