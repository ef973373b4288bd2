"""Frozen BatchNorm: the normalisation layer of detection backbones.

Detection trains on a few large images per GPU (Mask R-CNN: 2 per GPU at ~800 x 1333 pixels),
too few for BatchNorm's batch statistics to be reliable. So torchvision and Detectron2 keep the
ImageNet statistics *and* the affine scale and shift of a pre-trained backbone fixed: each
BatchNorm becomes a fixed per-channel affine map, ``y = x * scale + shift``.

Reference: torchvision ``ops/misc.py`` (``FrozenBatchNorm2d``: the four tensors are buffers, not
parameters, ``eps=1e-5``, a stored ``num_batches_tracked`` is dropped on loading) and Detectron2
``layers/batch_norm.py`` (``FrozenBatchNorm2d.convert_frozen_batchnorm``, which swaps the layers
of a built module -- so the backbone's code need not know about it). The layer keeps the eps of
the BatchNorm it replaces (1e-5, torchvision's default); torchvision's COCO-trained detection
weights were trained with eps 0, which it restores on loading them (``overwrite_eps``).
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["FrozenBatchNorm2d", "convert_frozen_batchnorm"]


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d whose statistics and affine are fixed buffers: ``y = (x - mean) / sqrt(var +
    eps) * weight + bias`` in training and evaluation alike. Nothing in it is trained."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features, self.eps = num_features, eps
        # buffers: saved and moved with the module, invisible to the optimiser and to
        # parameters() -- which is why torchvision's 44,401,393 parameters do not count them
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a BatchNorm2d checkpoint (torchvision's ImageNet weights) also stores a step counter
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def convert_frozen_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` (and ``nn.SyncBatchNorm``) in ``module`` by a
    :class:`FrozenBatchNorm2d` with the same statistics, affine and eps; returns the module
    (converted in place, or the new layer when ``module`` itself is a BatchNorm). In evaluation
    mode the output is unchanged; in training mode it no longer depends on the batch."""
    if not isinstance(module, nn.Module):
        raise ValueError(f"module must be an nn.Module, got {type(module).__name__}")
    if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
        frozen = FrozenBatchNorm2d(module.num_features, module.eps)
        like = module.running_mean if module.running_mean is not None else module.weight
        if like is not None:  # same device and dtype as the layer it replaces
            frozen = frozen.to(like)
        with torch.no_grad():
            if module.affine:
                frozen.weight.copy_(module.weight)
                frozen.bias.copy_(module.bias)
            if module.track_running_stats:
                frozen.running_mean.copy_(module.running_mean)
                frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new = convert_frozen_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module
