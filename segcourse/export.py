"""ONNX export of segcourse's models, and a check of the exported graph against PyTorch.

An exported graph runs without PyTorch (onnxruntime on a server, in a browser, on a phone). The
promise it has to keep is that of the model: *any* batch and image size. So every graph is
exported with dynamic batch, height and width, and :func:`check_onnx` runs it with onnxruntime
on an input of a size the export never saw and compares with PyTorch.

    >>> from segcourse import models, export                  # doctest: +SKIP
    >>> net = models.build("unet", num_classes=3)
    >>> export.export_onnx(net, "unet.onnx", torch.randn(1, 3, 64, 64))
    >>> export.check_onnx(net, "unet.onnx", torch.randn(2, 3, 97, 131))   # max |diff|, ~1e-7

What the graphs compute:

- per-pixel models: ``images [B, C, H, W] -> logits [B, K, H, W]``;
- mask-classification models (Mask2Former, EoMT): their raw eval-mode outputs,
  ``class_logits [B, Q, K+1]`` and ``mask_logits [B, Q, h, w]``, the set of (class, mask)
  pairs; the semantic, instance or panoptic read-out
  (:mod:`segcourse.models.mask_inference`) is a few lines of post-processing that a server
  may want to do its own way;
- SAM (:func:`export_sam`): two graphs, the image encoder ``images [B, 3, S, S] -> embeddings``
  (once per image: S is fixed, B is dynamic) and the prompt decoder ``(embeddings, points [B, P,
  N, 2], point_labels [B, P, N]) -> (mask_logits, iou_scores)`` with dynamic B, P and N, which a
  client runs per click; optionally a third, the box decoder ``(embeddings, boxes [B, P, 4])``.

**Exporter.** torch offers two: the TorchScript tracer (``dynamo=False``: deprecated, still in
torch 2.13) and the ``torch.export``-based one (``dynamo=True``, the default since 2.9). We use
the tracer. On torch 2.13 with onnxscript 0.7 we tried both on every registered model: the tracer
exports each in 0.1-0.7 s and, after the model fixes below, every graph matches PyTorch at an
unseen size; the torch.export one took 3-11 s per model (so a test over the registry would not
fit in a minute), onnxruntime refused its DeepLabV3 / V3+ graphs (a bilinear ``Resize`` with
scales it does not support), and it froze the same Python code on sizes as the tracer, silently.
Neither exporter protects against that trap; :func:`check_onnx` at a new size does. (The
tracer needs ``onnx`` but not ``onnxscript``.)

**What dynamic shapes need from the model code.** The tracer records tensor operations, and the
sizes read from ``x.shape`` as tensors, so ``F.interpolate(x, size=skip.shape[-2:])`` or
``F.pad(x, (0, W_ref - W))`` follow the input. But a Python ``if`` on a size runs once, at the
export size, and is frozen: ``if dh or dw: pad`` in U-Net was False at 64 x 64 and the graph
then failed on every odd size; EoMT's ``if grid != stored: resize the position embeddings``
likewise. And ``//`` on sizes becomes ONNX's integer ``Div``, which truncates instead of
flooring: ``-(-97 // 4)`` (a ceil) came out 24, not 25. The fixes in the models (always pad;
always resize while exporting, an identity at the stored size; ``(n + s - 1) // s``) keep the
PyTorch function exactly -- their tests pass unchanged -- and :func:`check_onnx` at a new size is
what catches the next one.

Mask2Former's multi-scale deformable attention (:mod:`segcourse.ops.deformable_attention`)
turned the levels' sizes into Python ints (``check_spatial_shapes``) and a constant tensor of
them: traced, the graph was right only at the export size (max difference 0.2-0.7 at 97 x 131).
While tracing, it now keeps the traced sizes (and stacks the offsets' normaliser from them), and
the graph matches PyTorch at any size.

SAM's input checks (``.any()`` on the point labels, the fixed encoder size) run on the example
inputs while tracing and are not in the graphs: an exported decoder trusts its inputs.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from ._checks import check_count, check_number

__all__ = ["export_onnx", "check_onnx", "run_onnx", "inference_session", "export_sam",
           "SamEncoderGraph", "SamDecoderGraph", "SamBoxDecoderGraph"]

DEFAULT_OPSET = 18  # >= 17 for LayerNormalization; 18 for Resize's antialias (EoMT)

# --- Validation ----------------------------------------------------------------------------------

def _check_module(model, name: str = "model") -> None:
    if not isinstance(model, nn.Module):
        raise ValueError(f"{name} must be a torch.nn.Module, got {type(model).__name__}")


def _check_path(path, name: str = "path") -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"{name} must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{name} must name a file, got the directory {str(path)!r}")
    if not path.parent.is_dir():
        raise ValueError(f"{name}'s folder {str(path.parent)!r} does not exist")
    return path


def _check_tensor(x, name: str, dims: int | None = 4, floating: bool = True) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if dims is not None and x.dim() != dims:
        raise ValueError(f"{name} must be a {dims}-D tensor [B, C, H, W], got shape "
                         f"{tuple(x.shape)}")
    if floating and not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def _check_opset(opset) -> int:
    opset = check_count(opset, "opset", minimum=17)
    if opset > 20:  # the newest opset the TorchScript exporter writes
        raise ValueError(f"opset must be in 17..20, got {opset}")
    return opset


def _require(module: str):
    """Import ``module`` (onnx, onnxruntime), or say how to install it."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"segcourse.export needs {module}: pip install 'segcourse[deploy]' "
                          f"(or pip install onnx onnxruntime)") from e


# --- The one operator the tracer lacks -----------------------------------------------------------

def _bicubic_antialias(g, images, output_size, *args):
    """``F.interpolate(..., mode="bicubic", antialias=True, size=...)`` (timm's, EoMT's resize of
    the position embeddings) as ONNX ``Resize``: Keys' cubic with a = -0.5 and outside taps
    excluded is PyTorch's antialiased bicubic (the same kernel as PIL's)."""
    if output_size.node().mustBeNone():
        raise ValueError("bicubic antialias export needs size=..., not scale_factor")
    shape = g.op("Shape", images)
    batch_channels = g.op("Slice", shape, g.op("Constant", value_t=torch.tensor([0])),
                          g.op("Constant", value_t=torch.tensor([2])))
    size = g.op("Cast", output_size, to_i=7)  # 7: INT64
    sizes = g.op("Concat", batch_channels, size, axis_i=0)
    none = g.op("Constant", value_t=torch.tensor([], dtype=torch.float32))  # no roi, no scales
    return g.op("Resize", images, none, none, sizes, mode_s="cubic", cubic_coeff_a_f=-0.5,
                antialias_i=1, exclude_outside_i=1, coordinate_transformation_mode_s="half_pixel")


_EXAMPLE_KEY = "segcourse.example_shapes"  # metadata: the input shapes the graph was traced at


def _trace_to_onnx(module, args, path, input_names, output_names, dynamic_axes, opset):
    """``torch.onnx.export`` with the TorchScript tracer, its expected warnings silenced (the
    tracer warns at every size it reads; check_onnx is the check that matters); the example
    shapes go in the file's metadata, so that check_onnx can tell a check at the same size."""
    torch.onnx.register_custom_op_symbolic("aten::_upsample_bicubic2d_aa", _bicubic_antialias,
                                           opset)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export",
                                category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="The feature will be removed",
                                category=DeprecationWarning)
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=opset,
                          input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, do_constant_folding=True)
    onnx = _require("onnx")
    graph = onnx.load(str(path))
    entry = graph.metadata_props.add()
    entry.key, entry.value = _EXAMPLE_KEY, repr([tuple(a.shape) for a in args])
    onnx.save(graph, str(path))


class _EvalMode:
    """Every submodule in eval mode inside the block, each one's own mode restored after."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        return self.model

    def __exit__(self, *exc):
        for m, training in self.modes:
            m.training = training


def _output_names(outputs) -> list[str]:
    if isinstance(outputs, torch.Tensor):
        return ["logits"]
    if isinstance(outputs, dict) and all(isinstance(v, torch.Tensor) for v in outputs.values()):
        return list(outputs)
    if isinstance(outputs, (tuple, list)) and all(isinstance(v, torch.Tensor) for v in outputs):
        return [f"output_{i}" for i in range(len(outputs))]
    raise ValueError("the model must return a tensor, a dict of tensors or a tuple of tensors "
                     f"in eval mode to export, got {type(outputs).__name__}")


def _flat(outputs) -> list[torch.Tensor]:
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    return list(outputs.values()) if isinstance(outputs, dict) else list(outputs)


# --- Export --------------------------------------------------------------------------------------

def export_onnx(model: nn.Module, path, example_input: torch.Tensor,
                opset: int = DEFAULT_OPSET) -> Path:
    """Export ``model`` (eval mode; each submodule's mode restored after) to the ONNX file
    ``path`` with dynamic batch, height and width, tracing it on ``example_input [B, C, H, W]``.

    The graph's input is ``images``; its outputs are ``logits`` for a model returning a tensor,
    the dict's keys for one returning a dict (EoMT: ``class_logits``, ``mask_logits``). Every
    output's first dimension is ``batch``; a 4-D output as large as the input has ``height`` and
    ``width``, any other its own named sizes. Returns the path. Check the graph with
    :func:`check_onnx` on another size: the tracer freezes Python code on sizes (module
    docstring).
    """
    _check_module(model)
    path = _check_path(path)
    _check_tensor(example_input, "example_input")
    opset = _check_opset(opset)
    _require("onnx")
    with _EvalMode(model), torch.no_grad():
        outputs = model(example_input)
        names = _output_names(outputs)
        H, W = example_input.shape[-2:]
        axes = {"images": {0: "batch", 2: "height", 3: "width"}}
        for name, out in zip(names, _flat(outputs)):
            axes[name] = {0: "batch"}
            if out.dim() == 4:
                same = tuple(out.shape[-2:]) == (H, W)
                axes[name].update({2: "height" if same else f"{name}_height",
                                   3: "width" if same else f"{name}_width"})
        _trace_to_onnx(model, (example_input,), path, ["images"], names, axes, opset)
    return path


class SamEncoderGraph(nn.Module):
    """SAM's image encoder as a graph of its own: ``images [B, 3, S, S] -> embeddings``."""

    def __init__(self, sam: nn.Module):
        super().__init__()
        self.sam = sam

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.sam.embed(images)


class SamDecoderGraph(nn.Module):
    """SAM's prompt encoder + mask decoder for point prompts: ``(embeddings, points,
    point_labels) -> (mask_logits, iou_scores)``, one run per click."""

    def __init__(self, sam: nn.Module, multimask_output: bool = True):
        super().__init__()
        self.sam = sam
        self.multimask_output = bool(multimask_output)

    def forward(self, embeddings, points, point_labels):
        out = self.sam.decode(embeddings, points, point_labels,
                              multimask_output=self.multimask_output)
        return out["mask_logits"], out["iou_scores"]


class SamBoxDecoderGraph(nn.Module):
    """SAM's prompt encoder + mask decoder for box prompts: ``(embeddings, boxes [B, P, 4])
    -> (mask_logits, iou_scores)`` -- a labelling tool's first prompt is often a box."""

    def __init__(self, sam: nn.Module, multimask_output: bool = False):
        super().__init__()
        self.sam = sam
        self.multimask_output = bool(multimask_output)

    def forward(self, embeddings, boxes):
        out = self.sam.decode(embeddings, boxes=boxes, multimask_output=self.multimask_output)
        return out["mask_logits"], out["iou_scores"]


def _check_sam(sam) -> None:
    from .models.sam import Sam
    if not isinstance(sam, Sam):
        raise ValueError(f"sam must be a segcourse Sam (models.build('sam')), got "
                         f"{type(sam).__name__}")


def export_sam(sam: nn.Module, encoder_path, decoder_path, num_points: int = 1,
               multimask_output: bool = True, opset: int = DEFAULT_OPSET,
               box_decoder_path=None) -> tuple[Path, ...]:
    """Export SAM as two graphs: the image encoder (:class:`SamEncoderGraph`, dynamic batch;
    the image size is the config's) to ``encoder_path`` and the point-prompt decoder
    (:class:`SamDecoderGraph`: dynamic batch, prompts per image and points per prompt) to
    ``decoder_path``, traced on one image with one prompt of ``num_points`` points (labels 1).
    With ``box_decoder_path`` also a third graph, the box-prompt decoder
    (:class:`SamBoxDecoderGraph`, one mask per box as SAM's authors use boxes; dynamic batch
    and boxes per image). Returns the two (or three) paths.

    Prompts are in pixels of the encoder input (``models.sam.scale_prompts``); the decoder
    graphs trust them (module docstring): check that points and boxes lie inside the image
    before running them."""
    _check_sam(sam)
    encoder_path, decoder_path = _check_path(encoder_path, "encoder_path"), \
        _check_path(decoder_path, "decoder_path")
    if box_decoder_path is not None:
        box_decoder_path = _check_path(box_decoder_path, "box_decoder_path")
    num_points = check_count(num_points, "num_points")
    opset = _check_opset(opset)
    _require("onnx")
    S = sam.config.encoder.image_size
    dtype = sam.mask_decoder.iou_token.weight.dtype
    device = sam.mask_decoder.iou_token.weight.device
    images = torch.rand(1, 3, S, S, dtype=dtype, device=device)
    encoder, decoder = SamEncoderGraph(sam), SamDecoderGraph(sam, multimask_output)
    with _EvalMode(sam), torch.no_grad():
        embeddings = encoder(images)
        _trace_to_onnx(encoder, (images,), encoder_path, ["images"], ["embeddings"],
                       {"images": {0: "batch"}, "embeddings": {0: "batch"}}, opset)
        points = torch.rand(1, 1, num_points, 2, dtype=dtype, device=device) * (S - 1)
        labels = torch.ones(1, 1, num_points, dtype=torch.long, device=device)
        prompts = {0: "batch", 1: "prompts"}
        _trace_to_onnx(decoder, (embeddings, points, labels), decoder_path,
                       ["embeddings", "points", "point_labels"], ["mask_logits", "iou_scores"],
                       {"embeddings": {0: "batch"}, "points": {**prompts, 2: "points"},
                        "point_labels": {**prompts, 2: "points"}, "mask_logits": prompts,
                        "iou_scores": prompts}, opset)
        if box_decoder_path is None:
            return encoder_path, decoder_path
        corner = torch.rand(1, 1, 2, dtype=dtype, device=device) * (S / 2)
        boxes = torch.cat([corner, corner + S / 4], dim=-1)  # x1 y1 x2 y2, inside the image
        _trace_to_onnx(SamBoxDecoderGraph(sam), (embeddings, boxes), box_decoder_path,
                       ["embeddings", "boxes"], ["mask_logits", "iou_scores"],
                       {"embeddings": {0: "batch"}, "boxes": prompts, "mask_logits": prompts,
                        "iou_scores": prompts}, opset)
    return encoder_path, decoder_path, box_decoder_path


# --- Running and checking ------------------------------------------------------------------------

def inference_session(path):
    """An onnxruntime CPU ``InferenceSession`` for the graph at ``path``, with as many threads
    as PyTorch uses (so a latency comparison runs both on the same cores). Run it with
    ``session.run(None, {"images": array})``: NumPy in, a list of NumPy arrays out."""
    ort = _require("onnxruntime")
    path = _check_path(path)
    if not path.is_file():
        raise ValueError(f"path {str(path)!r} does not exist: export the model first")
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # as many threads as PyTorch's
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(path, inputs) -> dict:
    """Run the ONNX graph at ``path`` with onnxruntime on the CPU: ``inputs`` (a tensor or
    NumPy array, or a tuple of them in the graph's input order) -> ``{output name: array}``."""
    return _run(inference_session(path), inputs)


def _run(session, inputs) -> dict:
    inputs = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
    graph_inputs = session.get_inputs()
    if len(inputs) != len(graph_inputs):
        raise ValueError(f"the graph takes {len(graph_inputs)} input(s) "
                         f"({', '.join(i.name for i in graph_inputs)}), got {len(inputs)}")
    feed = {}
    for spec, x in zip(graph_inputs, inputs):
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        feed[spec.name] = x
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed)))


def check_onnx(model: nn.Module, path, inputs, atol: float = 1e-4) -> float:
    """Run the graph at ``path`` with onnxruntime (CPU) on ``inputs`` -- best a size the export
    never saw -- and compare every output with ``model`` in eval mode (PyTorch, no grad).

    ``inputs``: images ``[B, C, H, W]`` for a graph from :func:`export_onnx`; for SAM's graphs
    pass the :class:`SamEncoderGraph` / :class:`SamDecoderGraph` as ``model`` and their
    inputs (a tuple for the decoder). Prints and returns the largest absolute difference;
    raises ``AssertionError`` naming the output if it exceeds ``atol`` or a shape differs.
    At the very shapes the graph was exported with it warns: such a check cannot catch a size
    frozen at export.
    """
    _check_module(model)
    atol = check_number(atol, "atol", low=0.0)
    inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    for i, x in enumerate(inputs):
        _check_tensor(x, f"inputs[{i}]", dims=None, floating=False)
    if len(inputs) == 1:
        _check_tensor(inputs[0], "inputs", floating=True)
    session = inference_session(path)
    got = _run(session, inputs)
    seen = session.get_modelmeta().custom_metadata_map.get(_EXAMPLE_KEY)
    if seen == repr([tuple(x.shape) for x in inputs]):
        warnings.warn(f"check_onnx at the export's own input shapes {seen} cannot catch a size "
                      "frozen at export: check at another batch and image size", stacklevel=2)
    with _EvalMode(model), torch.no_grad():
        expected = _flat(model(*inputs))
    if len(expected) != len(got):
        raise AssertionError(f"the graph has {len(got)} output(s) ({', '.join(got)}), the "
                             f"model {len(expected)}")
    worst = 0.0
    for (name, array), ref in zip(got.items(), expected):
        ref = ref.detach().float().cpu()
        if tuple(array.shape) != tuple(ref.shape):
            raise AssertionError(f"{name}: onnxruntime gives shape {tuple(array.shape)}, "
                                 f"PyTorch {tuple(ref.shape)} (a size frozen at export?)")
        diff = (torch.from_numpy(array).float() - ref).abs().max().item() if ref.numel() else 0.0
        if diff != diff:  # NaN
            diff = float("inf")
        print(f"{name}: max |onnxruntime - PyTorch| = {diff:.2e}")
        if diff > atol:
            raise AssertionError(f"{name}: max |onnxruntime - PyTorch| = {diff:.3g} exceeds "
                                 f"atol={atol:g} at input shape(s) "
                                 f"{[tuple(x.shape) for x in inputs]}")
        worst = max(worst, diff)
    return worst
