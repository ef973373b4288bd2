"""SAM's image encoder: a plain ViT with windowed attention and a convolutional neck.

Paper: A. Kirillov, E. Mintun, N. Ravi, H. Mao, C. Rolland, L. Gustafson, T. Xiao, S. Whitehead,
A. C. Berg, W.-Y. Lo, P. Dollar, R. Girshick, "Segment Anything", ICCV 2023
(https://arxiv.org/abs/2304.02643), section 3 and appendix A. Reference code:
facebookresearch/segment-anything (``segment_anything/modeling/image_encoder.py``, adapted there
from detectron2's ViTDet backbone; the sizes in ``build_sam.py``) and HF transformers'
``models/sam/modeling_sam.py`` (``SamVisionEncoder``). ``tests/test_sam_image_encoder.py``
checks that HF's encoder and ours give the same embeddings (to 1e-4; padded windows, and the
paper's 1024-px geometry at a small width) after :func:`convert_hf_encoder_state_dict`, that
``vit_b`` / ``vit_l`` / ``vit_h`` have HF's parameter counts (89.7 M, 308.3 M, 637.0 M), and
that the official checkpoint's names and shapes load through
:func:`convert_official_encoder_state_dict`.

Read top to bottom, smallest piece first:

1. **Patches** -- a 16 x 16 convolution with stride 16 turns the padded 1024 x 1024 image into a
   64 x 64 grid of tokens, kept as a map ``(B, h, w, D)``; a learned absolute position embedding
   of that grid is added (MAE pre-training, at the config's ``image_size``).
2. **Windowed attention** (ViTDet, Li et al. 2022) -- most blocks attend only inside
   non-overlapping 14 x 14 windows; the grid is zero-padded right and bottom to a multiple of 14
   (64 -> 70) and cropped back after attention. Four blocks evenly spaced (``vit_b``: 2, 5, 8,
   11) attend globally, so information crosses windows.
3. **Decomposed relative positions** (MViTv2, Li et al. 2022) -- every attention logit gets
   ``q . R_h[dy] + q . R_w[dx]``: one learned table per axis and head width, ``2 S - 1`` rows for
   an axis of ``S`` tokens (the window, or the whole grid in global blocks), linearly resized
   when query and key sizes differ (:func:`rel_pos_table`, the reference's ``get_rel_pos``).
4. **Block** -- pre-norm: ``x + attn(LN(x))``, then ``x + MLP(LN(x))`` with a GELU MLP of width
   ``4 D``.
5. **Neck** -- 1 x 1 conv to 256 channels, LayerNorm2d, 3 x 3 conv, LayerNorm2d (no biases in
   the convs): the image embedding ``(B, 256, h, w)`` the prompt-guided mask decoder reads.

Where we differ from the reference, and why:

- The encoder takes exactly the ``image_size`` square (the model resizes the long side and pads,
  as SAM's ``preprocess``); another size is a ``ValueError`` naming ``images``. HF's patch
  embedding refuses it too; the authors' code fails later, at the position-embedding sum.
- :func:`rel_pos_table` keeps the reference's resize, but inside this encoder query and key
  always span the table's own ``S`` (the window, or the grid of ``image_size``), so it never
  resizes here; the tests exercise it directly against HF's ``get_rel_pos``.
- Attention through ``F.scaled_dot_product_attention`` with the relative-position terms as an
  additive mask (HF's ``sdpa`` path); the authors materialise the softmax -- the same numbers to
  float precision.
- Parameter names follow the authors' (``blocks.N.attn.qkv``, ``neck.0`` ...) except
  ``patch_embed`` (a bare conv, the authors' ``patch_embed.proj``) and the MLP, an
  ``nn.Sequential`` (``mlp.0`` / ``mlp.2``, the authors' ``lin1`` / ``lin2``).
- No attention dropout (HF's ``attention_dropout``: 0 in every SAM config; the authors have none).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._checks import check_count, check_images
from .blocks import LayerNorm2d

__all__ = ["SamEncoderConfig", "ENCODERS", "check_encoder_config", "rel_pos_table",
           "window_partition", "window_unpartition", "SamAttention", "SamBlock", "SamNeck",
           "SamImageEncoder", "config_from_hf", "convert_hf_encoder_state_dict",
           "convert_official_encoder_state_dict"]


@dataclass(frozen=True)
class SamEncoderConfig:
    """Hyper-parameters of SAM's image encoder (the fields of HF's ``SamVisionConfig``)."""

    hidden_size: int = 768  # token width D (ViT-B)
    num_hidden_layers: int = 12  # ViT blocks
    num_attention_heads: int = 12  # heads (head width 64)
    mlp_ratio: float = 4.0  # MLP width = mlp_ratio * D, unless mlp_dim says otherwise
    mlp_dim: int | None = None  # MLP width; None: int(mlp_ratio * hidden_size)
    num_channels: int = 3  # image channels
    patch_size: int = 16  # 16 x 16 patches
    image_size: int = 1024  # the padded square the encoder sees (and its position grid)
    window_size: int = 14  # side of the attention windows (tokens); 0: every block global
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)  # blocks with global attention
    output_channels: int = 256  # width of the image embedding (the neck's output)
    use_abs_pos: bool = True  # learned absolute position embedding of the grid
    use_rel_pos: bool = True  # decomposed relative position terms in every attention
    layer_norm_eps: float = 1e-6  # LayerNorm eps in the blocks (the authors' partial(eps=1e-6))
    qkv_bias: bool = True  # bias in the qkv projection

    @property
    def mlp_width(self) -> int:
        return int(self.mlp_ratio * self.hidden_size) if self.mlp_dim is None else self.mlp_dim

    @property
    def grid_size(self) -> int:
        """Tokens per side: ``image_size / patch_size`` (64 for the paper)."""
        return self.image_size // self.patch_size


# build_sam.py: every size at 1024 x 1024, 16 x 16 patches, 14 x 14 windows, four global blocks.
ENCODERS = {
    "vit_b": SamEncoderConfig(),
    "vit_l": SamEncoderConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                              global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": SamEncoderConfig(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16,
                              global_attn_indexes=(7, 15, 23, 31)),
    # CPU size for the 64 x 64 shapes scenes: 8 x 8 patches (an 8 x 8 grid), 4 x 4 windows and
    # two global blocks; the embedding keeps the paper's 256 channels the decoder expects.
    "tiny": SamEncoderConfig(hidden_size=96, num_hidden_layers=4, num_attention_heads=4,
                             patch_size=8, image_size=64, window_size=4,
                             global_attn_indexes=(1, 3), output_channels=64),
}


def check_encoder_config(c: SamEncoderConfig) -> None:
    """ValueError naming the field that makes ``c`` impossible to build."""
    for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "mlp_width",
                 "num_channels", "patch_size", "image_size", "output_channels"):
        check_count(getattr(c, name), f"config.{name}")
    check_count(c.window_size, "config.window_size", minimum=0)
    if c.hidden_size % c.num_attention_heads:
        raise ValueError(f"config.hidden_size {c.hidden_size} is not divisible by "
                         f"config.num_attention_heads {c.num_attention_heads}")
    if c.image_size % c.patch_size:
        raise ValueError(f"config.image_size {c.image_size} must be a multiple of "
                         f"config.patch_size {c.patch_size}")
    bad = [i for i in c.global_attn_indexes if not 0 <= i < c.num_hidden_layers]
    if bad:
        raise ValueError(f"config.global_attn_indexes must be block indices in "
                         f"[0, {c.num_hidden_layers}), got {bad}")


# --- Attention with decomposed relative positions ----------------------------------------------

def rel_pos_table(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """``(q_size, k_size, C)``: the embedding of each (query, key) offset along one axis.

    ``rel_pos`` holds ``2 S - 1`` rows, offsets ``-(S-1) .. S-1``; it is linearly resized to
    ``2 max(q, k) - 1`` rows when that differs, and the shorter axis' coordinates are stretched
    to the longer one's (the reference's ``get_rel_pos``).
    """
    max_dist = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != max_dist:
        # (L, C) -> (1, C, L) -> resize L -> (max_dist, C)
        rel_pos = F.interpolate(rel_pos.t()[None], size=max_dist, mode="linear")[0].t()
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    offsets = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)  # all >= 0
    return rel_pos[offsets.long()]


class SamAttention(nn.Module):
    """Multi-head self-attention over a token map ``(B, H, W, D)`` with decomposed relative
    positions for an ``input_size x input_size`` map (the window, or the whole grid)."""

    def __init__(self, dim: int, num_heads: int, input_size: int, qkv_bias: bool = True,
                 use_rel_pos: bool = True):
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:  # zero init, as the authors (rel_pos_zero_init=True)
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size - 1, head_dim))

    def rel_pos_bias(self, q: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """``(B*, heads, H*W, H*W)``: ``q . R_h[dy] + q . R_w[dx]`` for every query-key pair."""
        Rh = rel_pos_table(H, H, self.rel_pos_h)  # (H, H, C)
        Rw = rel_pos_table(W, W, self.rel_pos_w)  # (W, W, C)
        B, n, _, C = q.shape
        q = q.reshape(B, n, H, W, C)
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", q, Rh)  # (B, n, H, W, key row)
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", q, Rw)  # (B, n, H, W, key column)
        bias = rel_h[..., :, None] + rel_w[..., None, :]  # (B, n, H, W, H, W)
        return bias.reshape(B, n, H * W, H * W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, D = x.shape
        # (B, H, W, 3D) -> (3, B, heads, H*W, head_dim)
        qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = self.rel_pos_bias(q, H, W) if self.use_rel_pos else None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # scale head_dim ** -0.5
        # (B, heads, H*W, head_dim) -> (B, H, W, D)
        out = out.transpose(1, 2).reshape(B, H, W, D)
        return self.proj(out)


# --- Windows -----------------------------------------------------------------------------------

def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """``(B, H, W, C)`` -> ``(B * nh * nw, window, window, C)`` windows, the map zero-padded
    right and bottom to multiples of ``window``; also returns the padded ``(Hp, Wp)``."""
    B, H, W, C = x.shape
    pad_h, pad_w = -H % window, -W % window
    x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))  # pads W then H (C untouched)
    Hp, Wp = H + pad_h, W + pad_w
    x = x.reshape(B, Hp // window, window, Wp // window, window, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, C), (Hp, Wp)


def window_unpartition(windows: torch.Tensor, window: int, padded: tuple[int, int],
                       size: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`: windows back to ``(B, H, W, C)``, padding cropped."""
    (Hp, Wp), (H, W) = padded, size
    B = windows.shape[0] // ((Hp // window) * (Wp // window))
    x = windows.reshape(B, Hp // window, Wp // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, -1)
    return x[:, :H, :W].contiguous()


# --- Block, neck, encoder ----------------------------------------------------------------------

class SamBlock(nn.Module):
    """Pre-norm ViT block; ``window > 0``: attention inside ``window x window`` windows."""

    def __init__(self, c: SamEncoderConfig, window: int):
        super().__init__()
        self.window = window
        self.norm1 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.attn = SamAttention(c.hidden_size, c.num_attention_heads,
                                 input_size=window if window > 0 else c.grid_size,
                                 qkv_bias=c.qkv_bias, use_rel_pos=c.use_rel_pos)
        self.norm2 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.mlp = nn.Sequential(nn.Linear(c.hidden_size, c.mlp_width), nn.GELU(),
                                 nn.Linear(c.mlp_width, c.hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        if self.window > 0:
            H, W = y.shape[1:3]
            y, padded = window_partition(y, self.window)
            y = window_unpartition(self.attn(y), self.window, padded, (H, W))
        else:
            y = self.attn(y)
        x = x + y
        return x + self.mlp(self.norm2(x))


class SamNeck(nn.Sequential):
    """1x1 conv -> LayerNorm2d -> 3x3 conv -> LayerNorm2d: tokens to the 256-channel embedding."""

    def __init__(self, dim: int, out_channels: int):
        super().__init__(nn.Conv2d(dim, out_channels, 1, bias=False), LayerNorm2d(out_channels),
                         nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                         LayerNorm2d(out_channels))


class SamImageEncoder(nn.Module):
    """Images ``(B, C, S, S)``, ``S = config.image_size`` (normalised and padded by the model)
    -> image embeddings ``(B, output_channels, S / patch, S / patch)``."""

    def __init__(self, config: SamEncoderConfig | None = None):
        super().__init__()
        c = ENCODERS["vit_b"] if config is None else config
        check_encoder_config(c)
        self.config = c
        self.in_channels = c.num_channels
        self.patch_embed = nn.Conv2d(c.num_channels, c.hidden_size, c.patch_size,
                                     stride=c.patch_size)
        self.pos_embed = None
        if c.use_abs_pos:  # (1, h, w, D), zero init as the authors (MAE weights replace it)
            self.pos_embed = nn.Parameter(torch.zeros(1, c.grid_size, c.grid_size,
                                                      c.hidden_size))
        self.blocks = nn.ModuleList(
            SamBlock(c, 0 if i in c.global_attn_indexes else c.window_size)
            for i in range(c.num_hidden_layers))
        self.neck = SamNeck(c.hidden_size, c.output_channels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        c = self.config
        check_images(images, c.num_channels, name="images", dtype=self.patch_embed.weight.dtype)
        if tuple(images.shape[-2:]) != (c.image_size, c.image_size):
            raise ValueError(f"images must be {c.image_size} x {c.image_size} (the padded square "
                             f"of config.image_size), got {tuple(images.shape[-2:])}")
        x = self.patch_embed(images).permute(0, 2, 3, 1)  # (B, D, h, w) -> (B, h, w, D)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))  # (B, h, w, D) -> (B, D, h, w) -> (B, 256, h, w)


# --- Converters ----------------------------------------------------------------------------------

def config_from_hf(vision_config) -> SamEncoderConfig:
    """Our config for HF's ``SamVisionConfig`` (``SamModel.config.vision_config``)."""
    vc = vision_config
    if vc.hidden_act != "gelu":
        raise ValueError(f"vision_config.hidden_act must be 'gelu', got {vc.hidden_act!r}")
    sizes = {}
    for name in ("image_size", "patch_size"):
        value = getattr(vc, name)
        if isinstance(value, (tuple, list)):
            if len(set(value)) != 1:
                raise ValueError(f"vision_config.{name} must be square, got {value!r}")
            value = value[0]
        sizes[name] = int(value)
    return SamEncoderConfig(
        hidden_size=vc.hidden_size, num_hidden_layers=vc.num_hidden_layers,
        num_attention_heads=vc.num_attention_heads, mlp_ratio=vc.mlp_ratio, mlp_dim=vc.mlp_dim,
        num_channels=vc.num_channels, window_size=vc.window_size,
        global_attn_indexes=tuple(vc.global_attn_indexes), output_channels=vc.output_channels,
        use_abs_pos=vc.use_abs_pos, use_rel_pos=vc.use_rel_pos,
        layer_norm_eps=vc.layer_norm_eps, qkv_bias=vc.qkv_bias, **sizes)


# (name part in the source, ours); applied in order with str.replace
_HF_PARTS = (("patch_embed.projection.", "patch_embed."), ("neck.conv1.", "neck.0."),
             ("neck.layer_norm1.", "neck.1."), ("neck.conv2.", "neck.2."),
             ("neck.layer_norm2.", "neck.3."), ("layers.", "blocks."),
             (".layer_norm1.", ".norm1."), (".layer_norm2.", ".norm2."),
             (".mlp.lin1.", ".mlp.0."), (".mlp.lin2.", ".mlp.2."))
_OFFICIAL_PARTS = (("patch_embed.proj.", "patch_embed."), (".mlp.lin1.", ".mlp.0."),
                   (".mlp.lin2.", ".mlp.2."))


def _convert(state_dict, prefix: str, parts, what: str) -> dict[str, torch.Tensor]:
    if not isinstance(state_dict, dict):
        raise ValueError(f"state_dict must be a dict of tensors, got {type(state_dict).__name__}")
    if any(k.startswith(prefix) for k in state_dict):  # a whole SAM: keep its image encoder
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    out = {}
    for name, tensor in state_dict.items():
        for old, new in parts:
            name = name.replace(old, new)
        out[name] = tensor
    if "patch_embed.weight" not in out:
        raise ValueError(f"state_dict has no patch embedding: not a {what} image encoder "
                         f"(first keys {list(state_dict)[:3]})")
    return out


def convert_hf_encoder_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our names for the weights of HF's ``SamVisionEncoder`` (``layers.N.layer_norm1``,
    ``neck.conv1`` ...), or of a whole ``SamModel`` (its ``vision_encoder.*`` entries)."""
    return _convert(state_dict, "vision_encoder.", _HF_PARTS, "HF SamVisionEncoder")


def convert_official_encoder_state_dict(
        state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our names for segment_anything's ``ImageEncoderViT`` weights, or a whole checkpoint's
    (``sam_vit_b_01ec64.pth``: its ``image_encoder.*`` entries)::

        encoder.load_state_dict(convert_official_encoder_state_dict(torch.load(path)))
    """
    return _convert(state_dict, "image_encoder.", _OFFICIAL_PARTS, "segment_anything")
