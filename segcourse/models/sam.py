"""Segment Anything: image encoder once, prompt encoder + mask decoder per prompt.

Paper: Kirillov et al., "Segment Anything", ICCV 2023 (https://arxiv.org/abs/2304.02643).
Reference code: facebookresearch/segment-anything (``segment_anything/modeling/sam.py``,
``build_sam.py``) and HF transformers ``models/sam/modeling_sam.py`` (``SamModel``);
``tests/test_sam.py`` checks :func:`from_hf` against ``SamModel`` to 1e-4, and
:func:`convert_official_state_dict` against the authors' modules (``segment-anything`` 1.0,
where installed) to 1e-4.

The parts live in their own files, read in this order:
``sam_image_encoder.py`` (ViT -> embedding ``[B, 256, S/16, S/16]``),
``sam_prompt_encoder.py`` (points, boxes, masks -> tokens and a dense map) and
``sam_mask_decoder.py`` (two-way transformer -> low-res masks and IoU predictions).
:class:`Sam` ties them: :meth:`Sam.embed` runs the heavy encoder once per image,
:meth:`Sam.decode` the light decoder once per set of prompts -- the split that makes SAM
interactive (the paper: ~50 ms per prompt in a browser once the embedding is computed).

Layout (HF's ``SamModel``): prompts ``[B, P, ...]`` -- P prompts per image, each segmented
separately; outputs ``{"mask_logits": [B, P, M, 4h, 4w], "iou_scores": [B, P, M]}``
(``4h = 256`` for the paper's 1024 input), M = 3 with ``multimask_output`` else 1.

Pre- and post-processing as both references: :func:`preprocess` resizes the long side to the
encoder size (bilinear, antialiased), normalises with ImageNet statistics and zero-pads right
and bottom; :func:`scale_prompts` maps prompts into the resized frame; :func:`postprocess_masks`
upsamples the low-res logits to the padded square, crops the padding and resizes to the
original size; :meth:`Sam.predict` chains them and thresholds at 0.

Where we differ: ``forward`` takes images already at the encoder's square size and normalised
(HF's ``pixel_values``; the original's ``Sam.forward`` preprocesses inside); :meth:`Sam.predict`
takes images in [0, 1] (the course's convention), not 0..255. HF's image processor resamples
differently (torchvision inside its base class): its pixels differ from ours by up to ~0.03
in normalised units, so the tests compare the model and post-processing on the same pixels.
Mask prompts are one per prompt ``[B, P, 4h, 4w]`` (the original's layout); HF takes one per
image. The random-Fourier Gaussian is one frozen parameter of the prompt encoder, which also
makes the dense grid encoding (HF keeps a tied copy in ``SamModel.shared_image_embedding``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._checks import check_images
from . import register
from .config import configure
from .sam_image_encoder import (
    ENCODERS,
    SamEncoderConfig,
    SamImageEncoder,
    convert_hf_encoder_state_dict,
    convert_official_encoder_state_dict,
)
from .sam_mask_decoder import MaskDecoderConfig, SamMaskDecoder, convert_hf_mask_decoder_state_dict
from .sam_prompt_encoder import (
    SamPromptEncoder,
    check_inside,
    convert_hf_prompt_encoder_state_dict,
)

__all__ = ["SamConfig", "Sam", "sam", "sam_config", "build_sam", "from_hf",
           "convert_official_state_dict", "to_official_state_dict", "OFFICIAL_CHECKPOINTS",
           "input_size", "preprocess", "scale_prompts",
           "postprocess_masks"]

# SAM normalises with ImageNet statistics ((x * 255 - 123.675) / 58.395 ... in the original)
_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class SamConfig:
    encoder: SamEncoderConfig = field(default_factory=lambda: ENCODERS["vit_b"])  # the ViT
    decoder: MaskDecoderConfig = field(default_factory=MaskDecoderConfig)  # two-way transformer
    mask_in_chans: int = 16  # hidden channels of the mask-prompt downscaler
    pe_scale: float = 1.0  # std of the random-Fourier Gaussian (the original's 1.0)


# --- Pre- and post-processing (the original's ResizeLongestSide, Sam.preprocess,
# Sam.postprocess_masks; HF's SamImageProcessor) -------------------------------------------------

def input_size(original_size: tuple[int, int], image_size: int) -> tuple[int, int]:
    """(h, w) after resizing the long side to ``image_size`` (rounded half up, as both
    references)."""
    h, w = original_size
    scale = image_size / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def preprocess(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """Images ``[B, 3, H, W]`` in [0, 1] -> ``[B, 3, S, S]``: long side resized to ``S``
    (bilinear, antialiased: the original's ``apply_image_torch``), normalised, zero-padded
    right and bottom (after normalising, so the padding is the mean colour's 0)."""
    check_images(images, 3, name="images")
    h, w = input_size(tuple(images.shape[-2:]), image_size)
    x = F.interpolate(images, (h, w), mode="bilinear", align_corners=False, antialias=True)
    mean = x.new_tensor(_MEAN).view(1, 3, 1, 1)
    x = (x - mean) / x.new_tensor(_STD).view(1, 3, 1, 1)
    return F.pad(x, (0, image_size - w, 0, image_size - h))


def scale_prompts(original_size, image_size: int, points=None, boxes=None):
    """Points ``[..., 2]`` and boxes ``[..., 4]`` in original pixels -> encoder-input pixels."""
    H, W = original_size
    h, w = input_size(original_size, image_size)
    def scale(xy):  # (..., 2) as (x, y)
        return xy * xy.new_tensor([w / W, h / H])
    if points is not None:
        points = scale(points.float())
    if boxes is not None:
        boxes = scale(boxes.float().unflatten(-1, (2, 2))).flatten(-2)
    return points, boxes


def postprocess_masks(mask_logits: torch.Tensor, original_size, image_size: int) -> torch.Tensor:
    """Low-res logits ``[..., 4h, 4w]`` -> logits at the original ``(H, W)``: upsampled to the
    padded input, padding cropped, resized to the original (threshold at 0 for masks)."""
    lead = mask_logits.shape[:-2]
    x = mask_logits.flatten(0, -3)[:, None]  # (..., h, w) -> (N, 1, h, w)
    x = F.interpolate(x, (image_size, image_size), mode="bilinear", align_corners=False)
    h, w = input_size(original_size, image_size)
    x = F.interpolate(x[..., :h, :w], tuple(original_size), mode="bilinear", align_corners=False)
    return x[:, 0].unflatten(0, lead)


class Sam(nn.Module):
    """Images ``[B, 3, S, S]`` + prompts -> low-res mask logits and predicted IoUs."""

    def __init__(self, config: SamConfig | None = None):
        super().__init__()
        c = SamConfig() if config is None else config
        if c.encoder.output_channels != c.decoder.embed_dim:
            raise ValueError(f"config.encoder.output_channels ({c.encoder.output_channels}) must "
                             f"equal config.decoder.embed_dim ({c.decoder.embed_dim})")
        self.config = c
        self.image_encoder = SamImageEncoder(c.encoder)
        self.prompt_encoder = SamPromptEncoder(c.decoder.embed_dim, c.encoder.image_size,
                                               c.encoder.grid_size, c.mask_in_chans, c.pe_scale)
        self.mask_decoder = SamMaskDecoder(c.decoder)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The image embedding ``[B, C, h, w]``: compute once, decode many prompts."""
        return self.image_encoder(images)

    def decode(self, embeddings: torch.Tensor, points=None, point_labels=None, boxes=None,
               mask_inputs=None, multimask_output: bool = True) -> dict[str, torch.Tensor]:
        """Prompts in pixels of the encoder input: points ``[B, P, N, 2]`` (x, y) with labels
        ``[B, P, N]`` (1 positive, 0 negative, -1 padding), boxes ``[B, P, 4]`` (x1, y1, x2, y2),
        mask_inputs ``[B, P or 1, 4h, 4w]`` (logits, e.g. the previous prediction)."""
        g = self.prompt_encoder.embedding_size
        C = self.config.decoder.embed_dim
        if not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 4 \
                or tuple(embeddings.shape[1:]) != (C, g, g):
            shape = tuple(embeddings.shape) if isinstance(embeddings, torch.Tensor) else None
            raise ValueError(f"embeddings must be [B, {C}, {g}, {g}] (from Sam.embed), "
                             f"got {shape or type(embeddings).__name__}")
        sparse, dense = self.prompt_encoder(points, point_labels, boxes, mask_inputs)
        if sparse.shape[0] != embeddings.shape[0]:
            raise ValueError(f"prompts are for {sparse.shape[0]} images but embeddings has "
                             f"{embeddings.shape[0]}")
        masks, iou = self.mask_decoder(embeddings, self.prompt_encoder.dense_pe(), sparse, dense,
                                       multimask_output)
        return {"mask_logits": masks, "iou_scores": iou}

    def forward(self, images, points=None, point_labels=None, boxes=None, mask_inputs=None,
                multimask_output: bool = True) -> dict[str, torch.Tensor]:
        return self.decode(self.embed(images), points, point_labels, boxes, mask_inputs,
                           multimask_output)

    def decode_image(self, embeddings, size, points=None, point_labels=None, boxes=None,
                     mask_inputs=None, multimask_output: bool = True) -> dict[str, torch.Tensor]:
        """:meth:`decode` for an image of ``size`` (H, W) embedded with :func:`preprocess`:
        prompts in its pixels, checked inside it and scaled to the encoder input; adds
        ``logits``, the low-res logits brought back to ``size`` (> 0 is the mask). The chain
        behind :meth:`predict`, for callers that embed once and decode many times."""
        S = self.config.encoder.image_size
        # inside the original image (the encoder's check would let the padding through)
        check_inside(points, point_labels, boxes, tuple(size))
        points, boxes = scale_prompts(size, S, points, boxes)
        out = self.decode(embeddings, points, point_labels, boxes, mask_inputs, multimask_output)
        out["logits"] = postprocess_masks(out["mask_logits"], size, S)
        return out

    @torch.no_grad()
    def predict(self, images, points=None, point_labels=None, boxes=None, mask_inputs=None,
                multimask_output: bool = True) -> dict[str, torch.Tensor]:
        """Images ``[B, 3, H, W]`` in [0, 1] at any size, prompts in their pixels -> ``masks``
        (bool ``[B, P, M, H, W]``), ``mask_logits`` (low-res: one of them per prompt,
        ``[B, P, 4h, 4w]``, is the next click's ``mask_inputs``) and ``iou_scores``."""
        check_images(images, 3, name="images")
        x = preprocess(images.to(self.mask_decoder.iou_token.weight.dtype),
                       self.config.encoder.image_size)
        out = self.decode_image(self.embed(x), tuple(images.shape[-2:]), points, point_labels,
                                boxes, mask_inputs, multimask_output)
        out["masks"] = out.pop("logits") > 0
        return out


# The CPU-sized decoder: at the paper's width (256) a click would cost as much as the tiny
# encoder's whole image (benchmarks/sam.py), and the point of the design is the opposite.
TINY_DECODER = MaskDecoderConfig(embed_dim=64, num_heads=4, mlp_dim=256, iou_head_hidden_dim=64)


def sam_config(variant: str = "vit_b") -> SamConfig:
    """The configuration of :func:`sam` ``(variant)``."""
    if variant not in ENCODERS:
        raise ValueError(f"variant must be one of {sorted(ENCODERS)}, got {variant!r}")
    if variant == "tiny":
        return SamConfig(encoder=ENCODERS["tiny"], decoder=TINY_DECODER)
    return SamConfig(encoder=ENCODERS[variant])


def sam(variant: str = "vit_b") -> Sam:
    """SAM with the image encoder ``variant`` ("vit_b", "vit_l", "vit_h", "tiny") and the
    paper's prompt encoder and mask decoder (the same for every paper size; "tiny" has a
    64-wide one, :data:`TINY_DECODER`)."""
    return Sam(sam_config(variant))


@register("sam", kind="promptable")
def build_sam(num_classes=None, in_channels: int = 3, paper: bool = False,
              variant: str | None = None, **overrides) -> Sam:
    """The registry's SAM: ``"tiny"`` (CPU-sized, chapter 11's) by default, the paper's ViT-B
    with ``paper=True``; ``variant`` names the encoder row instead ("vit_b", "vit_l",
    "vit_h", "tiny") and ``overrides`` replace :class:`SamConfig` fields. SAM has no classes
    and takes RGB images only (its normalisation is ImageNet's)."""
    if num_classes is not None:
        raise ValueError(f"SAM has no classes: build it without num_classes, got {num_classes!r}")
    if in_channels != 3:
        raise ValueError(f"SAM takes RGB images: in_channels must be 3, got {in_channels!r}")
    config = sam_config(variant or ("vit_b" if paper else "tiny"))
    return Sam(configure(config, **overrides))


def _config_from_hf(hf_config) -> SamConfig:
    v, p, d = hf_config.vision_config, hf_config.prompt_encoder_config, \
        hf_config.mask_decoder_config
    encoder = SamEncoderConfig(
        hidden_size=v.hidden_size, num_hidden_layers=v.num_hidden_layers,
        num_attention_heads=v.num_attention_heads, mlp_ratio=v.mlp_ratio, mlp_dim=v.mlp_dim,
        num_channels=v.num_channels, patch_size=v.patch_size, image_size=v.image_size,
        window_size=v.window_size, global_attn_indexes=tuple(v.global_attn_indexes),
        output_channels=v.output_channels, use_abs_pos=v.use_abs_pos, use_rel_pos=v.use_rel_pos,
        layer_norm_eps=v.layer_norm_eps, qkv_bias=v.qkv_bias)
    decoder = MaskDecoderConfig(
        embed_dim=d.hidden_size, depth=d.num_hidden_layers, num_heads=d.num_attention_heads,
        mlp_dim=d.mlp_dim, attention_downsample_rate=d.attention_downsample_rate,
        num_multimask_outputs=d.num_multimask_outputs, iou_head_depth=d.iou_head_depth,
        iou_head_hidden_dim=d.iou_head_hidden_dim, layer_norm_eps=d.layer_norm_eps)
    pos = getattr(v, "num_pos_feats", d.hidden_size // 2)  # the Fourier features' count
    if 2 * pos != d.hidden_size:
        raise ValueError(f"the HF config's vision_config.num_pos_feats ({pos}) must be half the "
                         f"mask decoder's hidden_size ({d.hidden_size}): each position code is "
                         "[sin, cos] of that many features")
    if p.hidden_size != d.hidden_size or p.image_size != v.image_size:
        raise ValueError("the HF config's prompt encoder must match its mask decoder width and "
                         "its vision encoder's image_size")
    return SamConfig(encoder=encoder, decoder=decoder, mask_in_chans=p.mask_input_channels)


def _prefixed(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def from_hf(hf_model) -> Sam:
    """The segcourse :class:`Sam` with an HF ``SamModel``'s configuration and weights."""
    model = Sam(_config_from_hf(hf_model.config))
    sd = hf_model.state_dict()
    ours = {f"image_encoder.{k}": v for k, v in
            convert_hf_encoder_state_dict(_prefixed(sd, "vision_encoder.")).items()}
    prompt = _prefixed(sd, "prompt_encoder.")
    # the Gaussian HF uses for the image grid (tied with the prompt encoder's copy)
    prompt["shared_embedding.positional_embedding"] = sd["shared_image_embedding."
                                                         "positional_embedding"]
    ours.update({f"prompt_encoder.{k}": v for k, v in
                 convert_hf_prompt_encoder_state_dict(prompt).items()})
    ours.update({f"mask_decoder.{k}": v for k, v in convert_hf_mask_decoder_state_dict(
        _prefixed(sd, "mask_decoder."), model.config.decoder.iou_head_depth).items()})
    model.load_state_dict(ours)
    return model.to(next(hf_model.parameters()).dtype).eval()


# segment_anything names (sam_vit_*.pth) -> ours, for the prompt encoder and mask decoder
_OFFICIAL_RULES = [
    (r"^prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix$",
     "prompt_encoder.pe.gaussian"),
    (r"^prompt_encoder\.mask_downscaling\.", "prompt_encoder.mask_downscaler."),
    (r"\.mlp\.lin1\.", ".mlp.0."), (r"\.mlp\.lin2\.", ".mlp.2."),
    # 3-layer head MLPs: the original's layers.0/1/2 are our Sequential's 0/2/4 (ReLUs between)
    (r"^(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))\.layers\.1\.",
     r"\1.2."),
    (r"^(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))\.layers\.2\.",
     r"\1.4."),
    (r"^(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))\.layers\.0\.",
     r"\1.0."),
]


def convert_official_state_dict(state_dict: dict) -> dict:
    """Our names for a segment_anything checkpoint (``sam_vit_b_01ec64.pth``)::

        model = sam("vit_b")
        model.load_state_dict(convert_official_state_dict(torch.load(path)))
    """
    if not isinstance(state_dict, dict) or "prompt_encoder.point_embeddings.0.weight" \
            not in state_dict:
        raise ValueError("state_dict is not a segment_anything Sam checkpoint (no "
                         "prompt_encoder.point_embeddings.0.weight)")
    ours = {f"image_encoder.{k}": v for k, v in
            convert_official_encoder_state_dict(_prefixed(state_dict, "image_encoder.")).items()}
    points = []
    for key, value in state_dict.items():
        if key.startswith("image_encoder.") or key in ("pixel_mean", "pixel_std"):
            continue
        if key.startswith("prompt_encoder.point_embeddings."):
            points.append((int(key.split(".")[2]), value))
            continue
        for pattern, repl in _OFFICIAL_RULES:
            key = re.sub(pattern, repl, key)
        ours[key] = value
    ours["prompt_encoder.point_embed.weight"] = torch.cat([v for _, v in sorted(points)])
    return ours


# The published checkpoints (segment_anything's README); convert_official_state_dict reads them
OFFICIAL_CHECKPOINTS = {
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
}

# ours -> segment_anything, the converter's rules read backwards
_TO_OFFICIAL_RULES = [
    (r"^image_encoder\.patch_embed\.", "image_encoder.patch_embed.proj."),
    (r"^prompt_encoder\.pe\.gaussian$",
     "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"),
    (r"^prompt_encoder\.mask_downscaler\.", "prompt_encoder.mask_downscaling."),
    (r"\.mlp\.0\.", ".mlp.lin1."), (r"\.mlp\.2\.", ".mlp.lin2."),
    (r"^(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))\.([024])\.",
     lambda m: f"{m[1]}.layers.{int(m[2]) // 2}."),
]


def to_official_state_dict(state_dict: dict) -> dict:
    """A segcourse :class:`Sam` ``state_dict`` under segment_anything's names (what
    ``sam_vit_*.pth`` holds): the inverse of :func:`convert_official_state_dict`, for sharing
    weights with the authors' code and tools."""
    if not isinstance(state_dict, dict) or "prompt_encoder.point_embed.weight" not in state_dict:
        raise ValueError("state_dict is not a segcourse Sam state_dict (no "
                         "prompt_encoder.point_embed.weight)")
    out = {}
    for key, value in state_dict.items():
        if key == "prompt_encoder.point_embed.weight":  # one table -> four 1-row embeddings
            out.update({f"prompt_encoder.point_embeddings.{i}.weight": value[i:i + 1]
                        for i in range(len(value))})
            continue
        for pattern, repl in _TO_OFFICIAL_RULES:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out
