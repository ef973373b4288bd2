"""SETR: segmentation as sequence-to-sequence, a plain ViT encoder with a light decoder.

Paper: S. Zheng, J. Lu, H. Zhao, X. Zhu, Z. Luo, Y. Wang, Y. Fu, J. Feng, T. Xiang, P. H. S. Torr,
L. Zhang, "Rethinking Semantic Segmentation from a Sequence-to-Sequence Perspective with
Transformers", CVPR 2021 (https://arxiv.org/abs/2012.15840).
Reference code: fudan-zvg/SETR and mmsegmentation (``mmseg/models/backbones/vit.py``,
``mmseg/models/decode_heads/setr_up_head.py``); the encoder is checked against HF transformers'
``ViTModel`` in ``tests/test_setr.py`` (same weights, same features, also at other sizes).

Read top to bottom like the paper (section 3):

1. **Image to sequence** -- cut the image into P x P patches, embed each with a linear map (a
   P x P conv with stride P), prepend ViT's class token and add a learned position embedding.
   The embedding is learned for one grid (224 / 16 = 14 x 14 for ImageNet ViT); for any other
   input it is resampled (bicubic, as ViT fine-tuning does) to the input's patch grid.
2. **Transformer encoder** -- L pre-norm blocks, x + MSA(LN(x)) then x + MLP(LN(x)); the
   sequence keeps its length H/P * W/P throughout, so every layer has a global receptive field
   and every layer costs O(N^2) in the number of patches.
3. **Decoders** -- reshape the last layer's tokens to an H/P x W/P map, then
   *naive*: 1x1 conv + BN + ReLU + 1x1 conv to classes, bilinear upsampling to the input;
   *PUP* (progressive upsampling): [3x3 conv + BN + ReLU, 2x bilinear] x log2(P), then a 1x1
   conv to classes, so no single step upsamples more than 2x. (The paper's third decoder, MLA,
   aggregates several layers and is not implemented here.)

Inputs whose sides are not multiples of P are zero-padded at the bottom/right (mmseg's
"corner" padding) and the logits cropped back, so any H, W >= 32 works.

Sizes are rows of :data:`ENCODERS`: ``"small"`` (``SMALL``, the registry default: 1.8 M
parameters, 8x8 patches) trains on a CPU; ``"vit_b16"`` is ViT-B/16 (the paper's "T-Base") and
``"vit_l16"`` ViT-L/16 (``PAPER``, the paper's "T-Large", ``build("setr_pup", K, paper=True)``).
The builders also take ``encoder="vit_b16"`` to start from another row, and any
:class:`ViTConfig` field by keyword (``build("setr_pup", K, paper=True, depth=12)``). ImageNet
weights from HF transformers load with :func:`convert_hf_vit_state_dict`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._checks import check_count, check_model_input
from . import register
from .blocks import ConvBNReLU, upsample_like
from .config import configure

__all__ = ["ViTConfig", "ENCODERS", "SMALL", "PAPER", "encoder_config", "resize_pos_embed",
           "SelfAttention", "TransformerBlock", "ViTEncoder", "NaiveHead", "PUPHead", "SETR",
           "convert_hf_vit_state_dict", "setr_naive", "setr_pup"]


@dataclass(frozen=True)
class ViTConfig:
    """A ViT encoder and the width of the decoder on top of it."""

    patch_size: int  # P: tokens are P x P patches; the feature map is H/P x W/P
    dim: int  # D: token width
    depth: int  # L: transformer blocks
    num_heads: int  # attention heads (head dim D / heads = 64 in ViT-B and ViT-L)
    image_size: int  # side of the images the position embedding was learned on
    mlp_ratio: int = 4  # MLP hidden width = mlp_ratio * D
    decoder_channels: int = 256  # width of the naive / PUP decoder (mmseg's SETR configs: 256)


ENCODERS: dict[str, ViTConfig] = {
    # CPU-sized: a 64 x 64 image is an 8 x 8 grid of 8 x 8 patches (ViT-Tiny's width, 4 blocks)
    "small": ViTConfig(patch_size=8, dim=192, depth=4, num_heads=3, image_size=64,
                       decoder_channels=64),
    # ViT-B/16 and ViT-L/16 (Dosovitskiy et al. 2021, Table 1) at the resolution of their
    # public ImageNet weights; SETR's paper configuration uses ViT-L/16 from 384 x 384
    "vit_b16": ViTConfig(patch_size=16, dim=768, depth=12, num_heads=12, image_size=224),
    "vit_l16": ViTConfig(patch_size=16, dim=1024, depth=24, num_heads=16, image_size=384),
}
SMALL = ENCODERS["small"]  # the registry default
PAPER = ENCODERS["vit_l16"]  # paper=True


def encoder_config(encoder: str | ViTConfig) -> ViTConfig:
    """The :class:`ViTConfig` named ``encoder`` (a key of :data:`ENCODERS`), or ``encoder``."""
    if isinstance(encoder, ViTConfig):
        return encoder
    if encoder not in ENCODERS:
        raise ValueError(f"unknown SETR encoder {encoder!r}; choose from {', '.join(ENCODERS)}")
    return ENCODERS[encoder]

_LN_EPS = 1e-6  # ViT's LayerNorm epsilon (timm, mmseg and the JAX original)


def resize_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resample a ViT position embedding to another patch grid.

    ``pos_embed`` is ``(1, 1 + g*g, D)``: the class token's embedding, then one per patch of the
    g x g grid it was learned on. Returns ``(1, 1 + h*w, D)`` for ``grid = (h, w)``: the class
    token's entry unchanged, the patch entries bicubically resampled as an image with D channels
    (``align_corners=False``, as in ViT fine-tuning, timm, mmseg and HF).
    """
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    _, N, D = patch_pos.shape
    g = math.isqrt(N)
    if g * g != N:
        raise ValueError(f"position embedding has {N} patch entries, not a square grid")
    patch_pos = patch_pos.reshape(1, g, g, D).permute(0, 3, 1, 2)  # (1, g*g, D) -> (1, D, g, g)
    patch_pos = F.interpolate(patch_pos, size=grid, mode="bicubic", align_corners=False)
    patch_pos = patch_pos.flatten(2).transpose(1, 2)  # (1, D, h, w) -> (1, h*w, D)
    return torch.cat([cls_pos, patch_pos], dim=1)


class SelfAttention(nn.Module):
    """Multi-head self-attention over all N tokens: an N x N attention matrix per head."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)  # queries, keys and values in one matmul
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (B, N, 3, h, d) -> 3 x (B, h, N, d)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v
        return self.proj(out.transpose(1, 2).reshape(B, N, C))  # (B, h, N, d) -> (B, N, C)


class TransformerBlock(nn.Module):
    """Pre-norm ViT block: x + MSA(LN(x)), then x + MLP(LN(x)) with a GELU MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.attn = SelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(),
                                 nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTEncoder(nn.Module):
    """ViT: patches -> tokens (+ class token, + resized position embedding) -> L blocks -> LN.

    Returns the patch tokens as a feature map ``(B, D, H/P, W/P)``; the class token, kept so
    ImageNet ViT weights load unchanged, is dropped at the end.
    """

    def __init__(self, config: ViTConfig, in_channels: int = 3):
        super().__init__()
        self.patch_size = config.patch_size
        grid = config.image_size // config.patch_size
        self.patch_embed = nn.Conv2d(in_channels, config.dim, config.patch_size, config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, config.dim))
        self.blocks = nn.ModuleList(TransformerBlock(config.dim, config.num_heads, config.mlp_ratio)
                                    for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.dim, eps=_LN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        B, D, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)  # (B, D, h, w) -> (B, N = h*w, D)
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)  # -> (B, 1 + N, D)
        x = x + resize_pos_embed(self.pos_embed, (h, w))
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)[:, 1:]  # drop the class token
        return x.transpose(1, 2).reshape(B, D, h, w)  # (B, N, D) -> (B, D, h, w)


class NaiveHead(nn.Sequential):
    """SETR-Naive: 1x1 conv + BN + ReLU, then a 1x1 conv to class scores (at 1/P resolution)."""

    def __init__(self, dim: int, channels: int, num_classes: int):
        super().__init__(ConvBNReLU(dim, channels, kernel_size=1),
                         nn.Conv2d(channels, num_classes, 1))


class PUPHead(nn.Sequential):
    """SETR-PUP: [3x3 conv + BN + ReLU, 2x bilinear upsampling] x log2(P), then a 1x1 classifier.

    Upsampling by 2 at a time with a conv in between lets each step refine what the previous
    one interpolated; four steps take a 16-pixel patch grid back to full resolution.
    """

    def __init__(self, dim: int, channels: int, num_classes: int, patch_size: int):
        steps = int(math.log2(patch_size))
        if 2 ** steps != patch_size:
            raise ValueError(f"PUP doubles the resolution step by step, so the patch size must "
                             f"be a power of 2; got {patch_size}")
        layers = []
        for i in range(steps):
            layers += [ConvBNReLU(dim if i == 0 else channels, channels, kernel_size=3),
                       nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)]
        super().__init__(*layers, nn.Conv2d(channels, num_classes, 1))


class SETR(nn.Module):
    """SETR with the naive or PUP decoder; logits ``[B, K, H, W]`` for any ``H, W >= 32``.

    ``encoder`` is a key of :data:`ENCODERS` (``"small"``, ``"vit_b16"``, ``"vit_l16"``) or a
    :class:`ViTConfig`; ``decoder`` is ``"naive"`` or ``"pup"``.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, decoder: str = "naive",
                 encoder: str | ViTConfig = "small"):
        super().__init__()
        check_count(num_classes, "num_classes"), check_count(in_channels, "in_channels")
        encoder = encoder_config(encoder)
        self.config = encoder
        self.in_channels = in_channels
        self.encoder = ViTEncoder(encoder, in_channels)
        if decoder == "naive":
            self.decoder = NaiveHead(encoder.dim, encoder.decoder_channels, num_classes)
        elif decoder == "pup":
            self.decoder = PUPHead(encoder.dim, encoder.decoder_channels, num_classes,
                                   encoder.patch_size)
        else:
            raise ValueError(f"unknown SETR decoder {decoder!r}; choose 'naive' or 'pup'")
        self.apply(_init_weights)
        # ViT initialises its class token and position embedding with std 0.02
        nn.init.trunc_normal_(self.encoder.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.encoder.cls_token, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_model_input(self, x)
        H, W = x.shape[-2:]
        P = self.config.patch_size
        x = F.pad(x, (0, -W % P, 0, -H % P))  # bottom/right zeros up to a multiple of P
        logits = upsample_like(self.decoder(self.encoder(x)), x.shape[-2:])  # PUP: already there
        return logits[..., :H, :W]  # (B, K, H, W)


def _init_weights(m: nn.Module) -> None:
    """ViT's initialisation: truncated normal (std 0.02) linear layers with zero bias; He normal
    (fan-out) convolutions in the decoder; ones/zeros for norms."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def convert_hf_vit_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a HF ``ViTModel`` / ``ViTForImageClassification`` state dict to
    :class:`ViTEncoder`'s names (so ``google/vit-base-patch16-224`` can initialise SETR)::

        name = "google/vit-base-patch16-224-in21k"
        hf = ViTModel.from_pretrained(name, add_pooling_layer=False)
        model = SETR(num_classes, decoder="pup", encoder="vit_b16")
        model.encoder.load_state_dict(convert_hf_vit_state_dict(hf.state_dict()))

    Both transformers < 5 (``encoder.layer.0.attention.attention.query``) and >= 5
    (``layers.0.attention.q_proj``) names are accepted; the separate query/key/value weights
    are concatenated into ``qkv``. The pooler and ImageNet classifier are dropped.
    """
    layer = r"^(?:encoder\.layer|layers)\.(\d+)\."  # transformers < 5 | >= 5
    renames = [
        (r"^embeddings\.cls_token$", "cls_token"),
        (r"^embeddings\.position_embeddings$", "pos_embed"),
        (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed."),
        (layer + r"layernorm_before\.", r"blocks.\1.norm1."),
        (layer + r"layernorm_after\.", r"blocks.\1.norm2."),
        (layer + r"attention\.(?:attention\.query|q_proj)\.", r"blocks.\1.attn.q."),
        (layer + r"attention\.(?:attention\.key|k_proj)\.", r"blocks.\1.attn.k."),
        (layer + r"attention\.(?:attention\.value|v_proj)\.", r"blocks.\1.attn.v."),
        (layer + r"attention\.(?:output\.dense|o_proj)\.", r"blocks.\1.attn.proj."),
        (layer + r"(?:intermediate\.dense|mlp\.fc1)\.", r"blocks.\1.mlp.0."),
        (layer + r"(?:output\.dense|mlp\.fc2)\.", r"blocks.\1.mlp.2."),
        (r"^layernorm\.", "norm."),
    ]
    converted, unknown = {}, []
    for name, tensor in state_dict.items():
        key = name.removeprefix("vit.")
        if key.startswith(("pooler.", "classifier.")):
            continue
        for pattern, repl in renames:
            key, hits = re.subn(pattern, repl, key)
            if hits:
                break
        else:
            unknown.append(name)
        converted[key] = tensor
    if unknown:
        raise ValueError(f"not a HF ViT state dict: cannot map {unknown[:5]}"
                         f"{' ...' if len(unknown) > 5 else ''}")
    # HF keeps query, key and value apart; ours is one (3D, D) matrix in that order
    for key in [k for k in converted if ".attn.q." in k]:
        prefix, suffix = key.split(".attn.q.")
        parts = [converted.pop(f"{prefix}.attn.{n}.{suffix}") for n in "qkv"]
        converted[f"{prefix}.attn.qkv.{suffix}"] = torch.cat(parts, dim=0)
    return converted


@register("setr_naive")
def setr_naive(num_classes: int, in_channels: int = 3, paper: bool = False,
               encoder: str | ViTConfig | None = None, **overrides) -> SETR:
    """SETR-Naive; ``SMALL`` by default, ``paper=True`` for ViT-L/16, ``encoder`` for another row
    of :data:`ENCODERS` (overrides: any :class:`ViTConfig` field)."""
    base = encoder_config(encoder) if encoder is not None else PAPER if paper else SMALL
    return SETR(num_classes, in_channels, "naive", configure(base, **overrides))


@register("setr_pup")
def setr_pup(num_classes: int, in_channels: int = 3, paper: bool = False,
             encoder: str | ViTConfig | None = None, **overrides) -> SETR:
    """SETR-PUP; ``SMALL`` by default, ``paper=True`` for ViT-L/16, ``encoder`` for another row
    of :data:`ENCODERS` (overrides: any :class:`ViTConfig` field)."""
    base = encoder_config(encoder) if encoder is not None else PAPER if paper else SMALL
    return SETR(num_classes, in_channels, "pup", configure(base, **overrides))
