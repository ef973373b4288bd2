"""A small, complete training loop shared by every chapter.

    history = fit(model, train_set, val_set, epochs=10, lr=1e-3)
    evaluate(model, val_set)        # {"miou": ..., "pixel_accuracy": ..., "iou": tensor[K], ...}

What it does, and why:

- **Device**: CUDA when present, else CPU (``get_device``); the model is moved for you.
- **Mixed precision** on CUDA (``torch.autocast`` float16 + ``GradScaler``): about twice the speed
  on Colab's GPUs; CPU runs stay in float32, where autocast would only slow things down.
- **AdamW with a cosine learning-rate schedule** stepped per batch: a robust default for every
  model in the course, from U-Net to SegFormer.
- **A text progress bar** (tqdm) with the epoch, loss and validation mIoU. It is a text bar on
  purpose: it updates live in Jupyter, Colab and a terminal, and an executed notebook stores its
  final line, so the static book shows the finished bar instead of an empty widget box.
- **History** of loss and metrics per epoch, and **checkpoints** that round-trip.
- **Seeded**: with the same seed, data order and dropout are the same on every run.
- **Several GPUs** (or CPU processes): launched with ``torchrun --nproc_per_node=N``, after
  :func:`setup_distributed`, ``fit`` wraps the model in ``DistributedDataParallel``, gives each
  process its own shard of the data (``DistributedSampler``), shows the bar on rank 0 only, and
  computes validation metrics from the confusion matrix summed over all processes.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset, TensorDataset
from tqdm.std import tqdm

from .metrics import SegmentationMetric

__all__ = ["fit", "evaluate", "predict", "History", "get_device", "seed_everything",
           "save_checkpoint", "load_checkpoint", "make_loader", "setup_distributed",
           "is_distributed"]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_device() -> torch.device:
    """``cuda`` if a GPU is visible (this process's GPU under torchrun), else ``cpu``."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) if is_distributed() else torch.cuda.current_device())


def setup_distributed(backend: str | None = None) -> tuple[int, int]:
    """Join the process group that ``torchrun`` describes in the environment; return (rank, world).

    NCCL on GPUs, gloo on CPUs. Without torchrun's variables it does nothing and returns (0, 1),
    so the same script also runs as a single process.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1
    if not is_distributed():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and PyTorch (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


class History(dict):
    """Per-epoch lists: ``history["train_loss"]`` or ``history.train_loss``."""

    KEYS = ("epoch", "train_loss", "val_loss", "val_miou", "val_pixel_accuracy", "lr", "seconds")

    def __init__(self, *args, **kwargs):
        super().__init__({key: [] for key in self.KEYS})
        self.update(*args, **kwargs)

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def last(self, key: str):
        return self[key][-1] if self[key] else None


def make_loader(data, batch_size: int, shuffle: bool, seed: int = 0, **kwargs) -> DataLoader:
    """A ``DataLoader`` from a DataLoader (returned as is), a Dataset, or ``(images, masks)``."""
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        data = TensorDataset(*data)
    elif getattr(data, "transform", "absent") is None and hasattr(data, "tensors"):
        # An untransformed ShapesDataset: render once, then batch from memory (much faster).
        data = TensorDataset(*data.tensors())
    if not isinstance(data, Dataset):
        raise ValueError("data must be a Dataset of (image, mask), a DataLoader, or a tuple "
                         f"(images, masks) of tensors; got {type(data).__name__}")
    if is_distributed():
        rank, world = dist.get_rank(), dist.get_world_size()
        if shuffle:  # training: every process gets a different, equally long shard per epoch
            sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True,
                                         seed=seed, drop_last=True)
            return DataLoader(data, batch_size=batch_size, sampler=sampler, **kwargs)
        # evaluation: disjoint shards, no padding duplicates; the results are summed later
        data = Subset(data, range(rank, len(data), world))
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator, **kwargs)


def _default_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, target, ignore_index=255)


def fit(model: nn.Module, train_data, val_data=None, *, epochs: int = 5, lr: float = 1e-3,
        weight_decay: float = 1e-4, batch_size: int = 16,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        optimizer: torch.optim.Optimizer | None = None, scheduler: str | None = "cosine",
        device: str | torch.device | None = None, amp: bool | None = None,
        progress: bool = True, seed: int = 0, checkpoint: str | Path | None = None,
        num_classes: int | None = None, ignore_index: int = 255,
        grad_clip: float | None = None) -> History:
    """Train ``model`` and return its :class:`History`.

    Args:
        model: maps images ``[B, C, H, W]`` to logits ``[B, K, H, W]``.
        train_data, val_data: a Dataset of ``(image, mask)``, a DataLoader, or a tuple
            ``(images, masks)``. ``val_data`` is evaluated after every epoch (mIoU, loss).
        epochs, lr, weight_decay, batch_size: the schedule (AdamW unless ``optimizer`` is given).
        loss_fn: ``loss_fn(logits, target) -> scalar``; cross-entropy ignoring 255 by default.
        scheduler: ``"cosine"`` (per-step cosine decay to 0) or ``None`` (constant lr).
        device: defaults to :func:`get_device`. amp: mixed precision, default on for CUDA only.
        progress: show a tqdm bar. seed: seeds the data order (and torch's global RNG).
        checkpoint: if given, save model + optimizer + history there at the end of training.
        num_classes: for validation metrics; inferred from the logits when omitted.
        grad_clip: clip the global gradient norm to this value (None: no clipping).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if scheduler not in ("cosine", None):
        raise ValueError(f"scheduler must be 'cosine' or None, got {scheduler!r}")
    device = torch.device(device) if device is not None else get_device()
    use_amp = device.type == "cuda" if amp is None else bool(amp)
    if use_amp and device.type != "cuda":
        raise ValueError("amp=True needs a CUDA device; on CPU train in float32")
    torch.manual_seed(seed)
    loss_fn = loss_fn or _default_loss
    loader = make_loader(train_data, batch_size, shuffle=True, seed=seed)
    model.to(device)
    net = model  # what the forward pass runs: the model itself, or its DDP wrapper
    if is_distributed():
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        progress = progress and dist.get_rank() == 0
    if optimizer is None:
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    total_steps = epochs * len(loader)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    history = History()
    bar = tqdm(total=total_steps, desc="training", unit="batch", file=sys.stdout,
               disable=not progress, mininterval=0.5, dynamic_ncols=False, ncols=110)
    step = 0
    for epoch in range(1, epochs + 1):
        model.train()
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every rank
        start, running, count = time.perf_counter(), 0.0, 0
        for images, target in loader:
            if scheduler == "cosine":
                factor = 0.5 * (1 + math.cos(math.pi * step / total_steps))
                for group, base in zip(optimizer.param_groups, base_lrs):
                    group["lr"] = base * factor
            images = images.to(device, non_blocking=True)
            target = target.to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                logits = net(images)
            loss = loss_fn(logits.float(), target)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if grad_clip is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
            running += float(loss.detach()) * images.shape[0]
            count += images.shape[0]
            step += 1
            bar.set_postfix_str(f"epoch {epoch}/{epochs} loss {running / count:.4f}"
                                + (f" val mIoU {history.last('val_miou'):.3f}"
                                   if history.last("val_miou") is not None else ""), refresh=False)
            bar.update()
        if is_distributed():
            _average_buffers(model)
        history["epoch"].append(epoch)
        history["train_loss"].append(running / max(count, 1))
        history["lr"].append(optimizer.param_groups[0]["lr"])
        if val_data is not None:
            scores = evaluate(model, val_data, num_classes, device=device, batch_size=max(batch_size, 32),
                              ignore_index=ignore_index, loss_fn=loss_fn, amp=use_amp)
            history["val_loss"].append(scores["loss"])
            history["val_miou"].append(scores["miou"])
            history["val_pixel_accuracy"].append(scores["pixel_accuracy"])
            bar.set_postfix_str(f"epoch {epoch}/{epochs} loss {history.last('train_loss'):.4f} "
                                f"val mIoU {scores['miou']:.3f}", refresh=True)
        history["seconds"].append(time.perf_counter() - start)
    bar.close()
    if checkpoint is not None and (not is_distributed() or dist.get_rank() == 0):
        save_checkpoint(checkpoint, model, optimizer, epoch=epochs, history=dict(history))
    if is_distributed():
        dist.barrier()
    return history


@torch.no_grad()
def _average_buffers(model: nn.Module) -> None:
    """Average floating buffers (BatchNorm running statistics) over all processes.

    DDP copies rank 0's buffers into every process at the start of each forward pass, but the
    last forward leaves each process with statistics of its own batch. Averaging them makes
    every rank hold the same model (and evaluate identically) at the end of an epoch.
    """
    world = dist.get_world_size()
    for buffer in model.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer)
            buffer /= world


@torch.no_grad()
def evaluate(model: nn.Module, data, num_classes: int | None = None, *,
             device: str | torch.device | None = None, batch_size: int = 32,
             ignore_index: int = 255, loss_fn=None, amp: bool | None = None) -> dict:
    """Metrics of ``model`` on ``data`` from one confusion matrix over the whole set.

    Returns ``{"miou", "pixel_accuracy", "mean_accuracy", "iou" (tensor[K], NaN = absent),
    "confusion_matrix", "loss"}``. The model's train/eval mode is restored afterwards.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    use_amp = device.type == "cuda" if amp is None else bool(amp)
    loss_fn = loss_fn or _default_loss
    was_training = model.training
    model.eval()
    metric, total_loss, count = None, 0.0, 0
    try:
        for images, target in make_loader(data, batch_size, shuffle=False):
            images, target = images.to(device), target.to(device)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                logits = model(images)
            logits = logits.float()
            if metric is None:
                metric = SegmentationMetric(num_classes or logits.shape[1], ignore_index)
            metric.update(logits.argmax(1), target)
            loss = loss_fn(logits, target)
            total_loss += float(loss) * images.shape[0]
            count += images.shape[0]
    finally:
        model.train(was_training)
    if is_distributed():  # sum the matrices and losses of every process's shard
        # K from a process that saw data: a shard can be empty (fewer images than processes).
        # Every process takes part in this reduction, so the collectives stay in step.
        k = torch.tensor([metric.num_classes if metric is not None else num_classes or 0],
                         device=device)
        dist.all_reduce(k, op=dist.ReduceOp.MAX)
        if int(k) == 0:
            raise ValueError("evaluate() got an empty dataset")
        if metric is None:
            metric = SegmentationMetric(int(k), ignore_index)
        cm = metric.cm.to(device)
        totals = torch.tensor([total_loss, count], dtype=torch.float64, device=device)
        dist.all_reduce(cm)
        dist.all_reduce(totals)
        metric.cm = cm.cpu()
        total_loss, count = float(totals[0]), int(totals[1])
    if metric is None or count == 0:
        raise ValueError("evaluate() got an empty dataset")
    scores = metric.compute()
    scores["loss"] = total_loss / count
    return scores


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 32,
            device: str | torch.device | None = None, return_probs: bool = False) -> torch.Tensor:
    """Predicted labels ``[N, H, W]`` (or softmax probabilities ``[N, K, H, W]``), on the CPU."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    outputs = []
    try:
        for start in range(0, images.shape[0], batch_size):
            logits = model(images[start:start + batch_size].to(device)).float()
            outputs.append((logits.softmax(1) if return_probs else logits.argmax(1)).cpu())
    finally:
        model.train(was_training)
    return torch.cat(outputs)


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
    """Load a checkpoint written by :func:`save_checkpoint` into ``model`` (and ``optimizer``)."""
    state = torch.load(path, map_location=map_location, weights_only=True)
    if model is not None:
        model.load_state_dict(state["model"])
    if optimizer is not None:
        if state.get("optimizer") is None:
            raise ValueError(f"{path} holds no optimizer state")
        optimizer.load_state_dict(state["optimizer"])
    return state
