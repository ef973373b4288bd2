"""SegFormer: a hierarchical Mix Transformer (MiT) encoder and an all-MLP decoder.

Paper: E. Xie, W. Wang, Z. Yu, A. Anandkumar, J. M. Alvarez, P. Luo, "SegFormer: Simple and
Efficient Design for Semantic Segmentation with Transformers", NeurIPS 2021
(https://arxiv.org/abs/2105.15203).
Reference code: NVlabs/SegFormer (``mmseg/models/backbones/mix_transformer.py``,
``mmseg/models/decode_heads/segformer_head.py``) and HF transformers'
``models/segformer/modeling_segformer.py``. ``tests/test_segformer.py`` checks that this file
gives HF's logits (to 1e-4) after :func:`convert_hf_state_dict`, and HF's parameter counts.

Read top to bottom like the paper (section 3):

1. **Overlapping patch merging** -- a strided convolution whose kernel is larger than its stride
   (7/4 for stage 1, 3/2 after), so neighbouring patches share pixels; four stages give features
   at 1/4, 1/8, 1/16 and 1/32 of the input.
2. **Efficient self-attention** -- keys and values are computed from a map shrunk by a strided
   convolution with ratio R (8, 4, 2, 1 per stage), so attention costs N * N / R^2 instead of N^2.
3. **Mix-FFN** -- fc1 -> 3x3 depthwise conv -> GELU -> fc2. The depthwise conv leaks enough
   position information (through zero padding) that MiT needs no position encoding, so the
   model runs at any resolution without interpolating anything.
4. **All-MLP decoder** -- project every stage to one width, upsample to 1/4, concatenate, fuse
   with a 1x1 conv + BatchNorm + ReLU, classify with a 1x1 conv. For inference the linear part
   folds into one 1x1 map per stage at the stage's own resolution (``decoder.fold = True``:
   the same logits for about half of B0's FLOPs, see :class:`AllMLPDecoder`).

The six published sizes B0..B5 come from one table (:data:`VARIANTS`) and one constructor::

    model = SegFormer(num_classes=150, variant="b2")
    model = build("segformer", 150, paper=True, variant="b2")   # the same, through the registry

B0 (3.8 M parameters) is small enough for a CPU, so it is both the registry default (``SMALL``)
and ``PAPER``: ``paper=True`` alone gives B0, ``variant="b1".."b5"`` a larger published row, and
keyword overrides replace any :class:`SegFormerConfig` field (``drop_path=0.0``).

Pretrained weights (on Colab, with ``transformers`` installed)::

    from transformers import SegformerForSemanticSegmentation
    name = "nvidia/segformer-b0-finetuned-ade-512-512"
    hf = SegformerForSemanticSegmentation.from_pretrained(name)
    model = SegFormer(num_classes=150, variant="b0")
    model.load_state_dict(convert_hf_state_dict(hf.state_dict()))

For an ImageNet-pretrained encoder only (``nvidia/mit-b0`` .. ``nvidia/mit-b5``), load the
converted weights into ``model.encoder`` (see :func:`convert_hf_state_dict`).
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

__all__ = ["SegFormerConfig", "VARIANTS", "SMALL", "PAPER", "variant_config",
           "OverlapPatchEmbed", "EfficientSelfAttention", "MixFFN", "MiTBlock", "MiTStage",
           "MixTransformer", "AllMLPDecoder", "SegFormer", "DropPath", "convert_hf_state_dict",
           "segformer"]

# The original MiT normalises blocks and stage outputs with eps=1e-6 (``partial(nn.LayerNorm,
# eps=1e-6)`` in mix_transformer.py) and uses PyTorch's default 1e-5 in the patch embedding and
# the key/value reduction. HF uses 1e-5 everywhere; the logits differ by ~1e-6 (see the tests).
_BLOCK_LN_EPS = 1e-6


@dataclass(frozen=True)
class SegFormerConfig:
    """Hyper-parameters of one SegFormer size (paper Table 6 and section 3.3)."""

    hidden_sizes: tuple[int, int, int, int]  # channels C_i of the four stages
    depths: tuple[int, int, int, int]  # transformer blocks per stage (L_i)
    decoder_width: int  # C of the all-MLP decoder: 256 for B0/B1, 768 for B2..B5
    num_heads: tuple[int, int, int, int] = (1, 2, 5, 8)  # N_i: head dim 32 (B0) or 64
    # R_i: stage i is (H/4)/2^i wide, R_i shrinks it to ~1/32 of the input for keys/values, a
    # grid every input >= 32 pixels still has
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    mlp_ratio: int = 4  # Mix-FFN expansion E_i
    patch_sizes: tuple[int, int, int, int] = (7, 3, 3, 3)  # overlapping: kernel > stride
    strides: tuple[int, int, int, int] = (4, 2, 2, 2)  # stage resolutions 1/4, 1/8, 1/16, 1/32
    drop_path: float = 0.1  # largest stochastic-depth rate, at the last block (drop_path_rate)
    dropout: float = 0.1  # before the decoder's classifier (NVlabs configs: dropout_ratio=0.1)


# One table for the six published sizes (paper Table 6; the configs of NVlabs/SegFormer and the
# nvidia/mit-b* model cards). Only widths, depths and decoder width change.
_WIDE = (64, 128, 320, 512)
VARIANTS: dict[str, SegFormerConfig] = {
    "b0": SegFormerConfig((32, 64, 160, 256), (2, 2, 2, 2), decoder_width=256),
    "b1": SegFormerConfig(_WIDE, (2, 2, 2, 2), decoder_width=256),
    "b2": SegFormerConfig(_WIDE, (3, 4, 6, 3), decoder_width=768),
    "b3": SegFormerConfig(_WIDE, (3, 4, 18, 3), decoder_width=768),
    "b4": SegFormerConfig(_WIDE, (3, 8, 27, 3), decoder_width=768),
    "b5": SegFormerConfig(_WIDE, (3, 6, 40, 3), decoder_width=768),
}
SMALL = VARIANTS["b0"]  # the registry default: B0 trains on a CPU
PAPER = VARIANTS["b0"]  # paper=True; variant="b1".."b5" picks another published row


def variant_config(variant: str | SegFormerConfig) -> SegFormerConfig:
    """The row ``variant`` (``"b0"`` .. ``"b5"``) of :data:`VARIANTS`, or ``variant`` itself."""
    if isinstance(variant, SegFormerConfig):
        return variant
    if variant not in VARIANTS:
        raise ValueError(f"unknown SegFormer variant {variant!r}; "
                         f"choose from {', '.join(VARIANTS)}")
    return VARIANTS[variant]


# --------------------------------------------------------------------------------------------
# Encoder pieces, smallest first
# --------------------------------------------------------------------------------------------

class OverlapPatchEmbed(nn.Module):
    """Overlapping patch merging: a k x k conv with stride s < k, then LayerNorm over channels."""

    def __init__(self, in_channels: int, out_channels: int, patch_size: int, stride: int):
        super().__init__()
        # padding k // 2 keeps the output at ceil(H / s): 97 -> 25 -> 13 -> 7 -> 4
        self.proj = nn.Conv2d(in_channels, out_channels, patch_size, stride, patch_size // 2)
        self.norm = nn.LayerNorm(out_channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        _, _, H, W = x.shape
        x = x.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, N = H*W, C)
        return self.norm(x), H, W


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys/values come from a map shrunk R times per side.

    Queries keep all N = H*W tokens; a R x R conv with stride R (then LayerNorm) reduces the
    tokens seen as keys and values to N / R^2, so the attention matrix is N x N/R^2.
    """

    def __init__(self, dim: int, num_heads: int, sr_ratio: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.sr_norm = nn.LayerNorm(dim)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        return x.reshape(B, N, self.num_heads, C // self.num_heads).transpose(1, 2)  # (B, h, N, d)

    def queries_keys_values(self, x: torch.Tensor, H: int, W: int):
        """Per-head ``q (B, h, N, d)``, ``k`` and ``v`` ``(B, h, N / R^2, d)``."""
        B, N, C = x.shape
        kv = x
        if self.sr_ratio > 1:
            kv = x.transpose(1, 2).reshape(B, C, H, W)  # (B, N, C) -> (B, C, H, W)
            kv = self.sr(kv).flatten(2).transpose(1, 2)  # -> (B, H/R * W/R, C)
            kv = self.sr_norm(kv)
        split = self._split_heads
        return split(self.q(x)), split(self.k(kv)), split(self.v(kv))

    def attention_map(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """The softmax weights ``(B, heads, N, N / R^2)``: where each query looks (for plots)."""
        q, k, _ = self.queries_keys_values(x, H, W)
        return torch.softmax(q @ k.transpose(-2, -1) * self.scale, dim=-1)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.queries_keys_values(x, H, W)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v, fused
        return self.proj(out.transpose(1, 2).reshape(B, N, C))  # (B, h, N, d) -> (B, N, C)


class MixFFN(nn.Module):
    """Mix-FFN: fc1 -> 3x3 depthwise conv -> GELU -> fc2.

    The depthwise conv mixes each token with its 3x3 neighbours; its zero padding tells border
    tokens where they are, which replaces ViT's position embedding (paper section 3.1).
    """

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        x = self.fc1(x)
        B, N, C = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(B, C, H, W))  # (B, N, C) -> (B, C, H, W)
        x = x.flatten(2).transpose(1, 2)  # -> (B, N, C)
        return self.fc2(self.act(x))


class DropPath(nn.Module):
    """Stochastic depth: in training, drop a residual branch for a whole sample with prob. p.

    Kept samples are scaled by 1 / (1 - p) so the expected output is unchanged; identity in eval.
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class MiTBlock(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MixFFN(LN(x)), each with DropPath."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, mlp_ratio: int, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=_BLOCK_LN_EPS)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim, eps=_BLOCK_LN_EPS)
        self.ffn = MixFFN(dim, dim * mlp_ratio)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), H, W))
        return x + self.drop_path(self.ffn(self.norm2(x), H, W))


class MiTStage(nn.Module):
    """One encoder stage: overlapping patch merging -> L blocks -> LayerNorm -> (B, C, H, W)."""

    def __init__(self, in_channels: int, dim: int, depth: int, num_heads: int, sr_ratio: int,
                 mlp_ratio: int, patch_size: int, stride: int, drop_paths: list[float]):
        super().__init__()
        self.patch_embed = OverlapPatchEmbed(in_channels, dim, patch_size, stride)
        self.blocks = nn.ModuleList(
            MiTBlock(dim, num_heads, sr_ratio, mlp_ratio, drop_paths[i]) for i in range(depth))
        self.norm = nn.LayerNorm(dim, eps=_BLOCK_LN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, H, W = self.patch_embed(x)
        for block in self.blocks:
            x = block(x, H, W)
        x = self.norm(x)
        B, N, C = x.shape
        return x.transpose(1, 2).reshape(B, C, H, W)  # (B, N, C) -> (B, C, H, W)


class MixTransformer(nn.Module):
    """MiT encoder: four stages, features at strides 4, 8, 16, 32 (``stage1`` .. ``stage4``)."""

    def __init__(self, config: SegFormerConfig, in_channels: int = 3):
        super().__init__()
        # stochastic depth grows linearly from 0 to drop_path over all blocks (as in the paper)
        total = sum(config.depths)
        rates = [config.drop_path * i / max(total - 1, 1) for i in range(total)]
        channels = (in_channels,) + tuple(config.hidden_sizes)
        self.stages = nn.ModuleList()
        for i, depth in enumerate(config.depths):
            start = sum(config.depths[:i])
            self.stages.append(MiTStage(
                channels[i], config.hidden_sizes[i], depth, config.num_heads[i],
                config.sr_ratios[i], config.mlp_ratio, config.patch_sizes[i], config.strides[i],
                rates[start:start + depth]))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = {}
        for i, stage in enumerate(self.stages):
            x = stage(x)
            features[f"stage{i + 1}"] = x
        return features


# --------------------------------------------------------------------------------------------
# Decoder and model
# --------------------------------------------------------------------------------------------

class AllMLPDecoder(nn.Module):
    """Per-stage linear projection to one width -> upsample to 1/4 -> concat -> fuse -> classify.

    **Folded inference** (``fold=True``, eval mode). Everything before the ReLU is linear or
    affine: the projections ``L_i x + b_i``, the bilinear upsampling (per channel, with weights
    that sum to 1, so it commutes with any channel mixing and maps a constant map to itself;
    stage 1 is already on the 1/4 grid, where HF's ``interpolate`` to the same size is the
    identity, ``align_corners=False`` for the others as in HF),
    the 1x1 fuse conv ``W = [W_4 | W_3 | W_2 | W_1]`` (one block per stage, deepest first) and
    BatchNorm with running statistics, ``s * z + t``. Hence::

        s * W concat(up(L_i x_i + b_i)) + t = sum_i up(M_i x_i) + c,
        M_i = s * (W_i L_i),   c = s * sum_i W_i b_i + t,

    so each stage is mapped by one ``width x C_i`` matrix at its *own* resolution, and the
    ``4 width -> width`` fuse at 1/4 resolution disappears (the same function; float32 rounding
    differs at ~1e-6). ``M_i`` and ``c`` are recomputed from the parameters on every folded call
    (tiny matrix products), so nothing goes stale when the weights change or load. Training
    keeps the original order: BatchNorm needs the batch statistics of the fused map there.

    Counted by ``segcourse.profiling.gflops`` for B0 at 512 x 512 with 150 classes (decoder /
    whole model): 10.37 / 16.78 GFLOPs unfolded, 1.85 / 8.25 folded. The fuse alone was
    2 * 128^2 * 1024 * 256 = 8.59 GFLOPs; the folded maps cost what the projections did (0.52),
    folding the weights 0.07, the classifier 1.26 either way.

    ``fold`` is off by default so that FLOP counts of the architecture (chapter 9) describe the
    published computation; switch it on for inference: ``model.decoder.fold = True``, or
    ``segcourse.fuse.for_inference(model, example)``, which also folds the BatchNorm layers and
    checks the result (chapter 12 derives the algebra by hand).
    """

    def __init__(self, in_channels: tuple[int, ...], width: int, num_classes: int,
                 dropout: float = 0.1, fold: bool = False):
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(c, width) for c in in_channels)
        # the paper's "MLP" fuse layer is a 1x1 conv + BatchNorm + ReLU (ConvModule in the code)
        self.fuse = ConvBNReLU(len(in_channels) * width, width, kernel_size=1)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(width, num_classes, 1)
        self.fold = fold

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        bn = self.fuse[1]
        # BatchNorm uses running statistics only outside training and when it has them (an
        # Identity: segcourse.fuse.fold_batchnorm already folded it into the conv)
        if self.fold and (isinstance(bn, nn.Identity)
                          or (not bn.training and bn.running_mean is not None)):
            x = self.fused_folded(features)
        else:
            x = self.fused(features)
        return self.classifier(self.dropout(x))  # (B, K, H/4, W/4)

    def fused(self, features: list[torch.Tensor]) -> torch.Tensor:
        """The published order: project, upsample, concat, 1x1 fuse + BN + ReLU at 1/4."""
        size = features[0].shape[-2:]  # stage 1: 1/4 of the input
        projected = []
        for x, proj in zip(features, self.proj):
            B, C, H, W = x.shape
            x = proj(x.flatten(2).transpose(1, 2))  # (B, C, H, W) -> (B, N, width)
            x = x.transpose(1, 2).reshape(B, -1, H, W)  # -> (B, width, H, W)
            projected.append(upsample_like(x, size))
        # deepest stage first: the reference concatenates [c4, c3, c2, c1], and the fuse
        # conv's pretrained weights depend on that order
        return self.fuse(torch.cat(projected[::-1], dim=1))

    def folded_weights(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``M_i`` (width x C_i) per stage and the bias ``c`` (width) of the folded decoder."""
        conv, bn = self.fuse[0], self.fuse[1]
        blocks = conv.weight.flatten(1).chunk(len(self.proj), dim=1)[::-1]  # W_1 .. W_4
        bias = sum(w @ proj.bias for w, proj in zip(blocks, self.proj))
        if conv.bias is not None:  # a conv that absorbed its BN (segcourse.fuse)
            bias = bias + conv.bias
        if isinstance(bn, nn.Identity):
            scale, shift = torch.ones_like(bias), torch.zeros_like(bias)
        else:  # BN in eval is s * z + t
            scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
            shift = bn.bias - scale * bn.running_mean
        maps = [scale[:, None] * (w @ proj.weight) for w, proj in zip(blocks, self.proj)]
        return maps, scale * bias + shift

    def fused_folded(self, features: list[torch.Tensor]) -> torch.Tensor:
        """The same map as :meth:`fused` with BN's running statistics: each stage's ``M_i`` at
        its own resolution, upsampled and summed (see the class docstring)."""
        maps, bias = self.folded_weights()
        size = features[0].shape[-2:]  # stage 1 is already at 1/4: it takes the bias
        out = F.conv2d(features[0], maps[0][:, :, None, None], bias)  # (B, width, H/4, W/4)
        for x, m in zip(features[1:], maps[1:]):
            out = out + upsample_like(F.conv2d(x, m[:, :, None, None]), size)
        return F.relu(out)


class SegFormer(nn.Module):
    """SegFormer-B0..B5: MiT encoder + all-MLP decoder, logits at input resolution.

    ``variant`` is a key of :data:`VARIANTS` or a :class:`SegFormerConfig`; keyword
    ``overrides`` replace its fields (``SegFormer(5, sr_ratios=(1, 1, 1, 1))``,
    ``SegFormer(5, variant="b2", drop_path=0.0)``).
    """

    def __init__(self, num_classes: int, in_channels: int = 3,
                 variant: str | SegFormerConfig = "b0", **overrides):
        super().__init__()
        check_count(num_classes, "num_classes"), check_count(in_channels, "in_channels")
        config = configure(variant_config(variant), **overrides)
        self.config = config
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.encoder = MixTransformer(config, in_channels)
        self.decoder = AllMLPDecoder(config.hidden_sizes, config.decoder_width, num_classes,
                                     config.dropout)
        self.apply(_init_weights)

    def forward_quarter(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at 1/4 resolution, as the decoder makes them (HF's ``outputs.logits``)."""
        check_model_input(self, x)
        return self.decoder(list(self.encoder(x).values()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample_like(self.forward_quarter(x), x.shape[-2:])  # (B, K, H, W)


def _init_weights(m: nn.Module) -> None:
    """The reference initialisation: truncated normal (std 0.02) for linear layers, He (fan-out)
    normal for convolutions, ones/zeros for norms."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------
# Loading HF transformers checkpoints (nvidia/mit-b*, nvidia/segformer-b*)
# --------------------------------------------------------------------------------------------

# transformers < 5 (and the checkpoint files on the Hub) name the weights differently from
# transformers >= 5; first bring old names to the new ones, then the new ones to ours.
_HF_OLD_TO_NEW = [
    (r"encoder\.patch_embeddings\.(\d+)\.", r"stages.\1.patch_embeddings."),
    (r"encoder\.block\.(\d+)\.", r"stages.\1.blocks."),
    (r"encoder\.layer_norm\.(\d+)\.", r"stages.\1.layer_norm."),
    (r"attention\.self\.query\.", "attention.q_proj."),
    (r"attention\.self\.key\.", "attention.k_proj."),
    (r"attention\.self\.value\.", "attention.v_proj."),
    (r"attention\.self\.sr\.", "attention.sequence_reduction.sequence_reduction."),
    (r"attention\.self\.layer_norm\.", "attention.sequence_reduction.layer_norm."),
    (r"attention\.output\.dense\.", "attention.o_proj."),
    (r"mlp\.dense1\.", "mlp.fc1."),
    (r"mlp\.dense2\.", "mlp.fc2."),
    (r"\.layer_norm_1\.", ".layernorm_before."),
    (r"\.layer_norm_2\.", ".layernorm_after."),
    (r"decode_head\.linear_c\.", "decode_head.linear_projections."),
]
_HF_NEW_TO_OURS = [
    (r"^stages\.", "encoder.stages."),
    (r"\.patch_embeddings\.proj\.", ".patch_embed.proj."),
    (r"\.patch_embeddings\.layer_norm\.", ".patch_embed.norm."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"\.attention\.q_proj\.", ".attn.q."),
    (r"\.attention\.k_proj\.", ".attn.k."),
    (r"\.attention\.v_proj\.", ".attn.v."),
    (r"\.attention\.o_proj\.", ".attn.proj."),
    (r"\.attention\.sequence_reduction\.sequence_reduction\.", ".attn.sr."),
    (r"\.attention\.sequence_reduction\.layer_norm\.", ".attn.sr_norm."),
    (r"\.mlp\.fc1\.", ".ffn.fc1."),
    (r"\.mlp\.dwconv\.dwconv\.", ".ffn.dwconv."),
    (r"\.mlp\.fc2\.", ".ffn.fc2."),
    (r"^(encoder\.stages\.\d+)\.layer_norm\.", r"\1.norm."),
    (r"^decode_head\.linear_projections\.(\d+)\.proj\.", r"decoder.proj.\1."),
    (r"^decode_head\.linear_fuse\.", "decoder.fuse.0."),
    (r"^decode_head\.batch_norm\.", "decoder.fuse.1."),
    (r"^decode_head\.classifier\.", "decoder.classifier."),
]


def convert_hf_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a HF ``SegformerForSemanticSegmentation`` / ``SegformerModel`` /
    ``SegformerForImageClassification`` state dict to :class:`SegFormer`'s names.

    Both naming schemes are accepted: transformers < 5 and the Hub's checkpoint files
    (``segformer.encoder.block.0.0.attention.self.query.weight``) and transformers >= 5
    (``segformer.stages.0.blocks.0.attention.q_proj.weight``). The ImageNet classifier of the
    ``nvidia/mit-b*`` checkpoints is dropped; load their encoder with::

        sd = convert_hf_state_dict(hf_mit.state_dict())
        model.encoder.load_state_dict({k.removeprefix("encoder."): v for k, v in sd.items()})

    Unknown names raise ``ValueError`` instead of being dropped silently.
    """
    converted, unknown = {}, []
    for name, tensor in state_dict.items():
        key = name.removeprefix("segformer.")
        if key.startswith("classifier."):  # ImageNet head of SegformerForImageClassification
            continue
        for pattern, repl in _HF_OLD_TO_NEW:
            key = re.sub(pattern, repl, key)
        for pattern, repl in _HF_NEW_TO_OURS:
            key = re.sub(pattern, repl, key)
        if not key.startswith(("encoder.", "decoder.")) or key == name:
            unknown.append(name)
        converted[key] = tensor
    if unknown:
        raise ValueError(f"not a HF SegFormer state dict: cannot map {unknown[:5]}"
                         f"{' ...' if len(unknown) > 5 else ''}")
    return converted


@register("segformer")
def segformer(num_classes: int, in_channels: int = 3, paper: bool = False,
              variant: str | SegFormerConfig | None = None, **overrides) -> SegFormer:
    """SegFormer-B0 (``SMALL`` = ``PAPER``, 3.75 M parameters with 150 classes); ``variant="b5"``
    for B5 (overrides: any :class:`SegFormerConfig` field)."""
    base = variant_config(variant) if variant is not None else PAPER if paper else SMALL
    return SegFormer(num_classes, in_channels, configure(base, **overrides))
