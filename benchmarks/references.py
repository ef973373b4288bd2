"""The reference implementations the speed benchmark races, loaded with the same weights as ours.

Each ``*_reference(num_classes, variant)`` returns ``(ours, reference, output)`` or ``None`` when
the reference library is not installed: ``ours`` a segcourse model carrying the reference's
(random) weights through the course's converter, ``reference`` a callable image -> the
reference's output, and ``output(model, images)`` the same output from a segcourse model --
what is timed and compared on both sides.

- SegFormer: HF transformers' ``SegformerForSemanticSegmentation`` (its logits, at 1/4 of the
  input: ``forward_quarter`` on our side), weights through ``convert_hf_state_dict``.
- DeepLabV3: torchvision's ``deeplabv3_resnet50/101`` (output stride 8, no auxiliary head), whose
  parameter names segcourse's DeepLabV3 keeps one for one (``load_state_dict`` directly).

torchvision's PyPI wheels are CUDA builds whose compiled operators (NMS, RoIAlign) do not load
beside a CPU build of torch from another index; its segmentation models never call them. Install
it on the side and without dependencies (so pip does not replace torch), and put it on the path
for this benchmark only (transformers would import it otherwise)::

    pip install --no-deps --target .torchvision "torchvision==0.28.0"   # the one for torch 2.13
    PYTHONPATH=.torchvision python benchmarks/speed.py --paper --size 512

:func:`import_torchvision` then declares the two operator schemas torchvision registers fake
kernels for at import time, so its Python models import without its C++ extension.
"""

from __future__ import annotations

import importlib.util
import sys
import time
import warnings

import torch

from segcourse import models
from segcourse.models.segformer import VARIANTS, convert_hf_state_dict

_DECLARED: list[str] = []


def import_torchvision():
    """torchvision's Python package, or ``None`` if it is not installed."""
    if importlib.util.find_spec("torchvision") is None:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Failed to load image Python extension" ...
            import torchvision
        return torchvision
    except RuntimeError as error:  # "operator torchvision::nms does not exist"
        if "torchvision::" not in str(error):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]  # the half-imported package
    for op in ("nms", "qnms"):
        if op not in _DECLARED:
            torch.library.define(f"torchvision::{op}",
                                 "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            _DECLARED.append(op)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torchvision
    return torchvision


def segformer_reference(num_classes: int = 150, variant: str = "b0"):
    """(ours, HF's SegFormer, logits at 1/4) on the same random weights, or None."""
    if importlib.util.find_spec("transformers") is None:
        return None
    import_torchvision()  # transformers imports torchvision if it is on the path
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    v = VARIANTS[variant]
    config = SegformerConfig(hidden_sizes=list(v.hidden_sizes), depths=list(v.depths),
                             num_attention_heads=list(v.num_heads), sr_ratios=list(v.sr_ratios),
                             decoder_hidden_size=v.decoder_width, num_labels=num_classes)
    torch.manual_seed(0)
    hf = SegformerForSemanticSegmentation(config).eval()
    ours = models.build("segformer", num_classes=num_classes, variant=variant).eval()
    ours.load_state_dict(convert_hf_state_dict(hf.state_dict()))
    return ours, (lambda x: hf(pixel_values=x).logits), (lambda m, x: m.forward_quarter(x))


def deeplabv3_reference(num_classes: int = 21, depth: int = 101):
    """(ours, torchvision's DeepLabV3-ResNet-``depth``, logits at the input size) on the same
    random weights, or None. torchvision's configuration: output stride 8, no auxiliary head."""
    torchvision = import_torchvision()
    if torchvision is None:
        return None
    from torchvision.models import segmentation

    builder = {50: segmentation.deeplabv3_resnet50, 101: segmentation.deeplabv3_resnet101}[depth]
    torch.manual_seed(0)
    tv = builder(weights=None, weights_backbone=None, num_classes=num_classes,
                 aux_loss=False).eval()
    ours = models.build("deeplabv3", num_classes=num_classes, paper=True, depth=depth,
                        output_stride=8).eval()
    ours.load_state_dict(tv.state_dict())  # the same names, strict
    return ours, (lambda x: tv(x)["out"]), (lambda m, x: m(x))


def time_in_turns(impls: dict, x: torch.Tensor, runs: int) -> dict[str, list[float]]:
    """Milliseconds per call of each callable on ``x``, after one warm-up each; the
    implementations take turns run by run, so a busy machine slows all alike instead of
    whichever happened to run during the busy spell."""
    times = {name: [] for name in impls}
    with torch.inference_mode():
        for fn in impls.values():
            fn(x)  # warm-up: allocations, kernel selection
        for _ in range(runs):
            for name, fn in impls.items():
                start = time.perf_counter()
                fn(x)
                times[name].append((time.perf_counter() - start) * 1e3)
    return times


REFERENCES = {"segformer": ("HF transformers", segformer_reference),
              "deeplabv3": ("torchvision", deeplabv3_reference)}
