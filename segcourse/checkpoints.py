"""Checkpoints: a model's weights, optionally its optimizer, and plain extras, in one file.

    save_checkpoint("run.pt", model, optimizer, epoch=5, history=history)
    state = load_checkpoint("run.pt", model)          # state["epoch"], state["history"], ...

``fit(..., checkpoint=path)`` writes one at the end of training. The file is an ordinary
``torch.save`` of a dict (``torch.load`` reads it too), and three things make sure nothing is
lost on the way:

- **Atomic writes.** The file is written to a temporary file in the same directory, flushed to
  disk (``fsync``) and renamed over the target (``os.replace``): a crash or a full disk
  mid-save leaves the previous checkpoint intact, never half a file.
- **A checksum.** ``"checksum"`` holds the SHA-256 of everything saved -- every tensor's bytes,
  dtype and shape, the optimizer state and the extras -- and :func:`load_checkpoint` recomputes
  it: a corrupted file is refused with a ``ValueError`` instead of loading wrong weights.
- **Extras that load back.** Files are read with ``weights_only=True`` (no pickled code runs),
  so extras must be plain: ``None``, bools, numbers, strings, bytes, tensors, and lists,
  tuples and dicts of them. ``save_checkpoint`` converts what the course passes around -- the
  :class:`~segcourse.train.History` that ``fit`` returns (and any other dict subclass) becomes a
  plain dict, NumPy scalars become Python numbers, NumPy arrays tensors, dataclasses (model
  configs) dicts (``dataclasses.asdict``) -- and refuses anything else *when saving*, naming
  the extra, rather than writing a file that cannot be read.

Files without a checksum (written by ``torch.save`` directly, like the shipped
``checkpoints/panoptic_fpn_shapes.pt``, or by older versions of this module) still load: they
are *legacy* checkpoints, checked for their structure (a ``"model"`` dict of tensors, an
optimizer state or ``None``) but not for corruption. A plain ``model.state_dict()`` saved with
``torch.save`` is not a checkpoint and is refused with the one line that loads it. Loading into a
model of another architecture lists the missing and unexpected keys and the shape mismatches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

__all__ = ["save_checkpoint", "load_checkpoint"]

FORMAT = "segcourse.checkpoint/2"
RESERVED = ("model", "optimizer", "format", "checksum")
_SCALARS = (type(None), bool, int, float, complex, str, bytes)


# --- extras: plain types only -----------------------------------------------------------------

def _plain(value, where: str):
    """``value`` as something ``torch.load(weights_only=True)`` gives back; else ValueError."""
    if isinstance(value, np.generic):  # np.float64 is a float subclass: before the scalars
        return value.item()
    if type(value) in _SCALARS:  # exactly: an IntEnum or a str subclass would not load back
        return value
    if isinstance(value, torch.Tensor):
        if value.layout != torch.strided or value.is_quantized:
            raise ValueError(f"{where} is a {value.layout} tensor; checkpoints hold dense "
                             "tensors only: pass .to_dense() (or .dequantize())")
        return value.detach()
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise ValueError(f"{where} is a NumPy array of Python objects; convert it to "
                             "a list of plain values")
        return torch.from_numpy(np.ascontiguousarray(value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value), where)
    if isinstance(value, dict):  # History and other dict subclasses -> a plain dict
        out = {}
        for key, item in value.items():
            key = key.item() if isinstance(key, np.generic) else key
            if not isinstance(key, (str, int, float, bool, type(None))):
                raise ValueError(f"{where} has a key of type {type(key).__name__} ({key!r}); "
                                 "checkpoint dict keys must be strings or numbers")
            out[key] = _plain(item, f"{where}[{key!r}]")
        return out
    if isinstance(value, (list, tuple)):
        items = [_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)  # torch.Size -> tuple
    hint = " (pass str(path))" if isinstance(value, os.PathLike) else ""
    raise ValueError(f"{where} is a {type(value).__name__}, which a checkpoint cannot hold "
                     "(torch.load(weights_only=True) would refuse it): use None, bools, numbers, "
                     f"strings, tensors, NumPy values, dataclasses, or lists / dicts of them{hint}")


# --- the checksum -----------------------------------------------------------------------------

def _update(h, value) -> None:
    """Feed ``value`` into the hash ``h``: structure, types and every tensor's raw bytes."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, dict):
        h.update(f"D{len(value)}|".encode())
        for key, item in value.items():
            _update(h, key)
            _update(h, item)
    elif isinstance(value, (list, tuple)):
        h.update(f"{'L' if isinstance(value, list) else 'U'}{len(value)}|".encode())
        for item in value:
            _update(h, item)
    else:
        h.update(f"S{type(value).__name__}:{value!r}|".encode())


def _checksum(payload: dict) -> str:
    h = hashlib.sha256()
    _update(h, {k: v for k, v in payload.items() if k not in ("format", "checksum")})
    return h.hexdigest()


# --- saving -----------------------------------------------------------------------------------

def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_checkpoint(path: str | Path, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None = None, **extra) -> Path:
    """Save ``model``'s weights, ``optimizer``'s state and ``extra`` to ``path``, atomically.

    ``extra``: plain values (see the module docstring); a ``History``, NumPy values and
    dataclasses are converted, anything else is a ``ValueError`` naming the extra. The names
    ``model``, ``optimizer``, ``format`` and ``checksum`` are taken. Returns the path.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path must be a str or a Path, got {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"path {str(path)!r} is a directory; give a file name, e.g. "
                         f"{str(path / 'model.pt')!r}")
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"optimizer must be a torch.optim.Optimizer or None, got "
                         f"{type(optimizer).__name__}")
    taken = sorted(set(extra) & set(RESERVED))
    if taken:
        raise ValueError(f"extra names {taken} are reserved by the checkpoint format "
                         f"{list(RESERVED)}; rename them")
    # the state dicts as they are (an OrderedDict keeps the modules' version metadata)
    payload = {"format": FORMAT, "model": model.state_dict(),
               "optimizer": optimizer.state_dict() if optimizer is not None else None}
    payload.update({name: _plain(value, f"extra {name!r}") for name, value in extra.items()})
    payload["checksum"] = {"algorithm": "sha256", "digest": _checksum(payload)}

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 -> what open() would have given
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable (POSIX; not possible on Windows)
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        pass
    else:
        try:
            os.fsync(dir_fd)
        except OSError:
            pass
        finally:
            os.close(dir_fd)
    return path


# --- loading ----------------------------------------------------------------------------------

def _read(path: Path, map_location) -> dict:
    """The checkpoint dict at ``path``, or a ValueError that says what is wrong with the file."""
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    if path.is_dir():
        raise ValueError(f"path {str(path)!r} is a directory, not a checkpoint file")
    if path.stat().st_size == 0:
        raise ValueError(f"path {str(path)!r} is empty (0 bytes): not a checkpoint")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError,
            KeyError, IndexError, TypeError, AttributeError, UnicodeDecodeError, OSError) as e:
        if isinstance(e, (PermissionError, FileNotFoundError, IsADirectoryError)):
            raise  # the file system's own errors say it best
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        if "weights only load failed" in str(e).lower() and zipfile.is_zipfile(path):
            raise ValueError(
                f"path {str(path)!r} holds Python objects that weights_only loading refuses, "
                "so it was not written by save_checkpoint; if you trust its source, read it with "
                f"torch.load(path, weights_only=False) ({first})") from None
        raise ValueError(f"path {str(path)!r} is not a readable checkpoint (truncated, "
                         f"corrupted, or not written by torch.save): {first}") from None
    if not isinstance(state, dict):
        raise ValueError(f"path {str(path)!r} is not a checkpoint: it holds a "
                         f"{type(state).__name__}, not the dict save_checkpoint writes")
    if "model" not in state:
        if state and all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(f"path {str(path)!r} is a plain state_dict, not a checkpoint; load "
                             "it with model.load_state_dict(torch.load(path))")
        raise ValueError(f"path {str(path)!r} is not a checkpoint: no 'model' entry (keys: "
                         f"{sorted(map(str, state))[:8]})")
    return state


def _check_structure(state: dict, path: Path) -> None:
    weights = state["model"]
    if not isinstance(weights, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()):
        raise ValueError(f"checkpoint {str(path)!r} is malformed: 'model' must be a dict of "
                         f"named tensors, got {type(weights).__name__}")
    opt = state.get("optimizer")
    if opt is not None and not (isinstance(opt, dict) and "state" in opt
                                and "param_groups" in opt):
        raise ValueError(f"checkpoint {str(path)!r} is malformed: 'optimizer' must be an "
                         "optimizer state_dict ('state', 'param_groups') or None")


def _compare(model: nn.Module, weights: dict, path: Path) -> None:
    """ValueError listing how ``weights`` differ from ``model``'s (missing, unexpected, shape)."""
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [f"{k}: checkpoint {tuple(weights[k].shape)}, model {tuple(own[k].shape)}"
              for k in own if k in weights and weights[k].shape != own[k].shape]
    if not (missing or unexpected or shapes):
        return

    def first(items, n=5):
        return ", ".join(items[:n]) + (f", ... ({len(items)} in all)" if len(items) > n else "")

    lines = [f"checkpoint {str(path)!r} does not fit model ({type(model).__name__}): it was "
             "saved from another architecture or configuration"]
    if missing:
        lines.append(f"  missing in the checkpoint ({len(missing)}): {first(missing)}")
    if unexpected:
        lines.append(f"  unexpected in the checkpoint ({len(unexpected)}): {first(unexpected)}")
    if shapes:
        lines.append(f"  shape mismatches ({len(shapes)}): {first(shapes, 3)}")
    raise ValueError("\n".join(lines))


def load_checkpoint(path: str | Path, model: nn.Module | None = None,
                    optimizer: torch.optim.Optimizer | None = None,
                    map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` into ``model`` (and ``optimizer``).

    Returns the whole dict (``"model"``, ``"optimizer"``, the extras). The checksum is verified
    first (a file without one is a legacy checkpoint: checked for structure only). Raises
    ``ValueError`` for an empty, truncated, corrupted or foreign file, a plain state_dict, a
    checkpoint of another architecture (missing / unexpected keys, shape mismatches listed) or
    one without the optimizer state asked for; ``FileNotFoundError`` if there is no file.

    Weights stored in a lower precision (e.g. float16, to keep a shipped file small) are cast to
    the dtype of the model's own tensors by ``load_state_dict``.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path must be a str or a Path, got {type(path).__name__}")
    if model is not None and not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module or None, got {type(model).__name__}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"optimizer must be a torch.optim.Optimizer or None, got "
                         f"{type(optimizer).__name__}")
    path = Path(path)
    state = _read(path, map_location)
    _check_structure(state, path)
    checksum = state.get("checksum")
    if checksum is not None:
        if not (isinstance(checksum, dict) and checksum.get("algorithm") == "sha256"
                and isinstance(checksum.get("digest"), str)):
            raise ValueError(f"checkpoint {str(path)!r} has a malformed checksum entry")
        if _checksum(state) != checksum["digest"]:
            raise ValueError(f"checkpoint {str(path)!r} is corrupted: its SHA-256 checksum does "
                             "not match its contents (the file changed after it was saved); "
                             "refusing to load wrong weights")
    if model is not None:
        _compare(model, state["model"], path)
        model.load_state_dict(state["model"])
    if optimizer is not None:
        if state.get("optimizer") is None:
            raise ValueError(f"{path} holds no optimizer state")
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, RuntimeError) as e:
            raise ValueError(f"optimizer does not match the optimizer state in {str(path)!r} "
                             f"(another optimizer, or other parameters): {e}") from None
    return state
