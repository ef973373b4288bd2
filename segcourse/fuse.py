"""Inference-mode fusion that keeps the function: BatchNorm folded into the conv before it.

**The algebra.** In evaluation mode a BatchNorm is a fixed per-channel affine map of its input
``z`` (running statistics ``mu, sigma^2``, affine ``gamma, beta``, ``eps``)::

    BN(z)_c = gamma_c (z_c - mu_c) / sqrt(sigma_c^2 + eps) + beta_c = s_c z_c + t_c,
    s_c = gamma_c / sqrt(sigma_c^2 + eps),    t_c = beta_c - s_c mu_c.

When ``z = W * x + b`` is a convolution, output channel ``c`` is made by the filters ``W_c``
alone, so ``s_c (W_c * x + b_c) + t_c = (s_c W_c) * x + (s_c b_c + t_c)``: one convolution with

    W'_c = s_c W_c,    b'_c = s_c (b_c - mu_c) + beta_c        (b_c = 0 for a conv without bias)

computes conv -> BN, one pass over the map instead of two (:func:`fold_conv_bn`). Padding (of
any ``padding_mode``), stride, dilation and groups act on the input side and are kept as they
are. For a transposed convolution the weight is ``[C_in, C_out / groups, k, k]`` and the output
channel is the second index within each group. BatchNorm without affine takes ``gamma = 1, beta
= 0``; :class:`~segcourse.ops.FrozenBatchNorm2d` is the same map with its buffers. The new
weights are computed in float64 and rounded once to the conv's dtype; the folded conv differs
from conv -> BN by float rounding only (~1e-7 relative in float32).

**Which pairs** (:func:`fold_batchnorm`). Not by module names, which differ from model to
model, but by watching one forward pass on an example input: a forward hook on every
``Conv2d`` / ``ConvTranspose2d`` records the tensor object it returns; a pre-hook on every
BatchNorm checks whether its input *is* (Python ``is``) such a tensor, unmodified (same
in-place version counter). A ``TorchFunctionMode`` sees every torch operation of the pass and
marks a conv whose output is used by anything other than that BatchNorm (a residual ``+``, a
``torch.cat``, an in-place ReLU, a second BatchNorm); reading its shape does not count. A
module called more than once (shared weights) or registered under two names is never folded.
Then every accepted fold is **verified**: the folded copy's output on the example input must
equal the original's within ``rtol`` of each output tensor's largest magnitude (dicts, lists
and tuples of outputs are compared recursively: mask classifiers return dicts, Mask R-CNN a
list of dicts). If the folds together change the output, they are re-applied one at a time and
each one that changes the output is undone.

**Not folded**, and why:

- a BatchNorm after anything but a conv (after an addition, a pooling, a linear layer, a view
  of the conv's output): there is no single conv to absorb it;
- a BatchNorm whose conv's output is also used elsewhere (the other use would see the folded
  values) or was modified in place before it;
- conv or BatchNorm modules called more than once in the pass, or never called (a branch the
  example does not take);
- a BatchNorm without running statistics (``track_running_stats=False`` normalises with the
  batch even in eval); ``nn.SyncBatchNorm`` (a training-time layer: convert it first with
  ``segcourse.ops.convert_frozen_batchnorm``, whose frozen layers are folded); BatchNorm1d/3d;
- convs with a parametrisation (weight norm...), whose weight is not a plain parameter.

The original model is not modified: :func:`fold_batchnorm` works on a deep copy in eval mode.

    >>> from segcourse import models, fuse                             # doctest: +SKIP
    >>> net = models.build("unet", num_classes=3)
    >>> fast, report = fuse.fold_batchnorm(net, torch.randn(1, 3, 64, 64), report=True)
    >>> print(report)                       # 18 of 18 BatchNorm layers folded ...

:func:`for_inference` is the one call for serving: every exact rewrite the course has -- the
BatchNorm folds, and SegFormer's decoder applied folded at each stage's own resolution
(:class:`~segcourse.models.segformer.AllMLPDecoder`, ``fold``) -- on a copy, verified.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.nn.utils import parametrize
from torch.overrides import TorchFunctionMode

from .ops.misc import FrozenBatchNorm2d

__all__ = ["FoldReport", "batchnorm_layers", "fold_conv_bn", "fold_batchnorm", "for_inference"]

CONVS = (nn.Conv2d, nn.ConvTranspose2d)
BATCHNORMS = (nn.BatchNorm2d, FrozenBatchNorm2d)


def batchnorm_layers(model: nn.Module) -> list[str]:
    """Names of the BatchNorm layers in ``model`` (any ``_BatchNorm``, SyncBatchNorm included,
    and :class:`~segcourse.ops.FrozenBatchNorm2d`): what :func:`fold_batchnorm` could remove."""
    kinds = (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d)
    return [name for name, m in model.named_modules() if isinstance(m, kinds)]


# --- One pair --------------------------------------------------------------------------------

def _scale_shift(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, t)`` in float64 with ``BN(z) = s z + t`` per channel (the eval-mode map)."""
    if isinstance(bn, nn.BatchNorm2d):
        if bn.training:
            raise ValueError("bn is in training mode, where it normalises with the batch's "
                             "statistics; call .eval() first (fold_batchnorm does)")
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError("bn has no running statistics (track_running_stats=False): it "
                             "normalises with the batch even in eval mode and cannot be folded")
    elif not isinstance(bn, FrozenBatchNorm2d):
        raise ValueError(f"bn must be an nn.BatchNorm2d or a FrozenBatchNorm2d, got "
                         f"{type(bn).__name__}")
    scale = torch.rsqrt(bn.running_var.detach().double() + bn.eps)
    if bn.weight is not None:  # affine=False: gamma = 1, beta = 0
        scale = scale * bn.weight.detach().double()
    shift = -scale * bn.running_mean.detach().double()
    if bn.bias is not None:
        shift = shift + bn.bias.detach().double()
    return scale, shift


def fold_conv_bn(conv: nn.Conv2d | nn.ConvTranspose2d, bn: nn.Module) -> nn.Conv2d:
    """A new conv equal to ``bn(conv(x))`` with ``bn`` in eval mode (see the module docstring):
    ``W'_c = s_c W_c``, ``b'_c = s_c (b_c - mu_c) + beta_c``, ``s_c = gamma_c / sqrt(var_c +
    eps)``. ``conv`` is an ``nn.Conv2d`` or ``nn.ConvTranspose2d`` (kept: groups, dilation,
    stride, padding and its mode; the result always has a bias); ``bn`` an ``nn.BatchNorm2d``
    in eval mode (affine or not) or a :class:`~segcourse.ops.FrozenBatchNorm2d`. Neither input
    is modified."""
    if not isinstance(conv, CONVS):
        raise ValueError(f"conv must be an nn.Conv2d or nn.ConvTranspose2d, got "
                         f"{type(conv).__name__}")
    if parametrize.is_parametrized(conv):
        raise ValueError("conv has a parametrisation (e.g. weight norm): its weight is computed, "
                         "not stored; remove the parametrisation before folding")
    if not isinstance(bn, BATCHNORMS):
        raise ValueError(f"bn must be an nn.BatchNorm2d or a FrozenBatchNorm2d, got "
                         f"{type(bn).__name__}")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"bn normalises {bn.num_features} channels but conv has "
                         f"{conv.out_channels} output channels")
    scale, shift = _scale_shift(bn)
    scale, shift = scale.to(conv.weight.device), shift.to(conv.weight.device)
    weight = conv.weight.detach().double()
    if isinstance(conv, nn.ConvTranspose2d):
        # [C_in, C_out / g, kh, kw]; output channel i * C_out / g + j is group i, column j
        g = conv.groups
        weight = weight.unflatten(0, (g, -1)) * scale.view(g, 1, -1, 1, 1)
        weight = weight.flatten(0, 1)
    else:  # [C_out, C_in / g, kh, kw]: one output channel per row
        weight = weight * scale.view(-1, 1, 1, 1)
    bias = shift if conv.bias is None else scale * conv.bias.detach().double() + shift
    fused = copy.deepcopy(conv)
    grad = conv.weight.requires_grad
    fused.weight = nn.Parameter(weight.to(conv.weight.dtype), requires_grad=grad)
    fused.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=grad)
    return fused


# --- Finding the pairs in a model -------------------------------------------------------------

# reading these from a conv's output does not use its values
_METADATA = {"shape", "dtype", "device", "ndim", "_version", "layout", "is_cuda", "is_sparse",
             "is_quantized", "is_meta", "requires_grad", "dim", "size", "numel", "nelement",
             "is_contiguous", "is_floating_point", "element_size", "get_device"}


def _tensors(obj):
    """The tensors in a nest of tuples, lists and dicts."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


class _Watch(TorchFunctionMode):
    """Marks every conv whose output is an argument of a torch operation outside the
    BatchNorm that takes it (``inside``: the input of the BatchNorm call now running)."""

    def __init__(self, produced: dict, escaped: set):
        super().__init__()
        self.produced, self.escaped, self.inside = produced, escaped, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(getattr(func, "__self__", None), "__name__", None) \
            if getattr(func, "__name__", None) == "__get__" else getattr(func, "__name__", None)
        if name not in _METADATA:
            for t in _tensors((args, kwargs)):
                entry = self.produced.get(id(t))
                if entry is not None and entry[1] is t \
                        and not (self.inside and self.inside[-1] is t):
                    self.escaped.add(entry[0])
        return func(*args, **kwargs)


def _call(model: nn.Module, example_input, forward=None):
    with torch.no_grad():
        if forward is not None:
            return forward(model, example_input)
        args = example_input if isinstance(example_input, tuple) else (example_input,)
        return model(*args)


def _trace(model: nn.Module, example_input, forward=None):
    """One forward pass of ``model`` (eval): its output, the candidate ``(conv name, bn name)``
    pairs in call order, and why every other BatchNorm is not a candidate."""
    names: dict[nn.Module, list[str]] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        names.setdefault(m, []).append(name)
    calls: dict[nn.Module, int] = {}
    produced: dict[int, tuple] = {}  # id(output) -> (conv, output, version): holds the output
    fed: dict[nn.Module, tuple] = {}  # bn -> (conv or None, unmodified) of its input
    escaped: set = set()
    watch = _Watch(produced, escaped)

    def conv_hook(module, inputs, output):
        calls[module] = calls.get(module, 0) + 1
        if isinstance(output, torch.Tensor):
            produced[id(output)] = (module, output, output._version)

    def bn_pre_hook(module, inputs):
        calls[module] = calls.get(module, 0) + 1
        x = inputs[0] if inputs else None
        entry = produced.get(id(x))
        if entry is not None and entry[1] is x:
            fed[module] = (entry[0], x._version == entry[2])
        else:
            fed[module] = (None, True)
        watch.inside.append(x)

    def bn_hook(module, inputs, output):
        watch.inside.pop()

    handles = []
    for m in names:
        if isinstance(m, CONVS):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, BATCHNORMS):
            handles.append(m.register_forward_pre_hook(bn_pre_hook))
            handles.append(m.register_forward_hook(bn_hook))
    try:
        with watch:
            output = _call(model, example_input, forward)
    finally:
        for h in handles:
            h.remove()

    pairs, kept = [], {}
    for name, bn in model.named_modules():
        if not isinstance(bn, (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d)):
            continue
        conv, unmodified = fed.get(bn, (None, True))
        if not isinstance(bn, BATCHNORMS):
            kept[name] = f"{type(bn).__name__} is not folded (only BatchNorm2d)"
        elif isinstance(bn, nn.BatchNorm2d) and bn.running_mean is None:
            kept[name] = "no running statistics: normalises with the batch in eval too"
        elif calls.get(bn, 0) == 0:
            kept[name] = "not called on the example input"
        elif calls[bn] > 1 or len(names[bn]) > 1:
            kept[name] = f"shared: called {calls[bn]} times, named {len(names[bn])} times"
        elif conv is None:
            kept[name] = "its input is not the output of a conv"
        elif calls[conv] > 1 or len(names[conv]) > 1:
            kept[name] = f"its conv {names[conv][0]} is shared (called {calls[conv]} times)"
        elif not unmodified:
            kept[name] = f"the output of {names[conv][0]} is modified in place before it"
        elif conv in escaped:
            kept[name] = f"the output of {names[conv][0]} is also used elsewhere"
        elif parametrize.is_parametrized(conv):
            kept[name] = f"{names[conv][0]} has a parametrisation"
        else:
            pairs.append((names[conv][0], name))
    order = {m: i for i, m in enumerate(fed)}  # call order of the BatchNorms
    pairs.sort(key=lambda pair: order[model.get_submodule(pair[1])])
    return output, pairs, kept


def _max_difference(expected, actual) -> float:
    """Largest ``|actual - expected|`` relative to each tensor's largest ``|expected|``, over a
    nest of dicts, lists and tuples; ``inf`` where the structure, a shape or a non-float value
    differs."""
    if isinstance(expected, torch.Tensor):
        if not isinstance(actual, torch.Tensor) or actual.shape != expected.shape \
                or actual.dtype != expected.dtype:
            return float("inf")
        if not expected.is_floating_point():
            return 0.0 if torch.equal(expected, actual) else float("inf")
        finite = torch.isfinite(expected)
        if not torch.equal(finite, torch.isfinite(actual)) or not torch.equal(
                expected[~finite].nan_to_num(), actual[~finite].nan_to_num()):
            return float("inf")
        if not finite.any():
            return 0.0
        e, a = expected.detach()[finite].double(), actual.detach()[finite].double()
        scale = max(float(e.abs().max()), torch.finfo(expected.dtype).tiny)
        return float((a - e).abs().max()) / scale
    if isinstance(expected, (tuple, list)):
        if type(actual) is not type(expected) or len(actual) != len(expected):
            return float("inf")
        return max((_max_difference(e, a) for e, a in zip(expected, actual)), default=0.0)
    if isinstance(expected, dict):
        if not isinstance(actual, dict) or actual.keys() != expected.keys():
            return float("inf")
        return max((_max_difference(expected[k], actual[k]) for k in expected), default=0.0)
    return 0.0 if actual == expected else float("inf")


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    root.get_submodule(parent)._modules[child] = module  # works for Sequential / ModuleList too


@dataclass
class FoldReport:
    """What :func:`fold_batchnorm` did: the folded ``(conv, bn)`` pairs (module names), the
    BatchNorm layers kept with the reason, and the largest relative difference it measured
    between the folded copy and the original on the example input."""

    pairs: list[tuple[str, str]] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)
    max_difference: float = 0.0

    @property
    def total(self) -> int:
        return len(self.pairs) + len(self.kept)

    def __str__(self) -> str:
        lines = [f"{len(self.pairs)} of {self.total} BatchNorm layers folded "
                 f"(max relative difference {self.max_difference:.1e})"]
        lines += [f"  kept {name}: {why}" for name, why in self.kept.items()]
        return "\n".join(lines)


def fold_batchnorm(model: nn.Module, example_input, *, rtol: float = 1e-5,
                   forward: Callable | None = None, report: bool = False):
    """A deep copy of ``model`` in eval mode with every BatchNorm that directly follows a conv
    folded into it (:func:`fold_conv_bn`) and replaced by ``nn.Identity``; same function, fewer
    layers. ``model`` itself is not modified.

    The pairs are found on one forward pass of ``example_input`` (a tensor, or a tuple of
    positional arguments) and every fold is verified on it: the copy's output must match the
    original's to ``rtol`` of each output tensor's scale, or the fold is undone (see the module
    docstring for the method and for what is never folded). ``forward(model, example_input)``
    replaces ``model(example_input)`` as the pass that is watched and compared: for a model
    whose output ends in discrete decisions, e.g. Mask R-CNN (a box edge moved by 1e-7 pastes a
    mask one pixel over; a probability at 0.5 flips a bool mask), compare the features before
    them, ``forward=lambda m, x: m.features(x)``. With ``report=True`` returns ``(copy,
    FoldReport)``.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(rtol, (int, float)) or isinstance(rtol, bool) or not rtol >= 0:
        raise ValueError(f"rtol must be a number >= 0, got {rtol!r}")
    reference = copy.deepcopy(model).eval()
    if not batchnorm_layers(reference):  # nothing to fold: no forward pass needed
        return (reference, FoldReport()) if report else reference
    if forward is not None and not callable(forward):
        raise ValueError(f"forward must be None or a callable (model, example_input), got "
                         f"{type(forward).__name__}")
    expected, pairs, kept = _trace(reference, example_input, forward)
    folded = copy.deepcopy(reference)

    def apply(pair):
        conv_name, bn_name = pair
        _replace(folded, conv_name, fold_conv_bn(folded.get_submodule(conv_name),
                                                 folded.get_submodule(bn_name)))
        _replace(folded, bn_name, nn.Identity())

    for pair in pairs:
        apply(pair)
    difference = _max_difference(expected, _call(folded, example_input, forward)) if pairs else 0.0
    if difference > rtol:  # some fold changed the function: keep those that do not
        folded, accepted, difference = copy.deepcopy(reference), [], 0.0
        for pair in pairs:
            before = [folded.get_submodule(name) for name in pair]
            apply(pair)
            d = _max_difference(expected, _call(folded, example_input, forward))
            if d > rtol:
                for name, module in zip(pair, before):
                    _replace(folded, name, module)
                kept[pair[1]] = f"folding it into {pair[0]} changed the output ({d:.1e})"
            else:
                accepted.append(pair)
                difference = d
        pairs = accepted
    if not report:
        return folded
    names = batchnorm_layers(reference)  # the report in the model's order
    kept = {name: kept[name] for name in names if name in kept}
    return folded, FoldReport(pairs, kept, difference)


def for_inference(model: nn.Module, example_input, *, rtol: float = 1e-5,
                  forward: Callable | None = None, report: bool = False):
    """A copy of ``model`` in eval mode with every exact inference-time rewrite applied: the
    BatchNorm folds of :func:`fold_batchnorm`, then every decoder with a ``fold`` switch
    (SegFormer's all-MLP decoder) switched on. Same function to float rounding -- checked
    here on ``example_input`` to ``rtol`` of each output's scale (a ``RuntimeError`` if not),
    fewer FLOPs. ``model`` is not modified. ``report=True`` returns ``(copy, FoldReport)``, the
    report's ``max_difference`` then measured after all rewrites."""
    folded, fold_report = fold_batchnorm(model, example_input, rtol=rtol, forward=forward,
                                         report=True)
    switches = [m for m in folded.modules() if isinstance(getattr(m, "fold", None), bool)]
    if switches:
        for module in switches:
            module.fold = True
        expected = _call(copy.deepcopy(model).eval(), example_input, forward)
        difference = _max_difference(expected, _call(folded, example_input, forward))
        if difference > rtol:
            raise RuntimeError(f"the folded decoder changed the output by {difference:.1e} "
                               f"(relative), more than rtol={rtol:g}")
        fold_report.max_difference = max(fold_report.max_difference, difference)
    return (folded, fold_report) if report else folded
