"""Checkpoints: a model's weights, optionally its optimizer, and plain extras, in one file.

    save_checkpoint("run.pt", model, optimizer, epoch=5, history=dict(history))
    state = load_checkpoint("run.pt", model)          # state["epoch"], state["history"], ...

``fit(..., checkpoint=path)`` writes one at the end of training. The file is an ordinary
``torch.save`` of a dict, read back with ``weights_only=True`` (no pickled code is executed), so
extras must be plain numbers, strings, lists, dicts and tensors.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

__all__ = ["save_checkpoint", "load_checkpoint"]


def save_checkpoint(path: str | Path, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None = None, **extra) -> Path:
    """Save ``{"model", "optimizer", **extra}`` (extra: plain numbers, strings, lists, dicts)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"model": model.state_dict(),
             "optimizer": optimizer.state_dict() if optimizer is not None else None, **extra}
    torch.save(state, path)
    return path


def load_checkpoint(path: str | Path, model: nn.Module | None = None,
                    optimizer: torch.optim.Optimizer | None = None,
                    map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` into ``model`` (and ``optimizer``).

    Weights stored in a lower precision (e.g. float16, to keep a shipped file small) are cast to
    the dtype of the model's own tensors by ``load_state_dict``.
    """
    state = torch.load(path, map_location=map_location, weights_only=True)
    if model is not None:
        model.load_state_dict(state["model"])
    if optimizer is not None:
        if state.get("optimizer") is None:
            raise ValueError(f"{path} holds no optimizer state")
        optimizer.load_state_dict(state["optimizer"])
    return state
