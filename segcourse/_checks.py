"""Input validation shared by models, losses and metrics.

Every public entry point checks its inputs here so that a reader who passes the wrong thing
gets a ``ValueError`` that says what was expected, not an obscure indexing error ten frames deep.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["as_tensor", "check_images", "check_labels", "check_logits_and_target",
           "check_same_shape"]


def as_tensor(x, name: str) -> torch.Tensor:
    """``x`` as a tensor: tensors pass through, NumPy arrays are wrapped (no copy); anything
    else is a ``ValueError`` naming the argument -- metrics accept what users have at hand."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise ValueError(f"{name} must be a torch.Tensor or a numpy array, got {type(x).__name__}")


def check_images(x: torch.Tensor, in_channels: int | None = None, min_size: int = 1,
                 name: str = "input") -> None:
    """Check a batch of images ``[B, C, H, W]`` with floating dtype."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor [B, C, H, W], got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape [B, C, H, W], got {x.dim()}-D tensor "
                         f"of shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if in_channels is not None and x.shape[1] != in_channels:
        raise ValueError(f"{name} must have {in_channels} channels, got {x.shape[1]} "
                         f"(shape {tuple(x.shape)})")
    if min(x.shape[-2:]) < min_size:
        raise ValueError(f"{name} height and width must be at least {min_size}, "
                         f"got {tuple(x.shape[-2:])}")


def check_labels(target: torch.Tensor, num_classes: int, ignore_index: int | None = 255,
                 name: str = "target") -> None:
    """Check an integer label map: values in ``[0, num_classes)`` or ``ignore_index``."""
    if not isinstance(target, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of integer labels, "
                         f"got {type(target).__name__}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class labels (e.g. torch.long), got dtype "
                         f"{target.dtype}")
    if target.numel() == 0:
        return
    valid = target if ignore_index is None else target[target != ignore_index]
    if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= num_classes):
        allowed = f"[0, {num_classes - 1}]"
        allowed += "" if ignore_index is None else f" or {ignore_index}"
        bad = valid[(valid < 0) | (valid >= num_classes)]
        raise ValueError(f"{name} labels must be in {allowed}; found {int(bad[0])} "
                         f"({bad.numel()} pixel(s) out of range)")


def check_same_shape(a: torch.Tensor, b: torch.Tensor, name_a: str = "pred",
                     name_b: str = "target") -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")


def check_logits_and_target(logits: torch.Tensor, target: torch.Tensor,
                            ignore_index: int | None = 255) -> None:
    """Check ``logits [B, K, H, W]`` (float) against ``target [B, H, W]`` (integer)."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 4:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits must have shape [B, K, H, W], got {shape}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point, got dtype {logits.dtype}")
    if not isinstance(target, torch.Tensor) or target.dim() != 3:
        shape = tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__
        raise ValueError(f"target must have shape [B, H, W], got {shape}")
    B, K, H, W = logits.shape
    if tuple(target.shape) != (B, H, W):
        raise ValueError(f"target shape {tuple(target.shape)} does not match logits "
                         f"{tuple(logits.shape)}: expected {(B, H, W)}")
    check_labels(target, K, ignore_index)
