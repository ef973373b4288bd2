"""Input validation shared by models, losses and metrics.

Every public entry point checks its inputs here so that a reader who passes the wrong thing
gets a ``ValueError`` that says what was expected, not an obscure indexing error ten frames deep.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

__all__ = ["as_tensor", "check_count", "check_image_mask", "check_images", "check_labels",
           "check_logits_and_target", "check_model_input", "check_rgb_image", "check_same_shape",
           "check_size"]


def as_tensor(x, name: str) -> torch.Tensor:
    """``x`` as a tensor: tensors pass through, NumPy arrays are wrapped (no copy); anything
    else is a ``ValueError`` naming the argument -- metrics accept what users have at hand."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise ValueError(f"{name} must be a torch.Tensor or a numpy array, got {type(x).__name__}")


def check_count(value, name: str, minimum: int = 1) -> int:
    """``value`` as an ``int >= minimum``; a bool (an ``int`` subclass: ``build("unet", True)``),
    a float such as ``2.7`` or a NumPy float is a ``ValueError`` naming the argument."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r} "
                         f"({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_number(value, name: str, low: float | None = None, high: float | None = None) -> float:
    """``value`` as a float in ``[low, high]`` (either bound may be open-ended); a bool, a
    non-number or NaN is a ``ValueError`` naming the argument."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) \
            or value != value or (low is not None and value < low) \
            or (high is not None and value > high):
        where = (f" in [{low:g}, {high:g}]" if low is not None and high is not None
                 else f" >= {low:g}" if low is not None else f" <= {high:g}" if high is not None
                 else "")
        raise ValueError(f"{name} must be a number{where}, got {value!r}")
    return float(value)


def _autocast_enabled(device_type: str) -> bool:
    try:  # torch >= 2.4 takes the device type
        return bool(torch.is_autocast_enabled(device_type))
    except TypeError:  # torch 2.1 - 2.3: one flag for CUDA, one for the CPU
        return bool(torch.is_autocast_enabled() if device_type == "cuda"
                    else torch.is_autocast_cpu_enabled())


def check_images(x: torch.Tensor, in_channels: int | None = None, min_size: int = 1,
                 name: str = "input", dtype: torch.dtype | None = None,
                 min_size_reason: str = "") -> None:
    """Check a batch of images ``[B, C, H, W]`` with floating dtype (``dtype``, when given:
    the dtype of the parameters it will meet; autocast, which casts for us, lifts that check)."""
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
        raise ValueError(f"{name} height and width must be at least {min_size}{min_size_reason}, "
                         f"got {tuple(x.shape[-2:])}")
    if dtype is not None and x.dtype != dtype and not _autocast_enabled(x.device.type):
        short = {torch.float64: "double", torch.float32: "float", torch.float16: "half",
                 torch.bfloat16: "bfloat16"}
        fix = f"{name}.{short[dtype]}()" if dtype in short else f"{name}.to({dtype})"
        cast = f" or model.{short[x.dtype]}()" if x.dtype in short else ""
        raise ValueError(f"{name} is {str(x.dtype).removeprefix('torch.')} but the model's "
                         f"parameters are {str(dtype).removeprefix('torch.')}: pass {fix}{cast}")


def check_rgb_image(image, name: str = "image") -> None:
    """Check one RGB image ``[3, H, W]``, floating point with values in [0, 1] -- what a
    promptable model's user hands over (SAM normalises it itself)."""
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
        got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{name} must be a tensor [3, H, W] (one RGB image), got {got}")
    if not image.is_floating_point():
        raise ValueError(f"{name} must be floating point in [0, 1], got dtype {image.dtype}")
    if image.numel() and (image.min() < 0 or image.max() > 1):
        raise ValueError(f"{name} values must lie in [0, 1], got [{image.min().item():g}, "
                         f"{image.max().item():g}] (pass the image before normalising)")


def check_model_input(model: torch.nn.Module, x: torch.Tensor, min_size: int = 32,
                      name: str = "input", min_size_reason: str = "") -> None:
    """The check at the top of every registered model's ``forward``: images ``[B, C, H, W]``
    with ``model.in_channels`` channels, ``H, W >= min_size`` (32 for every semantic model) and
    the dtype of the model's parameters (float64 images into a float32 model are refused with
    the fix, instead of torch's ``expected scalar type Double but found Float``)."""
    param = next(model.parameters(), None)
    check_images(x, getattr(model, "in_channels", None), min_size=min_size, name=name,
                 dtype=None if param is None else param.dtype, min_size_reason=min_size_reason)


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


def check_class_ids(ids, name: str, allow_empty: bool = False) -> tuple[int, ...]:
    """``ids`` (dataset class ids: distinct ints in 0..254, 255 being the ignore label) as a
    tuple; a ``ValueError`` naming ``name`` otherwise (thing / stuff classes of the detection
    models and their targets)."""
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
        raise ValueError(f"{name} must be a sequence of int class ids, got {ids!r}")
    ids = tuple(ids)
    for c in ids:
        if isinstance(c, torch.Tensor) and c.numel() == 1 and not c.is_floating_point():
            c = c.item()
        if isinstance(c, bool) or not isinstance(c, numbers.Integral) or not 0 <= c < 255:
            raise ValueError(f"{name} must hold int class ids in 0..254 (255 is the ignore "
                             f"label), got {c!r} in {ids!r}")
    ids = tuple(int(c) for c in ids)
    if len(set(ids)) != len(ids):
        raise ValueError(f"{name} must not repeat a class, got {ids}")
    if not ids and not allow_empty:
        raise ValueError(f"{name} must name at least one class, got {ids}")
    return ids


def check_size(size, name: str = "size", minimum: int = 1) -> tuple[int, int]:
    """``size`` (an int or a pair ``(H, W)`` of ints >= ``minimum``) as ``(H, W)``."""
    pair = (size, size) if isinstance(size, (int, np.integer)) else size
    try:
        pair = tuple(pair)
    except TypeError:
        pair = ()
    if len(pair) != 2 or any(isinstance(s, (bool, np.bool_))
                             or not isinstance(s, (int, np.integer)) for s in pair):
        raise ValueError(f"{name} must be an int or a pair (H, W) of ints, got {size!r}")
    if min(pair) < minimum:
        raise ValueError(f"{name} must be at least {minimum} pixels, got {tuple(pair)}")
    return int(pair[0]), int(pair[1])


def check_image_mask(image: torch.Tensor, mask: torch.Tensor, image_name: str = "image",
                     mask_name: str = "mask") -> None:
    """An image ``[C, H, W]`` and its mask ``[H, W]`` of the same size (the joint transforms)."""
    if not isinstance(image, torch.Tensor) or image.dim() != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{image_name} must be a tensor [C, H, W], got {shape}")
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"{mask_name} must be a tensor [H, W], got {shape}")
    if image.shape[-2:] != mask.shape:
        raise ValueError(f"{image_name} and {mask_name} must have the same height and width, got "
                         f"{image_name} {tuple(image.shape)} and {mask_name} {tuple(mask.shape)}")
