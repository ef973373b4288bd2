"""SAM's mask decoder: a two-way transformer between prompt tokens and the image embedding.

Paper: Kirillov et al., "Segment Anything", ICCV 2023, section 3 and appendix A ("Lightweight
mask decoder", fig. 14). Reference code: facebookresearch/segment-anything,
``segment_anything/modeling/mask_decoder.py`` and ``transformer.py`` (``MaskDecoder``,
``TwoWayTransformer``, ``TwoWayAttentionBlock``, ``Attention``), and HF transformers
``models/sam/modeling_sam.py`` (``SamMaskDecoder``, ``SamTwoWayTransformer``); checked against
HF in ``tests/test_sam_decoder.py``.

The decoder prepends learned *output tokens* -- one IoU token and four mask tokens -- to the
prompt tokens, and runs two blocks of

  1. self-attention of the tokens,
  2. token -> image cross-attention (tokens query the image embedding),
  3. an MLP on the tokens,
  4. image -> token cross-attention (every image position queries the tokens),

then one last token -> image attention. The positional encodings (the prompt tokens' own codes
for the tokens, the dense grid encoding for the image) are added to queries and keys at every
attention, never to the values. The cross-attentions project to half the width
(``attention_downsample_rate = 2``) to save compute on the 4096 image positions.

The updated image embedding is upscaled 4x (two 2 x 2 transposed convs, LayerNorm2d, GELU);
each mask token goes through its own 3-layer MLP (a *hypernetwork*) to the weights of a
per-pixel linear classifier, ``mask = w . upscaled(x, y)``. The IoU token's MLP predicts each
mask's IoU. Mask 0 is trained for unambiguous prompts, masks 1..3 for ambiguous ones (a single
click: part, object, whole); ``multimask_output`` picks 1..3 or 0, as the original does.

Where we differ: tokens are kept as ``[B * P, N, C]`` (prompts folded into the batch) instead
of HF's ``[B, P, N, C]``; attention uses ``F.scaled_dot_product_attention``. The block
LayerNorms' eps is a config field: 1e-5 by default, the original's (``nn.LayerNorm``'s default,
which its checkpoints were trained with); HF uses 1e-6 there and :func:`~segcourse.models.sam.
from_hf` copies HF's value. With random weights the two differ by ~4e-4 in the logits; with
the right eps we equal HF to 1e-4 and the original (``segment_anything`` 1.0) to ~1e-5.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import LayerNorm2d

__all__ = ["MaskDecoderConfig", "Attention", "TwoWayBlock", "TwoWayTransformer", "MLP",
           "SamMaskDecoder", "convert_hf_mask_decoder_state_dict"]


@dataclass(frozen=True)
class MaskDecoderConfig:
    embed_dim: int = 256            # token and image-embedding width (the encoder's neck output)
    depth: int = 2                  # two-way blocks (the paper: 2)
    num_heads: int = 8              # attention heads in every attention
    mlp_dim: int = 2048             # hidden width of the token MLP in each block
    attention_downsample_rate: int = 2  # cross-attentions project to embed_dim / 2
    num_multimask_outputs: int = 3  # ambiguity-aware masks; one more token for the single mask
    iou_head_depth: int = 3         # layers of the IoU MLP
    iou_head_hidden_dim: int = 256  # its hidden width
    layer_norm_eps: float = 1e-5    # block LayerNorms (the original's; HF's config says 1e-6)


class Attention(nn.Module):
    """Multi-head attention whose q, k, v are projected to ``dim / downsample_rate``."""

    def __init__(self, dim: int, num_heads: int, downsample_rate: int = 1):
        super().__init__()
        inner = dim // downsample_rate
        if inner % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide embed_dim / "
                             f"downsample_rate ({inner})")
        self.num_heads = num_heads
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(dim, inner) for _ in range(3))
        self.out_proj = nn.Linear(inner, dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        def heads(x):  # (B, N, inner) -> (B, heads, N, inner / heads)
            return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)
        out = F.scaled_dot_product_attention(heads(self.q_proj(q)), heads(self.k_proj(k)),
                                             heads(self.v_proj(v)))
        return self.out_proj(out.transpose(1, 2).flatten(2))  # (B, heads, N, d) -> (B, N, inner)


class TwoWayBlock(nn.Module):
    """Token self-attn -> token->image cross-attn -> MLP -> image->token cross-attn, post-norm."""

    def __init__(self, cfg: MaskDecoderConfig, skip_first_layer_pe: bool = False):
        super().__init__()
        C, eps, r = cfg.embed_dim, cfg.layer_norm_eps, cfg.attention_downsample_rate
        self.self_attn = Attention(C, cfg.num_heads)
        self.norm1 = nn.LayerNorm(C, eps=eps)
        self.cross_attn_token_to_image = Attention(C, cfg.num_heads, r)
        self.norm2 = nn.LayerNorm(C, eps=eps)
        self.mlp = nn.Sequential(nn.Linear(C, cfg.mlp_dim), nn.ReLU(), nn.Linear(cfg.mlp_dim, C))
        self.norm3 = nn.LayerNorm(C, eps=eps)
        self.norm4 = nn.LayerNorm(C, eps=eps)
        self.cross_attn_image_to_token = Attention(C, cfg.num_heads, r)
        # the first block's tokens *are* the prompt codes: adding them again would double them
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, tokens, image, token_pe, image_pe):
        if self.skip_first_layer_pe:  # the original replaces (no residual) in the first block
            tokens = self.self_attn(tokens, tokens, tokens)
        else:
            q = tokens + token_pe
            tokens = tokens + self.self_attn(q, q, tokens)
        tokens = self.norm1(tokens)
        k = image + image_pe
        tokens = self.norm2(tokens + self.cross_attn_token_to_image(tokens + token_pe, k, image))
        tokens = self.norm3(tokens + self.mlp(tokens))
        image = self.norm4(image + self.cross_attn_image_to_token(k, tokens + token_pe, tokens))
        return tokens, image


class TwoWayTransformer(nn.Module):
    """``depth`` two-way blocks and a final token -> image attention."""

    def __init__(self, cfg: MaskDecoderConfig):
        super().__init__()
        self.layers = nn.ModuleList(TwoWayBlock(cfg, skip_first_layer_pe=i == 0)
                                    for i in range(cfg.depth))
        self.final_attn_token_to_image = Attention(cfg.embed_dim, cfg.num_heads,
                                                   cfg.attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(cfg.embed_dim)  # eps 1e-5 in both references

    def forward(self, tokens, image, image_pe):
        """tokens (B, N, C); image, image_pe (B, C, h, w) -> tokens (B, N, C), image (B, hw, C)."""
        image = image.flatten(2).transpose(1, 2)  # (B, C, h, w) -> (B, hw, C)
        image_pe = image_pe.flatten(2).transpose(1, 2)
        token_pe = tokens
        for layer in self.layers:
            tokens, image = layer(tokens, image, token_pe, image_pe)
        out = self.final_attn_token_to_image(tokens + token_pe, image + image_pe, image)
        return self.norm_final_attn(tokens + out), image


class MLP(nn.Sequential):
    """Linear -> ReLU -> ... -> Linear, ``depth`` linear layers."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, depth: int):
        dims = [in_dim] + [hidden_dim] * (depth - 1) + [out_dim]
        layers = []
        for i in range(depth):
            layers += [nn.Linear(dims[i], dims[i + 1])] + ([nn.ReLU()] if i < depth - 1 else [])
        super().__init__(*layers)


class SamMaskDecoder(nn.Module):
    """Image embedding + prompt embeddings -> low-res mask logits ``[B, P, M, 4h, 4w]`` and
    predicted IoUs ``[B, P, M]`` (M = 3 with ``multimask_output``, else 1)."""

    def __init__(self, cfg: MaskDecoderConfig = MaskDecoderConfig()):
        super().__init__()
        C = cfg.embed_dim
        self.config = cfg
        self.num_mask_tokens = cfg.num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, C)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, C)
        self.transformer = TwoWayTransformer(cfg)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(C, C // 4, 2, stride=2), LayerNorm2d(C // 4), nn.GELU(),
            nn.ConvTranspose2d(C // 4, C // 8, 2, stride=2), nn.GELU())
        self.output_hypernetworks_mlps = nn.ModuleList(MLP(C, C, C // 8, 3)
                                                       for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(C, cfg.iou_head_hidden_dim, self.num_mask_tokens,
                                       cfg.iou_head_depth)

    def forward(self, image_embeddings, image_pe, sparse, dense, multimask_output: bool = True):
        """image_embeddings (B, C, h, w); image_pe (1, C, h, w); sparse (B, P, N, C) prompt
        tokens; dense (B, P or 1, C, h, w) -> masks (B, P, M, 4h, 4w), iou (B, P, M)."""
        B, C, h, w = image_embeddings.shape
        P = sparse.shape[1]
        out_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight])  # (1 + 4, C)
        tokens = torch.cat([out_tokens.expand(B * P, -1, -1), sparse.flatten(0, 1)], dim=1)
        # one copy of the image per prompt: (B, C, h, w) + (B, P, C, h, w) -> (B * P, C, h, w)
        src = (image_embeddings[:, None] + dense).expand(B, P, C, h, w).flatten(0, 1)
        pos = image_pe.expand(B * P, C, h, w)
        tokens, src = self.transformer(tokens, src, pos)
        iou_token, mask_tokens = tokens[:, 0], tokens[:, 1:1 + self.num_mask_tokens]

        up = self.output_upscaling(src.transpose(1, 2).reshape(B * P, C, h, w))  # (BP, C/8, 4h, 4w)
        hyper = torch.stack([mlp(mask_tokens[:, i])
                             for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        masks = (hyper @ up.flatten(2)).unflatten(-1, up.shape[-2:])  # (BP, M, C/8) @ (BP, C/8, HW)
        iou = self.iou_prediction_head(iou_token)
        keep = slice(1, None) if multimask_output else slice(0, 1)
        masks = masks[:, keep].unflatten(0, (B, P))
        return masks, iou[:, keep].unflatten(0, (B, P))


_HF_RULES = [(r"\.layer_norm(\d)\.", r".norm\1."), (r"layer_norm_final_attn", "norm_final_attn"),
             (r"\.mlp\.lin1\.", ".mlp.0."), (r"\.mlp\.lin2\.", ".mlp.2."),
             (r"^upscale_conv1\.", "output_upscaling.0."),
             (r"^upscale_layer_norm\.", "output_upscaling.1."),
             (r"^upscale_conv2\.", "output_upscaling.3."),
             (r"\.proj_in\.", ".0."), (r"\.layers\.0\.", ".2."), (r"\.proj_out\.", ".4.")]


def convert_hf_mask_decoder_state_dict(hf_sd: dict, depth: int = 3) -> dict:
    """HF ``SamMaskDecoder`` state dict -> ours (names only; HF's head MLPs are ``proj_in``,
    ``layers.*``, ``proj_out``, ours one ``nn.Sequential``, for the default depth 3)."""
    if depth != 3:
        raise ValueError(f"only 3-layer head MLPs convert, got iou_head_depth={depth}")
    out = {}
    for key, value in hf_sd.items():
        new = key
        for pattern, repl in _HF_RULES:
            if pattern.startswith(r"\.proj") or pattern == r"\.layers\.0\.":
                if not key.startswith(("output_hypernetworks_mlps", "iou_prediction_head")):
                    continue
            new = re.sub(pattern, repl, new)
        out[new] = value
    return out
