"""Measure models side by side: parameters, GFLOPs, CPU latency and mIoU after the same training.

Used by chapter 9 and by ``benchmarks/side_by_side.py`` (which regenerates the chapter's table,
on a GPU too), so both report numbers measured the same way:

- **parameters**: trainable and frozen, everything in ``model.parameters()``;
- **GFLOPs**: floating-point operations of one forward pass in eval mode, counted by
  ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add counts as 2), for one image,
  attention included on every device (see :func:`_flop_counter`);
- **latency**: median wall time of a forward pass of one image on the CPU, after a warm-up,
  with the process's current number of threads;
- **mIoU**: on the validation set after ``fit`` with the same epochs, batch size and learning
  rate for every model.

:data:`CPU_BUDGET` is the chapter's laptop budget; the script's defaults are the same numbers.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from . import models
from ._checks import check_count
from .data import InstanceTargets
from .evaluate import evaluate_panoptic
from .train import evaluate, fit, seed_everything

__all__ = ["CPU_BUDGET", "count_parameters", "count_flops", "gflops", "gflops_by_module",
           "median_ms", "median_seconds", "cpu_latency", "profile", "compare_models",
           "format_table", "answer_latency", "panoptic_profile", "format_panoptic_table",
           "prompt_cost"]

# The shared budget of chapter 9 on a 2-core CPU (about a minute for all nine models): few
# images but many small steps, which teaches a model more per second than a few large batches.
CPU_BUDGET = dict(train_samples=256, val_samples=100, size=64, epochs=2, batch_size=8, lr=2e-3)


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """``softmax(q k^T) v`` as two batched matrix products: 2 b h n m (d + d_v) FLOPs."""
    *batch, n, d = query_shape
    m, d_v = key_shape[-2], value_shape[-1]
    heads = 1
    for size in batch:
        heads *= size
    return 2 * heads * n * m * d + 2 * heads * n * m * d_v


# Before torch 2.4 the counter records per-module counts only for the module it is given
# (``mods=``); 2.4 and later track every module and deprecate the argument.
_MODS_NEEDED = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) < (2, 4)


def _flop_counter(model: nn.Module | None = None) -> FlopCounterMode:
    """A FLOP counter that also counts fused attention on the CPU.

    ``F.scaled_dot_product_attention`` on CPU tensors dispatches to one fused kernel that
    PyTorch's counter has no formula for, so it silently counts 0 FLOPs for every attention
    layer (the CUDA kernels and the decomposed version on the meta device are counted).
    """
    cpu_attention = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    mapping = {cpu_attention: _sdpa_flops} if cpu_attention is not None else {}
    mods = {"mods": model} if _MODS_NEEDED and model is not None else {}
    return FlopCounterMode(display=False, custom_mapping=mapping, **mods)


def _device(model: nn.Module) -> torch.device:
    """Where the model's parameters live (the CPU for a module without any)."""
    return next(model.parameters(), torch.empty(0)).device


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, run) -> FlopCounterMode:
    """Run ``run()`` -- any computation with ``model``, e.g. one of its methods -- in eval mode
    under the FLOP counter and return the counter (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    # The counter's module tracker hooks every module input that requires grad; a parameter
    # passed into a submodule (Mask2Former's query embeddings) then fails under no_grad
    # ("Expected gradient function to be set"). Nothing is trained here: switch grads off.
    trainable = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in trainable:
            p.requires_grad_(False)
        with _flop_counter(model) as counter:
            run()
    finally:
        for p in trainable:
            p.requires_grad_(True)
        model.train(was_training)
    return counter


def _count_flops(model: nn.Module, size: tuple[int, int], in_channels: int) -> FlopCounterMode:
    """One zero image through ``model`` under the counter."""
    x = torch.zeros(1, in_channels, *size, device=_device(model))
    return count_flops(model, lambda: model(x))


@torch.no_grad()
def gflops(model: nn.Module, size: tuple[int, int] = (256, 256), in_channels: int = 3) -> float:
    """GFLOPs of one forward pass on one ``in_channels x H x W`` image (eval mode)."""
    return _count_flops(model, size, in_channels).get_total_flops() / 1e9


@torch.no_grad()
def gflops_by_module(model: nn.Module, size: tuple[int, int] = (256, 256),
                     in_channels: int = 3) -> dict[str, float]:
    """GFLOPs of one forward pass per direct child of ``model`` (in order of definition).

    A child called several times (a shared head, an attention gate) is counted every time; a
    container that is never called itself (an ``nn.ModuleList`` of stages) is the sum of its
    called members. FLOPs of operations outside any child (a functional convolution in
    ``forward``) appear under ``"(own)"``, so the parts always add up to :func:`gflops`.
    """
    counter = _count_flops(model, size, in_channels)
    counts = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}

    def flops_of(module: nn.Module, key: str) -> int:
        if key in counts:                         # called: the counter has its total
            return counts[key]
        return sum(flops_of(child, f"{key}.{name}") for name, child in module.named_children())

    root = type(model).__name__
    parts = {name: flops_of(child, f"{root}.{name}") for name, child in model.named_children()}
    own = counter.get_total_flops() - sum(parts.values())
    if own > 0:
        parts["(own)"] = own
    return {name: flops / 1e9 for name, flops in parts.items()}


def median_ms(fn, *inputs, repeats: int = 7, warmup: int = 1) -> float:
    """Median wall time in milliseconds of ``fn(*inputs)`` after ``warmup`` calls, under
    ``torch.inference_mode`` -- for any callable: a model, a compiled model, an onnxruntime
    session's ``run``. Warm-up pays one-off costs (allocations, kernel choice, compilation)."""
    if not callable(fn):
        raise ValueError(f"fn must be callable, got {type(fn).__name__}")
    repeats = check_count(repeats, "repeats")
    warmup = check_count(warmup, "warmup", minimum=0)
    with torch.inference_mode():
        for _ in range(warmup):
            fn(*inputs)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(*inputs)
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


@torch.no_grad()
def median_seconds(model: nn.Module, run, x: torch.Tensor, repeats: int = 5,
                   warmup: int = 1) -> float:
    """Median wall time of ``run(x)`` with ``model`` on the CPU in eval mode (both restored)."""
    device = _device(model)
    was_training = model.training
    model.cpu().eval()
    try:
        for _ in range(warmup):
            run(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run(x)
            times.append(time.perf_counter() - start)
    finally:
        model.to(device).train(was_training)
    return statistics.median(times)


def cpu_latency(model: nn.Module, size: tuple[int, int] = (256, 256), in_channels: int = 3,
                repeats: int = 5, warmup: int = 1) -> float:
    """Median seconds of a CPU forward pass of one image (the model is copied to the CPU)."""
    return median_seconds(model, model, torch.zeros(1, in_channels, *size), repeats, warmup)


@torch.no_grad()
def answer_latency(model: nn.Module, size: tuple[int, int] = (64, 64), in_channels: int = 3,
                   repeats: int = 11, warmup: int = 1) -> float:
    """Median CPU seconds of a model's whole answer for one image: ``model.segment(x)`` where it
    exists (a mask classifier's forward pass plus its semantic, instance and panoptic
    post-processing), else ``model(x)`` (Panoptic FPN's forward includes NMS and fusion)."""
    x = torch.rand(1, in_channels, *size, generator=torch.Generator().manual_seed(0))
    return median_seconds(model, getattr(model, "segment", None) or model, x, repeats, warmup)


@torch.no_grad()
def prompt_cost(model: nn.Module, repeats: int = 5, timed: bool = True) -> dict:
    """SAM's cost split: the image encoder (once per image) against the prompt encoder + mask
    decoder (once per click: one positive point, three masks).

    Returns ``{"image_size", "encoder_params", "decoder_params", "encoder_gflops",
    "decoder_gflops"}`` and, with ``timed``, ``"encoder_ms"`` and ``"decoder_ms"`` (median CPU
    wall time). The encoder's FLOPs are counted on a copy on the meta device -- shapes only, no
    arithmetic, so ViT-H at 1024 px costs nothing to count; its latency needs ``timed``.
    """
    if not all(hasattr(model, a) for a in ("embed", "decode", "image_encoder")):
        raise ValueError(f"model must be a segcourse Sam, got {type(model).__name__}")
    S = model.config.encoder.image_size
    C, g = model.config.decoder.embed_dim, model.prompt_encoder.embedding_size
    device = _device(model)
    embedding = torch.randn(1, C, g, g, generator=torch.Generator().manual_seed(0)).to(device)
    point = torch.tensor([[[[S / 2, S / 2]]]], device=device)
    label = torch.ones(1, 1, 1, dtype=torch.long, device=device)

    def decode(e=embedding):
        return model.decode(e, point, label, multimask_output=True)

    meta = copy.deepcopy(model.image_encoder).to("meta").eval()
    image = torch.empty(1, 3, S, S, device="meta")
    encoder = count_parameters(model.image_encoder)
    row = {"image_size": S, "encoder_params": encoder,
           "decoder_params": count_parameters(model) - encoder,
           "encoder_gflops": count_flops(meta, lambda: meta(image)).get_total_flops() / 1e9,
           "decoder_gflops": count_flops(model, decode).get_total_flops() / 1e9}
    if timed:
        x = torch.rand(1, 3, S, S, generator=torch.Generator().manual_seed(0))
        row["encoder_ms"] = 1000 * median_seconds(model, model.embed, x, repeats)
        row["decoder_ms"] = 1000 * median_seconds(model, decode, embedding.cpu(), repeats)
    return row


def panoptic_profile(model: nn.Module, scenes, size: tuple[int, int] = (64, 64),
                     repeats: int = 11) -> dict:
    """One row of chapter 10's table: a panoptic model on ``scenes`` (a ``ShapesDataset``).

    ``params``; ``gflops`` of the forward pass and ``latency_ms`` of the whole answer
    (:func:`answer_latency`) at ``size``; mask AP@0.5, PQ, SQ, RQ and PQ of things and stuff
    (``segcourse.evaluate.evaluate_panoptic``); and ``miou`` where the model answers the
    semantic task itself (it has ``semantic``: Panoptic FPN's semantic head knows only stuff
    and "thing").
    """
    row = {"params": count_parameters(model), "gflops": gflops(model, size),
           "latency_ms": 1000 * answer_latency(model, size, repeats=repeats)}
    row.update(evaluate_panoptic(model, InstanceTargets(scenes)))
    if callable(getattr(model, "semantic", None)):
        row["miou"] = evaluate(model, scenes, len(scenes.classes))["miou"]
    return row


def format_panoptic_table(rows: dict) -> str:
    """A plain-text table of :func:`panoptic_profile` rows, ``{model name: row}``."""
    columns = [("params", "params", 10, ","), ("GFLOPs", "gflops", 6, ".2f"),
               ("CPU ms", "latency_ms", 6, ".1f"), ("mIoU", "miou", 5, ".3f"),
               ("AP50", "mask_ap50", 5, ".3f"), ("PQ", "pq", 5, ".3f"),
               ("PQth", "pq_things", 5, ".3f"), ("PQst", "pq_stuff", 5, ".3f")]
    width = max(len(name) for name in rows)
    lines = [" " * width + "".join(f" {title:>{w}}" for title, _, w, _ in columns)]
    for name, r in rows.items():  # "-": a task the model does not answer
        cells = "".join(f" {r[key]:>{w}{fmt}}" if key in r else f" {'-':>{w}}"
                        for _, key, w, fmt in columns)
        lines.append(f"{name:>{width}}{cells}")
    return "\n".join(lines)


def profile(model: nn.Module, size: tuple[int, int] = (256, 256), in_channels: int = 3,
            repeats: int = 5) -> dict:
    """``{"params", "gflops", "latency_ms"}`` of a model at one input size."""
    return {"params": count_parameters(model), "gflops": gflops(model, size, in_channels),
            "latency_ms": 1000 * cpu_latency(model, size, in_channels, repeats)}


def compare_models(names, train_data, val_data, num_classes: int, *, epochs: int = 3,
                   batch_size: int = 32, lr: float = 1e-3,
                   profile_size: tuple[int, int] = (256, 256), repeats: int = 3,
                   device=None, seed: int = 0, progress: bool = False,
                   model_kwargs: dict | None = None, return_models: bool = False):
    """Build, profile and train each registered model with the same budget; one row per model.

    Every model starts from the same seed and sees the same batches in the same order. With
    ``return_models=True`` it returns ``(rows, {name: trained model})``.
    """
    rows, trained = [], {}
    for name in names:
        seed_everything(seed)
        model = models.build(name, num_classes=num_classes, **(model_kwargs or {}).get(name, {}))
        row = {"model": name, **profile(model, profile_size, repeats=repeats)}
        start = time.perf_counter()
        fit(model, train_data, epochs=epochs, batch_size=batch_size, lr=lr, device=device,
            progress=progress, seed=seed)
        row["train_s"] = time.perf_counter() - start
        scores = evaluate(model, val_data, num_classes)
        row["miou"] = scores["miou"]
        row["iou"] = scores["iou"].tolist()
        rows.append(row)
        if return_models:
            trained[name] = model
    return (rows, trained) if return_models else rows


def format_table(rows: list[dict]) -> str:
    """A plain-text table of :func:`compare_models` (or :func:`profile`) rows."""
    header = f"{'model':<16} {'params':>12} {'GFLOPs':>8} {'CPU ms':>8}"
    has_training = "miou" in rows[0]
    if has_training:
        header += f" {'train s':>8} {'mIoU':>6}"
    lines = [header, "-" * len(header)]
    for r in rows:
        line = f"{r['model']:<16} {r['params']:>12,} {r['gflops']:>8.2f} {r['latency_ms']:>8.1f}"
        if has_training:
            line += f" {r['train_s']:>8.1f} {r['miou']:>6.3f}"
        lines.append(line)
    return "\n".join(lines)
