"""The one training loop of the course, for every model from FCN to Panoptic FPN.

    history = fit(model, train_set, val_set, epochs=10, lr=1e-3)           # a semantic model
    evaluate(model, val_set)        # {"miou": ..., "pixel_accuracy": ..., "iou": tensor[K], ...}
    history = fit(mask_rcnn, instances, max_steps=1000, scheduler="warmup_cosine",
                  warmup_steps=100, evaluator=evaluate_instances, val_data=held_out)

The loop asks for a dict of named losses, sums them, logs each, scales and steps -- the design of
Detectron2's ``SimpleTrainer`` and HF's ``Trainer``. Semantic models are the special case
``{"loss": loss_fn(model(images), masks)}``; detection models compute their own loss dict; a
``step`` function covers trainers with custom logic. Every feature below then serves every model:

- **Device**: CUDA when present, else CPU (``get_device``); the model is moved for you, and so is
  every batch, targets included (tensors inside dicts and lists too).
- **Mixed precision** on CUDA (``torch.autocast`` float16 + ``GradScaler``): about twice the speed
  on Colab's GPUs; CPU runs stay in float32, where autocast would only slow things down.
- **AdamW and a per-step schedule**: cosine decay to 0, or a linear warm-up then cosine (what
  detection models need: their first steps, with random heads, give large gradients), or
  constant. Train for ``epochs`` or for ``max_steps`` iterations, as detection usually is.
- **A text progress bar** (tqdm) with the epoch, loss and a validation score. It is a text bar on
  purpose: it updates live in Jupyter, Colab and a terminal, and an executed notebook stores its
  final line, so the static book shows the finished bar instead of an empty widget box.
- **History** of every loss and validation score per epoch (and every ``log_every`` steps), and
  **checkpoints** that round-trip (:mod:`segcourse.checkpoints`).
- **Seeded**: with the same seed, data order and dropout are the same on every run.
- **Several GPUs** (or CPU processes): launched with ``torchrun --nproc_per_node=N``, after
  :func:`setup_distributed`, ``fit`` wraps the model in ``DistributedDataParallel``, gives each
  process its own shard of the data (``DistributedSampler``), shows the bar on rank 0 only, and
  computes validation metrics over all processes' shards.

Scoring lives in :mod:`segcourse.evaluate` -- ``evaluate`` (semantic), ``evaluate_instances``
(mask AP), ``evaluate_panoptic`` (mask AP and PQ) -- with ``make_loader``, which turns data into
batches for both; checkpoints in :mod:`segcourse.checkpoints`. This module re-exports
``evaluate``, ``predict``, ``make_loader`` and the checkpoint functions, so one import serves a
chapter.
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
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm.std import tqdm

from ._checks import check_count
from .checkpoints import load_checkpoint, save_checkpoint
from .evaluate import (
    _as_dataset,
    _autocast,
    _check_semantic_batch,
    _default_loss,
    _param_dtype,
    evaluate,
    is_distributed,
    make_loader,
    predict,
    to_device,
)

__all__ = ["fit", "evaluate", "predict", "History", "get_device", "seed_everything",
           "save_checkpoint", "load_checkpoint", "make_loader", "to_device", "lr_factor",
           "setup_distributed", "is_distributed"]

SCHEDULERS = ("cosine", "warmup_cosine", None)


# --- device, processes, seeds ---------------------------------------------------------------------

def get_device() -> torch.device:
    """``cuda`` if a GPU is visible (this process's GPU under torchrun), else ``cpu``."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    if is_distributed():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cuda", torch.cuda.current_device())


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
    """Per-epoch lists: ``history["train_loss"]`` or ``history.train_loss``.

    Besides :attr:`KEYS`, a model that returns several losses gets one list per loss name
    (``history["loss_rpn_box"]``), an evaluator one per score (``history["val_pq"]``), and
    ``history["log"]`` holds a row every ``log_every`` steps (see :func:`fit`).
    """

    KEYS = ("epoch", "train_loss", "val_loss", "val_miou", "val_pixel_accuracy", "lr", "seconds",
            "log")

    def __init__(self, *args, **kwargs):
        super().__init__({key: [] for key in self.KEYS})
        self.update(*args, **kwargs)

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def last(self, key: str):
        return self[key][-1] if self.get(key) else None


def _batch_size(batch) -> int:
    """Number of samples in a batch: the length of its first element (images, usually)."""
    first = batch[0] if isinstance(batch, (list, tuple)) else \
        next(iter(batch.values())) if isinstance(batch, dict) else batch
    return len(first)


# --- schedule and losses --------------------------------------------------------------------------

def lr_factor(step: int, total_steps: int, scheduler: str | None, warmup_steps: int = 0) -> float:
    """The learning-rate multiplier at ``step`` (0-based) of ``total_steps``.

    ``"cosine"``: 0.5 (1 + cos(pi step / total)), from 1 down towards 0 (SGDR without restarts,
    Loshchilov & Hutter 2017). ``"warmup_cosine"``: (step + 1) / warmup for the first
    ``warmup_steps`` steps, then the same cosine over the remaining steps (Goyal et al. 2017's
    warm-up; Detectron2 warms up linearly too, from a factor of 0.001). ``None``: 1.
    """
    if scheduler is None:
        return 1.0
    if scheduler == "warmup_cosine" and step < warmup_steps:
        return (step + 1) / warmup_steps
    start = warmup_steps if scheduler == "warmup_cosine" else 0
    return 0.5 * (1 + math.cos(math.pi * (step - start) / max(total_steps - start, 1)))


def grad_scaler(enabled: bool):
    """A CUDA ``GradScaler``: ``torch.amp.GradScaler("cuda")`` (torch >= 2.3), else the older
    ``torch.cuda.amp.GradScaler`` (torch 2.1, 2.2), which newer versions deprecate."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler("cuda", enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)


def _losses(net, model, batch, step, loss_fn, autocast,
            check_masks: bool = False) -> dict[str, torch.Tensor]:
    """The named losses of one batch, by one of the three contracts of :func:`fit`."""
    if step is not None:
        with autocast():
            out, source = step(net, batch), "step"
    elif getattr(model, "returns_losses", False):
        images, targets = batch
        expected = _param_dtype(model)  # the model checks the rest; the dtype, before autocast
        if (isinstance(images, torch.Tensor) and images.is_floating_point()
                and expected is not None and images.dtype != expected):
            raise ValueError(f"train_data: images are {images.dtype} but the model's parameters "
                             f"are {expected}: pass images.to({expected}) or model.to("
                             f"{images.dtype})")
        with autocast():
            out, source = net(images, targets), "model(images, targets)"
    else:
        images, target = batch
        _check_semantic_batch(images, target, model, "train_data", labels=check_masks)
        with autocast():
            logits = net(images)
        out, source = {"loss": loss_fn(logits.float(), target)}, "loss_fn"
    if isinstance(out, torch.Tensor):
        out = {"loss": out}
    if (not isinstance(out, dict) or not out
            or not all(isinstance(v, torch.Tensor) and v.numel() == 1 for v in out.values())):
        raise ValueError(f"{source} must return a scalar loss tensor or a non-empty dict of "
                         f"them, got {type(out).__name__}")
    clash = set(out) & set(History.KEYS) | ({"loss"} & set(out) if len(out) > 1 else set())
    if clash:  # "loss" alone is the semantic case; beside other names it would mean the total
        raise ValueError(f"loss names must differ from History keys and from 'loss' when there "
                         f"are several, got {sorted(clash)} in {source}'s dict")
    return out


# --- the loop -------------------------------------------------------------------------------------

def fit(model: nn.Module, train_data, val_data=None, *, epochs: int | None = 5,
        max_steps: int | None = None, lr: float = 1e-3, weight_decay: float = 1e-4,
        batch_size: int = 16, loss_fn: Callable | None = None, step: Callable | None = None,
        optimizer: torch.optim.Optimizer | None = None, scheduler: str | None = "cosine",
        warmup_steps: int = 0, grad_clip: float | None = None,
        device: str | torch.device | None = None, amp: bool | None = None,
        progress: bool = True, seed: int = 0, checkpoint: str | Path | None = None,
        evaluator: Callable | None = None, num_classes: int | None = None,
        ignore_index: int = 255, log_every: int | None = None) -> History:
    """Train ``model`` and return its :class:`History`.

    Where the losses come from -- three cases:

    1. **Semantic models** (the default): ``model(images)`` gives logits ``[B, K, H, W]`` and the
       loss is ``loss_fn(logits, masks)``; by default cross-entropy ignoring ``ignore_index``
       with ``segcourse.losses``' contract: labels checked, and a batch whose pixels are all
       ignored gives 0 with a gradient (torch's ``F.cross_entropy`` gives NaN), so the history
       stays finite. With the default loss the masks must be int64 ``[N, H, W]``.
    2. **Models that return their losses**, marked by the class attribute
       ``returns_losses = True`` (Mask R-CNN, Panoptic FPN, Mask2Former, EoMT): in training
       mode ``model(images, targets)`` returns a dict of named scalar losses, e.g.
       ``{"loss_rpn_box": ..., "loss_mask": ...}``.
    3. **A step function** ``step(model, batch) -> dict[str, Tensor]`` (or one tensor) for
       trainers with their own logic (click simulation, several forward passes). It gets the
       batch already on the device and the module to call -- under torchrun the
       ``DistributedDataParallel`` wrapper (the model itself is its ``.module``).

    A model with a method ``plan_training(total_steps)`` is told the run's number of optimizer
    steps before the first one (EoMT anneals its masked attention over the run).

    Bad data is a ``ValueError`` at the first batch, naming ``train_data`` or ``val_data``: an
    empty dataset, a tuple ``(images, masks)`` of different N, masks ``[N, 1, H, W]`` or of a
    float / uint8 dtype, images whose dtype is not the model's (``images.float()`` or
    ``model.double()``, the message says which).

    The losses are summed into the one that is back-propagated; each is also averaged per epoch
    into ``history[name]`` (when there is more than the single ``"loss"``). A non-finite loss
    stops training with ``FloatingPointError``, as Detectron2 does.

    Args:
        train_data, val_data: a Dataset of ``(image, target)`` -- target a label map, or a dict
            for detection (the dataset's ``collate_fn`` makes the batches) -- a DataLoader, or a
            tuple ``(images, masks)``. ``val_data`` is evaluated after every epoch.
        epochs, max_steps: train for ``epochs`` passes over the data, or ``max_steps`` optimizer
            steps (the data is cycled as needed), whichever ends first; ``epochs=None``: steps
            only.
        lr, weight_decay, batch_size: AdamW's, unless ``optimizer`` is given.
        scheduler: per-step ``"cosine"`` (decay to 0), ``"warmup_cosine"`` (linear warm-up for
            ``warmup_steps``, then cosine to 0) or ``None`` (constant); see :func:`lr_factor`.
        grad_clip: clip the global gradient norm to this value (None: no clipping).
        device: defaults to :func:`get_device`. amp: mixed precision, default on for CUDA only.
        progress: show a tqdm bar. seed: seeds the data order (and torch's global RNG).
        checkpoint: if given, save model + optimizer + history there at the end of training.
        evaluator: ``evaluator(model, val_data) -> dict``; its numbers go to ``history["val_" +
            name]``. Default :func:`evaluate` (mIoU, pixel accuracy, loss) for semantic models;
            models that return losses need one, e.g. ``segcourse.evaluate.evaluate_panoptic``.
        num_classes, ignore_index: for the default evaluator (K inferred from the logits).
        log_every: also record a row ``{"step", "epoch", "lr", "loss", <each loss>, "seconds"}``
            in ``history["log"]`` after the first step, every ``log_every`` steps and the last;
            losses there are means over the steps since the previous row.
    """
    if epochs is None and max_steps is None:
        raise ValueError("give epochs or max_steps (or both)")
    for name, value in (("epochs", epochs), ("max_steps", max_steps), ("log_every", log_every)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be an int >= 1 or None, got {value!r}")
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {scheduler!r}")
    if scheduler != "warmup_cosine" and warmup_steps != 0:
        raise ValueError(f"warmup_steps={warmup_steps} needs scheduler='warmup_cosine'")
    returns_losses = bool(getattr(model, "returns_losses", False))
    if loss_fn is not None and (step is not None or returns_losses):
        raise ValueError("loss_fn is for models that return logits; with step= or a model "
                         "that returns its losses, compute the loss there")
    if val_data is not None and evaluator is None and returns_losses:
        raise ValueError(f"{type(model).__name__} returns losses, not logits: pass an evaluator "
                         "for val_data (e.g. segcourse.evaluate.evaluate_panoptic)")
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    check_count(batch_size, "batch_size")
    if grad_clip is not None and not (isinstance(grad_clip, (int, float))
                                      and not isinstance(grad_clip, bool) and grad_clip > 0):
        raise ValueError(f"grad_clip must be a number > 0 or None, got {grad_clip!r}")
    if checkpoint is not None and Path(checkpoint).is_dir():  # refused now, not after training
        raise ValueError(f"checkpoint {str(checkpoint)!r} is a directory; give a file name, "
                         f"e.g. {str(Path(checkpoint) / 'model.pt')!r}")
    if val_data is not None and evaluator is None:
        _as_dataset(val_data, "val_data")  # before training, not after the first epoch
    device = torch.device(device) if device is not None else get_device()
    use_amp = device.type == "cuda" if amp is None else bool(amp)
    if use_amp and device.type != "cuda":
        raise ValueError("amp=True needs a CUDA device; on CPU train in float32")
    if use_amp and _param_dtype(model) not in (torch.float32, None):
        raise ValueError(f"amp=True trains a float32 model in mixed precision; the model's "
                         f"parameters are {_param_dtype(model)}: pass model.float() or amp=False")
    torch.manual_seed(seed)
    check_masks = loss_fn is None  # a custom loss decides what its targets are
    if loss_fn is None:
        def loss_fn(logits, target):
            return _default_loss(logits, target, ignore_index)
    loader = make_loader(train_data, batch_size, shuffle=True, seed=seed, name="train_data")
    if len(loader) == 0:
        raise ValueError("train_data gives no batch (empty, or fewer items than processes)")
    total_steps = min(epochs * len(loader) if epochs else max_steps, max_steps or math.inf)
    if scheduler == "warmup_cosine" and not 1 <= warmup_steps < total_steps:
        raise ValueError(f"warmup_steps must be in 1..{total_steps - 1} (the training steps - "
                         f"1), got {warmup_steps}")
    # a model whose training schedule follows the run's length (EoMT's mask annealing)
    plan = getattr(model, "plan_training", None)
    if callable(plan):
        plan(total_steps)
    model.to(device)
    net = model  # what the forward pass runs: the model itself, or its DDP wrapper
    if is_distributed():
        net = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
        progress = progress and dist.get_rank() == 0
    if optimizer is None:
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    scaler = grad_scaler(use_amp)

    def autocast():
        return _autocast(device, use_amp)

    history = History()
    # 80 columns, the book's width (tqdm trims the line to ncols); no rate, the clock says it
    bar = tqdm(total=total_steps, desc="training", file=sys.stdout, disable=not progress,
               mininterval=0.5, dynamic_ncols=False, ncols=80,
               bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                          "[{elapsed}<{remaining}{postfix}]")
    num_epochs, done, began = math.ceil(total_steps / len(loader)), 0, time.perf_counter()
    window: dict[str, float] = {}  # loss sums since the last log row, and their sample count
    val_text = ""
    for epoch in range(1, num_epochs + 1):
        model.train()
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every rank
        start, sums = time.perf_counter(), {}
        for batch in loader:
            if done == total_steps:
                break
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * lr_factor(done, total_steps, scheduler, warmup_steps)
            batch = to_device(batch, device)
            losses = _losses(net, model, batch, step, loss_fn, autocast, check_masks)
            loss = sum(v.float() for v in losses.values())
            # one transfer for every logged number (a GPU sync per step, as any loss print)
            values = torch.stack([loss.detach(), *(v.detach().float().reshape(())
                                                   for v in losses.values())]).tolist()
            if not math.isfinite(values[0]):
                raise FloatingPointError(f"loss is {values[0]} at step {done}: " + ", ".join(
                    f"{k} {v:.4g}" for k, v in zip(losses, values[1:])))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if grad_clip is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
            done += 1
            n = _batch_size(batch)
            named = dict(zip(losses, values[1:])) if list(losses) != ["loss"] else {}
            for totals in (sums, window):
                for key, value in {"train_loss": values[0], **named}.items():
                    totals[key] = totals.get(key, 0.0) + value * n
                    totals["#" + key] = totals.get("#" + key, 0) + n
            if log_every and (done == 1 or done % log_every == 0 or done == total_steps):
                history["log"].append({
                    "step": done, "epoch": epoch, "lr": optimizer.param_groups[0]["lr"],
                    **_means(window, rename={"train_loss": "loss"}),
                    "seconds": round(time.perf_counter() - began, 1)})
                window = {}
            bar.set_postfix_str(f"epoch {epoch}/{num_epochs} loss "
                                f"{sums['train_loss'] / sums['#train_loss']:.4f}{val_text}",
                                refresh=False)
            bar.update()
        if is_distributed():
            _average_buffers(model)
        history["epoch"].append(epoch)
        for key, value in _means(sums).items():
            history.setdefault(key, []).append(value)
        history["lr"].append(optimizer.param_groups[0]["lr"])
        if val_data is not None:
            if evaluator is None:
                try:
                    scores = evaluate(model, val_data, num_classes, device=device,
                                      batch_size=max(batch_size, 32), ignore_index=ignore_index,
                                      loss_fn=None if check_masks else loss_fn, amp=use_amp)
                except ValueError as e:  # evaluate's "data: ..." is fit's val_data
                    if not str(e).startswith("data"):
                        raise
                    raise ValueError("val_data" + str(e)[len("data"):]) from None
            else:
                scores = evaluator(model, val_data)
            numbers = {k: float(v) for k, v in scores.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)}
            for key, value in numbers.items():
                history.setdefault("val_" + key, []).append(value)
            shown = "miou" if "miou" in numbers else next(iter(numbers), None)
            val_text = f" val {'mIoU' if shown == 'miou' else shown} {numbers[shown]:.3f}" \
                if shown else ""
            bar.set_postfix_str(f"epoch {epoch}/{num_epochs} loss "
                                f"{history.last('train_loss'):.4f}{val_text}", refresh=True)
        history["seconds"].append(time.perf_counter() - start)
    bar.close()
    if checkpoint is not None and (not is_distributed() or dist.get_rank() == 0):
        save_checkpoint(checkpoint, model, optimizer, epoch=history["epoch"][-1], step=done,
                        history=dict(history))
    if is_distributed():
        dist.barrier()
    return history


def _means(sums: dict, rename: dict | None = None) -> dict[str, float]:
    """``{name: sum / count}`` from the running ``sums[name]`` and ``sums["#" + name]``."""
    rename = rename or {}
    return {rename.get(k, k): v / sums["#" + k] for k, v in sums.items() if not k.startswith("#")}


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
