"""int8 post-training static quantisation of an exported segmentation graph (onnxruntime).

    >>> from segcourse import export, quantize                       # doctest: +SKIP
    >>> export.export_onnx(net, "unet.onnx", torch.randn(1, 3, 64, 64))
    >>> quantize.quantize_onnx("unet.onnx", "unet_int8.onnx", ShapesDataset(64, seed=0))
    >>> quantize.evaluate_onnx("unet_int8.onnx", ShapesDataset(256, seed=1))["miou"]
    >>> quantize.op_counts("unet_int8.onnx", optimized=True)["QLinearConv"]     # 19

A float32 model stores every weight and every activation in 32 bits. *Quantisation* stores them
as 8-bit integers ``q`` and reads each one back as a real number through an affine map

    r = scale * (q - zero_point)        q = clamp(round(r / scale) + zero_point, qmin, qmax)

with one ``scale`` (float) and one ``zero_point`` (an integer, the code of ``r = 0``, so that
zero padding is exact) per tensor. Given a range ``[rmin, rmax]`` (widened to hold 0) to cover
with the 256 codes of ``uint8``, ``scale = (rmax - rmin) / 255`` and ``zero_point =
round(-rmin / scale)``; weights use ``int8`` symmetrically, ``scale = max |w| / 127`` and zero
point 0. The error of one value is at most ``scale / 2`` inside the range and grows without
bound outside it (clipping), which is the trade-off every choice below is about. A convolution
then runs in integers -- ``int8 x uint8`` products summed in ``int32`` -- and one multiply by
``x_scale * w_scale / y_scale`` brings the sum to the output's codes (Jacob et al., 2018,
"Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference"; Krishnamoorthi, 2018, "Quantizing deep convolutional networks for efficient
inference: A whitepaper"). Four times smaller weights, and integer kernels that move a quarter
of the bytes.

**Per-channel weights.** One scale for a whole weight tensor is set by its largest value; an
output channel whose weights are all small then uses a handful of the 255 codes. One scale per
output channel (``per_channel=True``) costs nothing at run time -- it folds into the per-channel
requantisation multiplier -- and is the whitepaper's recommendation.

**Static: calibration.** Weights are known; activations are not. *Dynamic* quantisation
measures each activation's range at run time, per input; *static* quantisation fixes the ranges
once, from a *calibration set* of representative inputs. onnxruntime adds each tensor to be
quantised to the graph's outputs (for MinMax through ``ReduceMin`` / ``ReduceMax`` nodes: two
numbers per tensor and batch), runs the calibration images, and records per tensor its min and
max (``method="minmax"``) or a histogram from which it picks a range that clips the rare
extreme values (``"percentile"``: 0.0005 % of the values at each end; it holds every
intermediate tensor of every batch in memory first, so calibrate at a small size). Values
outside the calibrated range clip, so calibration images should look like the deployment data
-- here, shapes images from the training split; dark images only would make bright ones
saturate.

**QDQ vs QOperator.** onnxruntime writes the result in one of two formats. QOperator replaces
each op by its integer twin (``Conv`` -> ``QLinearConv``). QDQ (the default, and ours) keeps
the float ops and puts ``QuantizeLinear -> DequantizeLinear`` pairs on their inputs and
outputs: the file says *where* values are rounded and stays a valid float graph; at session
creation onnxruntime's optimiser fuses each ``DQ -> Conv -> Q`` into ``QLinearConv``
(:func:`op_counts` with ``optimized=True`` shows what it runs). What onnxruntime's
``quantize_static`` does, then: (1) insert range observers and run the calibration data,
(2) compute a scale and zero point per tensor from the ranges, (3) quantise the weights (per
channel if asked) and biases (``int32``, scale ``x_scale * w_scale``), (4) write Q/DQ pairs
around every op of the types it knows (``Conv``, ``MatMul``, ``Add``, ``Resize``, ``MaxPool``,
``Concat``, ``LayerNormalization``, ...).

**Preprocessing first.** ``quant_pre_process`` (onnxruntime's documentation asks for it) runs
symbolic shape inference, then onnxruntime's basic graph optimisations (constant folding,
redundant nodes removed, an ``Add`` or ``Mul`` by a constant folded into the preceding
``Conv``), so that every tensor has a known type -- which the quantiser needs to decide what
to quantise -- and no rounding is placed between ops that are one op after optimisation.
U-Net's pad-to-the-skip's-size arithmetic defeats the symbolic shape inference ("Incomplete
symbolic shape inference"); there we fall back to ONNX's own shape inference, which types every
tensor and leaves such sizes unnamed. BatchNorm is already folded into the convolutions by the
exporter (eval mode, constant folding).

**What stays float.** Ops without an integer kernel in onnxruntime's CPU provider --
``LayerNormalization``, GELU's ``Erf``, ``Sqrt``, ``Div``, ``ConvTranspose`` -- run in float
between a ``DQ`` and a ``Q``, each pair an extra conversion. Integer tensors (shapes) are never
quantised. The graph's input and its logits stay float32: the caller passes float images and
gets float logits (the quantiser puts a ``Q`` after the input and a ``DQ`` before the output).

**Observations on the shapes data** (5 classes, 64 x 64; U-Net and SegFormer, registry
defaults, trained 10 epochs on 512 images; calibrated on 64 training images; mIoU of the ONNX
graph on 256 held-out images; latency: one 128 x 128 image, one thread, a rough single run on
the course's CPU (AVX-512 VNNI) -- observations that chose the defaults, not guarantees):

    config                                U-Net mIoU   ms     SegFormer mIoU   ms
    float32 (= PyTorch's mIoU exactly)      0.8348     6.8        0.7545       7.3
    QDQ, per-channel, MinMax, U8S8          0.8346     3.5        0.7529       4.6
      per-tensor weights                    0.8358     3.4        0.7532       4.4
      Percentile calibration                0.8348      -         0.7534        -
      QOperator format                      0.8348     3.2        0.7518       5.6
      int8 activations (S8S8)               0.8346     5.2        0.7529       8.1
      Resize left float                       -         -         0.7541        -
      Softmax, LayerNorm left float           -         -         0.7529        -

Every choice keeps the mIoU within 0.002 of float's on these small models -- the shapes data
is easy and their activations have no outliers to clip -- so accuracy did not decide. Speed
did, mildly: int8 activations (S8S8: the same grid shifted by 128, hence the same mIoU) run
slower on this x86 CPU, whose integer kernels want ``uint8 x int8``; QOperator was the fastest
for U-Net and the slowest for SegFormer (why, we did not pin down). We keep onnxruntime's
recommended defaults: **QDQ, per-channel weights, MinMax, uint8 activations with int8
weights** -- per-channel is the safer choice for models whose channels differ in scale more
than these, for the same speed. onnxruntime's ``Entropy`` calibration is not offered: through
``quantize_static`` its histogram has 128 bins for 128 quantised bins, so the only candidate
range is the full one, and it returned MinMax's scales exactly (checked); ``quantize_static``
has no option to change that.

What onnxruntime ran (``op_counts(path, optimized=True)``): U-Net's 19 convolutions became
``QLinearConv``, its skip concatenations ``QLinearConcat``; its 4 ``ConvTranspose`` have no
integer kernel and run in float between a DQ and a Q. SegFormer's ``MatMul``, ``Add``,
``Mul``, ``Softmax`` and convolutions ran as ``QLinear*`` ops; ``LayerNormalization``, GELU's
``Erf`` and the attention's ``Sqrt`` / ``Div`` ran in float, each between a DQ and a Q -- and
GELU, fused into one kernel in the float graph, stays in pieces, since Q/DQ pairs sit between
them. Leaving ``Softmax`` and ``LayerNormalization`` out of quantisation (``op_types_to_exclude``)
changed nothing here, so nothing is excluded by default.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections import Counter
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ._checks import check_count, check_images
from .evaluate import _default_loss, make_loader
from .export import _check_path, _require, inference_session
from .metrics import SegmentationMetric

__all__ = ["quantize_onnx", "onnx_predict", "evaluate_onnx", "op_counts", "file_mb", "METHODS"]

METHODS = ("minmax", "percentile")
FORMATS = ("qdq", "qoperator")
TYPES = ("uint8", "int8")


# --- Calibration data ----------------------------------------------------------------------------

def _image_batches(calibration_images, batch_size: int):
    """``calibration_images`` as a list of float32 arrays ``[B, C, H, W]``: a tensor ``[N, C, H,
    W]`` split into batches, or an iterable (a Dataset, a DataLoader, a list) of images ``[C, H,
    W]``, batches ``[B, C, H, W]`` or tuples whose first item is one of those ((image, mask))."""
    name = "calibration_images"
    if isinstance(calibration_images, torch.Tensor):
        check_images(calibration_images, name=name)
        if calibration_images.shape[0] == 0:
            raise ValueError(f"{name} is empty (shape {tuple(calibration_images.shape)}): "
                             f"calibration needs at least one image")
        items = list(calibration_images.split(batch_size))
    else:
        if isinstance(calibration_images, (str, bytes)) or not (
                hasattr(calibration_images, "__iter__") or _indexable(calibration_images)):
            raise ValueError(f"{name} must be a tensor [N, C, H, W] or an iterable of images or "
                             f"batches, got {type(calibration_images).__name__}")
        items, singles = [], []
        for i, item in enumerate(_iterate(calibration_images)):
            x = item[0] if isinstance(item, (tuple, list)) else item
            if isinstance(x, torch.Tensor) and x.dim() == 3:  # one image of a Dataset
                check_images(x[None], name=f"{name}[{i}]")
                singles.append(x)
                continue
            check_images(x, name=f"{name}[{i}]")
            if x.shape[0]:
                items.append(x)
        items += [torch.stack(singles[s:s + batch_size])
                  for s in range(0, len(singles), batch_size)]
        if not items:
            raise ValueError(f"{name} gave no image: calibration needs at least one")
    return [x.detach().cpu().float().numpy() for x in items]


def _indexable(data) -> bool:
    return hasattr(data, "__len__") and hasattr(data, "__getitem__")


def _iterate(data):
    """Items of a map-style Dataset by index (torch's ``Dataset`` has no ``__iter__``), of
    anything else by iteration."""
    if isinstance(data, Dataset) and _indexable(data):
        return (data[i] for i in range(len(data)))
    return iter(data)


class _Reader:
    """onnxruntime's ``CalibrationDataReader`` protocol: ``get_next() -> {input name: batch}``,
    ``None`` when the data is used up (the quantiser's observers run once per batch)."""

    def __init__(self, input_name: str, batches: list):
        self.input_name, self.batches, self.position = input_name, batches, 0

    def get_next(self):
        if self.position == len(self.batches):
            return None
        self.position += 1
        return {self.input_name: self.batches[self.position - 1]}

    def rewind(self):
        self.position = 0


# --- Quantisation --------------------------------------------------------------------------------

def _choice(value, name: str, allowed: tuple) -> str:
    if not isinstance(value, str) or value.lower() not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value.lower()


def _graph_input(onnx, path: Path):
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as e:  # protobuf's DecodeError, among others: not an ONNX file
        raise ValueError(f"float_path {str(path)!r} is not an ONNX graph ({e})") from None
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ValueError(f"float_path: quantize_onnx calibrates a graph with one input (images), "
                         f"this one has {len(inputs)}: {[i.name for i in inputs]}")
    dims = inputs[0].type.tensor_type.shape.dim
    channels = dims[1].dim_value if len(dims) == 4 and dims[1].HasField("dim_value") else None
    return inputs[0].name, channels


@contextlib.contextmanager
def _quiet_logging():
    """Python logging below ERROR off inside the block (onnxruntime's quantiser logs to the root
    logger), restored after."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _preprocess(q, source: Path, target: Path) -> None:
    """``quant_pre_process``; where its symbolic shape inference gives up (U-Net's padding of
    the upsampled map to the skip's size: sizes computed from sizes), ONNX's own shape
    inference instead, which leaves such sizes unnamed -- the quantiser needs types, not
    sizes."""
    try:
        # where it gives up, the symbolic inference saves its partial graph to the working
        # directory (sym_shape_infer_temp.onnx and a .data file): work in target's folder
        with _working_directory(target.parent):
            q.quant_pre_process(str(source), str(target))
    except Exception as e:  # onnxruntime raises a bare Exception here
        if "symbolic shape inference" not in str(e):
            raise
        q.quant_pre_process(str(source), str(target), skip_symbolic_shape=True)


@contextlib.contextmanager
def _working_directory(folder: Path):
    """``os.chdir(folder)`` inside the block (``contextlib.chdir`` needs Python 3.11)."""
    previous = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def quantize_onnx(float_path, int8_path, calibration_images, *, per_channel: bool = True,
                  method: str = "minmax", quant_format: str = "qdq",
                  activation_type: str = "uint8", weight_type: str = "int8",
                  op_types_to_exclude=(), batch_size: int = 8, preprocess: bool = True) -> Path:
    """Quantise the float ONNX graph ``float_path`` (one image input, e.g. from
    :func:`segcourse.export.export_onnx`) to 8 bits, calibrated on ``calibration_images``, and
    write it to ``int8_path``; returns that path. The graph keeps float32 input and outputs and
    its dynamic sizes (run it at any size, as the float one).

    Args:
        calibration_images: a float tensor ``[N, C, H, W]`` (fed in batches of ``batch_size``),
            or an iterable -- a ShapesDataset, a DataLoader, a list -- of images ``[C, H, W]``,
            batches ``[B, C, H, W]`` or ``(image, mask)`` tuples of those.
        per_channel: one weight scale per output channel (else one per tensor).
        method: how activation ranges come from calibration: ``"minmax"`` or ``"percentile"``
            (the 0.0005 % most extreme values at each end clipped).
        quant_format: ``"qdq"`` (Q/DQ pairs around float ops) or ``"qoperator"`` (integer ops).
        activation_type, weight_type: ``"uint8"`` or ``"int8"``.
        op_types_to_exclude: op types to leave in float (e.g. ``("Resize",)``).
        preprocess: run onnxruntime's ``quant_pre_process`` first (module docstring).
    """
    onnx = _require("onnx")
    _require("onnxruntime")
    from onnxruntime import quantization as q
    # absolute paths: the preprocessing step changes the working directory for a while
    float_path = _check_path(float_path, "float_path").resolve()
    if not float_path.is_file():
        raise ValueError(f"float_path {str(float_path)!r} does not exist: export the model first")
    int8_path = _check_path(int8_path, "int8_path").resolve()
    if int8_path == float_path:
        raise ValueError("int8_path must differ from float_path: the float graph is the input")
    method = _choice(method, "method", METHODS)
    quant_format = _choice(quant_format, "quant_format", FORMATS)
    activation_type = _choice(activation_type, "activation_type", TYPES)
    weight_type = _choice(weight_type, "weight_type", TYPES)
    batch_size = check_count(batch_size, "batch_size")
    if isinstance(op_types_to_exclude, str):
        raise ValueError(f"op_types_to_exclude must be a sequence of op type names, got the "
                         f"string {op_types_to_exclude!r}: pass ({op_types_to_exclude!r},)")
    op_types_to_exclude = set(op_types_to_exclude)
    if not all(isinstance(op, str) for op in op_types_to_exclude):
        raise ValueError(f"op_types_to_exclude must hold op type names (str), got "
                         f"{sorted(map(repr, op_types_to_exclude))}")
    input_name, channels = _graph_input(onnx, float_path)
    batches = _image_batches(calibration_images, batch_size)
    if channels is not None and any(b.shape[1] != channels for b in batches):
        bad = next(b.shape for b in batches if b.shape[1] != channels)
        raise ValueError(f"calibration_images must have {channels} channels (the graph's "
                         f"input), got a batch of shape {tuple(bad)}")
    types = {"uint8": q.QuantType.QUInt8, "int8": q.QuantType.QInt8}
    methods = {"minmax": q.CalibrationMethod.MinMax, "percentile": q.CalibrationMethod.Percentile}
    with tempfile.TemporaryDirectory() as tmp:
        source = float_path
        if preprocess:
            source = Path(tmp) / "preprocessed.onnx"
            # the symbolic shape inference prints what it cannot prove about sizes
            with contextlib.redirect_stdout(io.StringIO()), _quiet_logging():
                _preprocess(q, float_path, source)
        model = onnx.load(str(source))
        ops = {n.op_type for n in model.graph.node}
        # onnxruntime's default set is every op it knows how to quantise; we remove the
        # caller's exclusions from it rather than list the ops ourselves
        known = set(q.registry.QLinearOpsRegistry) | set(q.registry.QDQRegistry)
        to_quantize = sorted((ops & known) - op_types_to_exclude)
        # the histogram calibrator prints its progress to stdout and the QOperator quantiser logs
        # every shape tensor it skips: keep the caller's output to what the caller asked for
        with contextlib.redirect_stdout(io.StringIO()), _quiet_logging():
            q.quantize_static(
                str(source), str(int8_path), _Reader(input_name, batches),
                quant_format=q.QuantFormat.QDQ if quant_format == "qdq"
                else q.QuantFormat.QOperator,
                op_types_to_quantize=to_quantize, per_channel=bool(per_channel),
                activation_type=types[activation_type], weight_type=types[weight_type],
                calibrate_method=methods[method])
    return int8_path


# --- Running and scoring a graph -----------------------------------------------------------------

def onnx_predict(path, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Predicted labels ``[N, H, W]`` (argmax of the graph's first output, the logits) of the
    ONNX graph at ``path`` on ``images [N, C, H, W]``, run with onnxruntime in batches."""
    check_count(batch_size, "batch_size")
    check_images(images, name="images")
    if images.shape[0] == 0:
        raise ValueError(f"images is empty: shape {tuple(images.shape)}, expected N >= 1 images")
    session = inference_session(path)  # one session for all batches (run_onnx: one per call)
    return torch.cat([_logits(session, x).argmax(1) for x in images.split(batch_size)])


def _logits(session, images: torch.Tensor) -> torch.Tensor:
    """The graph's first output (the logits) on ``images``, as a tensor."""
    feed = {session.get_inputs()[0].name: images.detach().cpu().float().numpy()}
    return torch.from_numpy(session.run(None, feed)[0])


def evaluate_onnx(path, data, num_classes: int | None = None, *, batch_size: int = 32,
                  ignore_index: int = 255) -> dict:
    """:func:`segcourse.evaluate.evaluate` for an ONNX graph: the same batches, the same
    confusion matrix over the whole set (argmax of the logits, pixels labelled ``ignore_index``
    left out), the same cross-entropy -- so a float graph scores what its PyTorch model does.
    Returns ``{"miou", "pixel_accuracy", "mean_accuracy", "iou", "confusion_matrix", "loss"}``.
    """
    if num_classes is not None:
        check_count(num_classes, "num_classes")
    check_count(batch_size, "batch_size")
    session = inference_session(path)
    metric, total_loss, count = None, 0.0, 0
    for images, target in make_loader(data, batch_size, shuffle=False):
        check_images(images, name="data: images")
        logits = _logits(session, images)
        if metric is None:
            metric = SegmentationMetric(num_classes or logits.shape[1], ignore_index)
        metric.update(logits.argmax(1), target)
        total_loss += float(_default_loss(logits, target, ignore_index)) * images.shape[0]
        count += images.shape[0]
    if metric is None:
        raise ValueError("data gives no batch: evaluate_onnx() got an empty dataset")
    scores = metric.compute()
    scores["loss"] = total_loss / count
    return scores


def op_counts(path, optimized: bool = False) -> Counter:
    """How many nodes of each op type the graph at ``path`` has: as stored (a QDQ graph shows
    its ``QuantizeLinear`` / ``DequantizeLinear`` pairs around float ops), or, with
    ``optimized=True``, as onnxruntime runs it on the CPU after its fusions (``QLinearConv``,
    ``QLinearMatMul``, ... where the Q/DQ pairs were fused into integer kernels)."""
    onnx = _require("onnx")
    ort = _require("onnxruntime")
    path = _check_path(path)
    if not path.is_file():
        raise ValueError(f"path {str(path)!r} does not exist")
    if not optimized:
        return Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3  # not the warning that the saved graph is CPU-specific
        options.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)


def file_mb(path) -> float:
    """Size of the file at ``path`` in MB (10^6 bytes)."""
    return Path(path).stat().st_size / 1e6

