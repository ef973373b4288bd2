"""FCN-32s, FCN-16s and FCN-8s: fully convolutional networks on a VGG16 backbone.

Paper: J. Long, E. Shelhamer, T. Darrell, "Fully Convolutional Networks for Semantic
Segmentation", CVPR 2015 (and the PAMI 2016 version, arXiv:1605.06211).
Reference code: shelhamer/fcn.berkeleyvision.org (``voc-fcn32s/net.py``, ``voc-fcn8s/net.py``,
``voc-fcn8s-atonce/net.py``, ``surgery.py``), which this file follows layer for layer:

- VGG16's convolutions, with the first one padded by **100 pixels** and Caffe's *ceil* pooling;
- the classifier's fully connected fc6/fc7 recast as a 7 x 7 and a 1 x 1 convolution, so the
  network slides over images of any size and predicts a coarse map of class scores;
- **transposed convolutions initialised to bilinear interpolation** (the bilinear kernel on the
  channel diagonal, zeros elsewhere, as ``surgery.interp``) and kept fixed, as in the reference
  implementation ("there is no significant difference in accuracy", its README says);
- skip layers: 1 x 1 ``score_pool4`` / ``score_pool3`` convolutions, zero-initialised so training
  starts from the coarser net's predictions (the paper's staged recipe), summed after the
  upsampled scores are **cropped into alignment** with the offsets Caffe's ``crop`` layer computes
  (5, 9 and 31 for VGG16 FCN-8s). This file derives those offsets from the layer geometry, so
  any padding / fc6 size works, and any input size gives logits of exactly that size.

Two configurations:

- ``FCNConfig()`` / ``build("fcn8s", 21, paper=True)``: VGG16 as published (134,489,759
  parameters for FCN-8s on PASCAL VOC, as in ``voc-fcn8s/train.prototxt``); ImageNet weights load
  with :func:`load_vgg16_weights` (torchvision's ``vgg16`` checkpoint).
- ``SMALL`` (the registry default): the same network 8x narrower (fc6/fc7 32x), with BatchNorm
  (so it trains from scratch on a CPU), a 4 x 4 fc6 and the smallest first-layer padding (34) for
  which every crop fits at every input size >= 32.

Design decisions, documented where the reference leaves a choice:

- The "at-once" FCN-8s multiplies pool4 by 0.01 and pool3 by 0.0001 before scoring, to
  compensate for the large activations of un-normalised VGG when training all layers together
  with SGD. We expose this as ``skip_scales`` (default 1, 1): with AdamW, whose step size does not
  follow the gradient's scale, those factors only slow the skip layers down by 100-10,000x.
- The class-scoring layer ``score_fr`` keeps PyTorch's default initialisation. The paper
  zero-initialises it (which is harmless after pre-training), but then no gradient reaches the
  backbone on the first step.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn as nn

from .._checks import check_count, check_model_input
from . import register
from .config import configure

__all__ = ["FCN", "FCNConfig", "PAPER", "SMALL", "VGG16Features", "bilinear_kernel",
           "bilinear_upsampling", "crop_offsets", "load_vgg16_weights", "fcn32s", "fcn8s"]

VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"  # torchvision's vgg16
VGG16_BN_URL = "https://download.pytorch.org/models/vgg16_bn-6c64b313.pth"  # and vgg16_bn


@dataclass(frozen=True)
class FCNConfig:
    """Hyper-parameters of an FCN; the defaults are the paper's VGG16 network."""

    widths: tuple[int, ...] = (64, 128, 256, 512, 512)  # channels of VGG16's five conv stages
    fc_channels: int = 4096  # fc6 / fc7 width
    fc6_kernel: int = 7  # fc6 sees a 7 x 7 window of pool5 (VGG16 flattens a 7 x 7 map)
    first_pad: int = 100  # zero padding of conv1_1: room for the crops at every input size
    batch_norm: bool = False  # BatchNorm after each conv (torchvision's vgg16_bn layout)
    dropout: float = 0.5  # after fc6 and fc7, as in VGG16
    skip_scales: tuple[float, float] = (1.0, 1.0)  # pool4, pool3; the at-once model: 0.01, 1e-4


PAPER = FCNConfig()  # paper=True: VGG16 as published
# the registry default: 8x narrower (fc 32x), BatchNorm to train from scratch, a 4 x 4 fc6
SMALL = FCNConfig(widths=(8, 16, 32, 64, 64), fc_channels=128, fc6_kernel=4, first_pad=34,
                  batch_norm=True, dropout=0.1)

_CONVS_PER_STAGE = (2, 2, 3, 3, 3)  # VGG16, configuration "D" of Simonyan & Zisserman


# --- The backbone: VGG16's convolutions -------------------------------------------------------

class VGG16Features(nn.Sequential):
    """VGG16's conv layers, laid out like torchvision's ``vgg16(_bn).features`` (same indices).

    Two changes, both from the FCN reference: conv1_1 pads by ``first_pad`` instead of 1, and
    pooling rounds *up* (Caffe's rule). Neither changes a weight's shape, so ImageNet weights load
    unchanged. ``forward`` returns the pooled maps the FCN heads need: pool3 (stride 8), pool4
    (stride 16) and pool5 (stride 32).
    """

    def __init__(self, in_channels: int = 3, widths=PAPER.widths, first_pad: int = 100,
                 batch_norm: bool = False):
        layers, taps, c_in = [], {}, in_channels
        for stage, (width, n_convs) in enumerate(zip(widths, _CONVS_PER_STAGE), start=1):
            for i in range(n_convs):
                pad = first_pad if (stage, i) == (1, 0) else 1
                layers.append(nn.Conv2d(c_in, width, 3, padding=pad))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(width))
                layers.append(nn.ReLU(inplace=True))
                c_in = width
            layers.append(nn.MaxPool2d(2, stride=2, ceil_mode=True))
            taps[len(layers) - 1] = f"pool{stage}"
        super().__init__(*layers)
        self.taps = {i: name for i, name in taps.items() if name in ("pool3", "pool4", "pool5")}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for i, layer in enumerate(self):
            x = layer(x)
            if i in self.taps:
                out[self.taps[i]] = x
        return out


# --- Upsampling: a transposed convolution that starts as bilinear interpolation ---------------

def bilinear_kernel(size: int) -> torch.Tensor:
    """The ``size x size`` bilinear interpolation kernel of ``surgery.upsample_filt``.

    For an even size 2f (upsampling by f) it is the outer product of the 1-D "tent"
    ``1 - |i - c| / f`` centred at ``c = f - 1/2``; e.g. size 4: [1, 3, 3, 1] / 4.
    """
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    tent = 1 - (torch.arange(size, dtype=torch.float64) - center).abs() / factor
    return (tent[:, None] * tent[None, :]).float()


def bilinear_upsampling(channels: int, factor: int, learnable: bool = False) -> nn.ConvTranspose2d:
    """A ``channels -> channels`` transposed conv (kernel 2f, stride f) that upsamples by ``f``.

    As in ``surgery.interp``, each channel is interpolated on its own: the bilinear kernel sits on
    the diagonal of the weight ``[C_in, C_out, k, k]`` and every cross-channel entry is zero. The
    output is ``(n - 1) f + 2f`` long and equals bilinear interpolation shifted by ``f / 2``
    pixels (the crops below take that into account). Fixed by default, like the reference.
    """
    up = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, bias=False)
    with torch.no_grad():
        up.weight.zero_()
        kernel = bilinear_kernel(2 * factor).to(up.weight.device)
        for c in range(channels):
            up.weight[c, c] = kernel
    up.weight.requires_grad_(learnable)
    return up


# --- Alignment: where does each score map sit on the input? -----------------------------------

def crop_offsets(first_pad: int = 100, fc6_kernel: int = 7) -> dict[str, int]:
    """The crop offsets that align FCN's score maps, derived as Caffe's ``coord_map`` does.

    Unit ``i`` of a map with stride ``s`` and offset ``o`` is centred over input pixel
    ``s * i + o``. A 3 x 3 conv with padding 1 keeps ``(s, o)``; conv1_1's padding ``p`` gives
    ``o = 1 - p``; each 2 x 2 pooling maps unit ``i`` to the centre of input units ``2i, 2i+1``:
    ``(s, o) -> (2s, o + s/2)``; fc6 (``k x k``, no padding) adds ``s (k - 1) / 2``. A transposed
    conv (kernel 2f, stride f) puts output ``j`` over input ``(j - f + 1/2) / f``:
    ``(s, o) -> (s / f, o - (s / f)(f - 1/2))``. Two maps with the same stride are aligned by
    dropping the ``(o_target - o_source) / s`` leading units of the source.

    Returns the offsets for ``pool4`` (into the 2x-upsampled scores), ``pool3`` (into the 4x),
    and the final crops ``out32``, ``out16``, ``out8`` into the input; VGG16's (100, 7) gives
    5, 9 and 19, 27, 31, the numbers in the reference prototxts.
    """
    p, k = first_pad, fc6_kernel
    pool3, pool4 = (8, 4.5 - p), (16, 8.5 - p)
    score = (32, 16.5 - p + 16 * (k - 1))  # pool5 is (32, 16.5 - p); fc6 widens the window

    def up(grid, f):
        s, o = grid
        return s / f, o - (s / f) * (f - 0.5)

    def offset(source, target):
        (s, o_source), (_, o_target) = source, target
        return (o_target - o_source) / s

    up2 = up(score, 2)  # fuse_pool4 lives on this grid
    up4 = up(up2, 2)  # fuse_pool3 lives on this grid
    image = (1, 0.0)
    offsets = {"pool4": offset(pool4, up2), "pool3": offset(pool3, up4),
               "out32": offset(up(score, 32), image), "out16": offset(up(up2, 16), image),
               "out8": offset(up(up4, 8), image)}
    for name, value in offsets.items():
        if value < 0 or value != int(value):
            raise ValueError(f"first_pad={p}, fc6_kernel={k} give the {name} crop a "
                             f"non-integer or negative offset {value}; FCN cannot align it")
    return {name: int(value) for name, value in offsets.items()}


def _crop(x: torch.Tensor, offset: int, size) -> torch.Tensor:
    """``x[..., offset : offset + h, offset : offset + w]`` (Caffe's crop layer on axes 2, 3)."""
    h, w = size
    if x.shape[-2] < offset + h or x.shape[-1] < offset + w:
        raise RuntimeError(f"cannot crop {tuple(x.shape[-2:])} at offset {offset} to {(h, w)}: "
                           "the first-layer padding is too small for this input size")
    return x[..., offset:offset + h, offset:offset + w]


# --- The model --------------------------------------------------------------------------------

class FCN(nn.Module):
    """FCN-32s / 16s / 8s: VGG16 → fc6/fc7 convs → class scores → fused, upsampled, cropped.

    ``stride`` is the coarsest prediction stride that the last upsampling undoes: 32 (no skips),
    16 (+ pool4) or 8 (+ pool4 + pool3). Takes ``[B, C, H, W]``, returns ``[B, K, H, W]``.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, stride: int = 8,
                 config: FCNConfig = SMALL):
        super().__init__()
        check_count(num_classes, "num_classes"), check_count(in_channels, "in_channels")
        if stride not in (32, 16, 8):
            raise ValueError(f"stride must be 32, 16 or 8, got {stride}")
        cfg, K = config, num_classes
        self.num_classes, self.in_channels, self.stride, self.config = K, in_channels, stride, cfg
        self.offsets = crop_offsets(cfg.first_pad, cfg.fc6_kernel)

        self.features = VGG16Features(in_channels, cfg.widths, cfg.first_pad, cfg.batch_norm)
        self.classifier = nn.Sequential(OrderedDict(
            fc6=nn.Conv2d(cfg.widths[-1], cfg.fc_channels, cfg.fc6_kernel),
            relu6=nn.ReLU(inplace=True), drop6=nn.Dropout(cfg.dropout),
            fc7=nn.Conv2d(cfg.fc_channels, cfg.fc_channels, 1),
            relu7=nn.ReLU(inplace=True), drop7=nn.Dropout(cfg.dropout),
        ))
        self.score_fr = nn.Conv2d(cfg.fc_channels, K, 1)
        if stride <= 16:
            self.upscore2 = bilinear_upsampling(K, 2)
            self.score_pool4 = nn.Conv2d(cfg.widths[3], K, 1)
        if stride == 8:
            self.upscore_pool4 = bilinear_upsampling(K, 2)
            self.score_pool3 = nn.Conv2d(cfg.widths[2], K, 1)
        self.upscore = bilinear_upsampling(K, stride)  # "upscore8" / "upscore16" / "upscore"
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.features.modules():  # as torchvision's VGG
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        for name in ("score_pool4", "score_pool3"):  # skips start at zero: the paper's recipe
            if hasattr(self, name):
                nn.init.zeros_(getattr(self, name).weight)
                nn.init.zeros_(getattr(self, name).bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_model_input(self, x)
        H, W = x.shape[-2:]
        feats = self.features(x)  # pool3, pool4, pool5; each larger than H/s by the padding
        score = self.score_fr(self.classifier(feats["pool5"]))  # (B, K, ~H/32 + 2, ...)
        scale4, scale3 = self.config.skip_scales
        if self.stride <= 16:
            score = self.upscore2(score)  # stride 16
            skip = self.score_pool4(feats["pool4"] * scale4 if scale4 != 1 else feats["pool4"])
            score = score + _crop(skip, self.offsets["pool4"], score.shape[-2:])
        if self.stride == 8:
            score = self.upscore_pool4(score)  # stride 8
            skip = self.score_pool3(feats["pool3"] * scale3 if scale3 != 1 else feats["pool3"])
            score = score + _crop(skip, self.offsets["pool3"], score.shape[-2:])
        score = self.upscore(score)  # stride 1, larger than the input
        return _crop(score, self.offsets[f"out{self.stride}"], (H, W))


# --- ImageNet weights -------------------------------------------------------------------------

def load_vgg16_weights(model: FCN, state_dict: dict | None = None, progress: bool = True) -> FCN:
    """Load ImageNet VGG16 weights into ``model``'s backbone and fc6/fc7; returns ``model``.

    ``state_dict`` is a torchvision ``vgg16`` (or ``vgg16_bn`` when the model uses BatchNorm)
    checkpoint; when omitted it is downloaded with ``torch.hub.load_state_dict_from_url`` (needs
    the network, e.g. on Colab). ``features.*`` copy as they are; the fully connected
    ``classifier.0`` (fc6, ``[4096, 512 * 7 * 7]``) and ``classifier.3`` (fc7, ``[4096, 4096]``)
    are reshaped into the convolutions ``[4096, 512, 7, 7]`` and ``[4096, 4096, 1, 1]``: a Linear
    layer on a flattened ``C x 7 x 7`` window *is* a 7 x 7 convolution. ImageNet's 1000-way
    ``classifier.6`` has no counterpart; the score layers keep their initialisation.
    """
    if state_dict is None:
        url = VGG16_BN_URL if model.config.batch_norm else VGG16_URL
        state_dict = torch.hub.load_state_dict_from_url(url, progress=progress)
    own = model.state_dict()
    renamed = {f"classifier.{i}.{p}": f"classifier.{fc}.{p}"  # torchvision index -> our name
               for i, fc in ((0, "fc6"), (3, "fc7")) for p in ("weight", "bias")}
    mapped = {}
    for key, value in state_dict.items():
        if key.startswith("features."):
            target = key
        elif key in renamed:
            target = renamed[key]
        else:
            continue  # classifier.6 (fc8, ImageNet classes)
        if target not in own:
            raise ValueError(f"checkpoint key {key!r} has no counterpart {target!r} in the model "
                             "(vgg16_bn weights need batch_norm=True, vgg16 weights need False)")
        if own[target].numel() != value.numel():
            raise ValueError(f"{key}: checkpoint shape {tuple(value.shape)} does not fit the "
                             f"model's {target} {tuple(own[target].shape)}")
        mapped[target] = value.reshape(own[target].shape)  # fc -> conv: same numbers, new shape
    expected = {k for k in own if k.startswith(("features.", "classifier."))}
    if missing := sorted(expected - set(mapped)):
        raise ValueError(f"checkpoint lacks {len(missing)} backbone tensors, e.g. {missing[:3]}")
    model.load_state_dict(mapped, strict=False)
    return model


# --- Registry ----------------------------------------------------------------------------------

@register("fcn32s")
def fcn32s(num_classes: int, in_channels: int = 3, paper: bool = False, **overrides) -> FCN:
    """FCN-32s; ``paper=True`` for VGG16 (overrides: any :class:`FCNConfig` field)."""
    config = configure(PAPER if paper else SMALL, **overrides)
    return FCN(num_classes, in_channels, stride=32, config=config)


@register("fcn8s")
def fcn8s(num_classes: int, in_channels: int = 3, paper: bool = False, **overrides) -> FCN:
    """FCN-8s; ``paper=True`` for VGG16 (overrides: any :class:`FCNConfig` field)."""
    config = configure(PAPER if paper else SMALL, **overrides)
    return FCN(num_classes, in_channels, stride=8, config=config)
