"""Mask2Former: a set of queries, each predicting one mask and one class, with masked attention.

Paper: B. Cheng, I. Misra, A. G. Schwing, A. Kirillov, R. Girdhar, "Masked-attention Mask
Transformer for Universal Image Segmentation", CVPR 2022 (arXiv:2112.01527).
Reference code: facebookresearch/Mask2Former ``mask2former/modeling/transformer_decoder/
mask2former_transformer_decoder.py`` (``MultiScaleMaskedTransformerDecoder``) and
``maskformer_model.py``; HF transformers ``models/mask2former/modeling_mask2former.py``.
:func:`from_hf` loads an HF ``Mask2FormerForUniversalSegmentation`` with a ResNet backbone;
``tests/test_mask2former.py`` checks that our class and mask logits (every layer's) equal HF's
to 1e-4 on a non-square image, and that the heads at COCO-panoptic sizes have HF's parameters.

The model, as Sec. 3 of the paper reads:

1. **Backbone** -- the course's ResNet (models/resnet.py): res2..res5 at strides 4..32.
2. **Pixel decoder** (models/pixel_decoder.py) -- deformable attention over 1/32, 1/16, 1/8,
   then one FPN step to 1/4 whose 1x1 projection gives the per-pixel *mask features*.
3. **Transformer decoder** -- N learned queries (their content ``query_feat`` and their
   position ``query_embed``). Each layer: **masked** cross-attention to one level of the pixel
   decoder (1/32, 1/16, 1/8, round robin, each with a level embedding and sine positions) ->
   self-attention among the queries -> FFN, each followed by add & LayerNorm. Masked: a query
   only attends where its previous prediction's mask, resized to that level, has sigmoid >= 0.5
   (Eq. 2); a query whose mask is empty attends everywhere (the reference's rule).
4. **Prediction head** -- LayerNorm, then a linear layer for K+1 class logits (the last is
   "no object") and a 3-layer MLP whose output, dotted with the mask features at every pixel,
   gives the mask logits. It runs on the learned queries before the first layer and after every
   layer; all but the last prediction are the auxiliary outputs (deep supervision) and each
   gives the next layer its attention mask.

Outputs (the family's convention, :mod:`segcourse.models.mask_inference`)::

    {"class_logits": [B, Q, K+1], "mask_logits": [B, Q, ceil(H/4), ceil(W/4)]}

plus ``aux_outputs`` in training mode. ``forward(images, return_attention=True)`` also returns
``attention``: per decoder layer the cross-attention weights ``[B, heads, Q, h_l, w_l]`` at that
layer's level, and ``aux_outputs`` (the predictions those layers' masks came from).

Where we deliberately differ from the reference, and why:

- Images are not padded to a multiple of 32 (Detectron2's ``size_divisibility``) nor normalised
  inside the model: like HF, any size goes through (the ResNet's ceil sizes, 97 -> 25 at 1/4)
  and normalisation belongs to the data pipeline (``segcourse.data.Normalize``).
- Attention is written out (:class:`Attention`) to return every head's weights for the
  chapter's figures; the arithmetic is ``nn.MultiheadAttention``'s, one ``[3C, C]`` input
  projection included, with the reference's initialisation.
- Pixels labelled 255 are ignored by the loss (``SetCriterion``); with none, it is the paper's.
- HF skips whole decoder layers in training with probability ``dropout`` ("layerdrop"); the
  reference does not, nor do we (its dropout is 0 anyway).
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
from .config import configure
from .mask_inference import MaskClassifier
from .pixel_decoder import NUM_LEVELS, MSDeformAttnPixelDecoder, sine_position_embedding
from .resnet import ARCHITECTURES, resnet
from .set_criterion import SetCriterion, mask_targets

__all__ = ["Mask2FormerConfig", "SMALL", "PAPER", "Attention", "MaskedAttentionLayer",
           "MaskedTransformerDecoder", "Mask2Former", "mask2former", "from_hf"]

STAGES = ("layer1", "layer2", "layer3", "layer4")  # res2..res5


@dataclass(frozen=True)
class Mask2FormerConfig:
    """Sizes of a Mask2Former; defaults (:data:`SMALL`) train on 64-pixel images on a CPU."""

    num_classes: int = 5            # K dataset classes; the class head predicts K + 1
    in_channels: int = 3
    depth: int = 18                 # ResNet depth (paper: 50)
    width: int = 16                 # ResNet stem width (paper: 64)
    pixel_dim: int = 64             # pixel decoder width, 64, 96, ... (paper: 256)
    mask_dim: int = 64              # mask features and mask embeddings (paper: 256)
    hidden_dim: int = 64            # transformer decoder width (paper: 256)
    num_queries: int = 16           # N (paper: 100; 200 for the largest models)
    num_heads: int = 4              # in the encoder and the decoder (paper: 8)
    dec_layers: int = 3             # masked-attention layers, 3 per round of levels (paper: 9)
    dim_feedforward: int = 128      # decoder FFN (paper: 2048)
    enc_layers: int = 2             # deformable encoder layers (paper: 6)
    enc_dim_feedforward: int = 128  # encoder FFN (paper: 1024)
    enc_points: int = 4             # sampling points per head and level (paper: 4)
    dropout: float = 0.0            # paper: 0.0
    enforce_input_projection: bool = False  # 1x1 conv into the decoder even if widths match
    num_points: int = 1024          # K points per mask for matching and losses (paper: 12544)
    oversample_ratio: float = 3.0   # point candidates per point (PointRend; paper: 3)
    importance_sample_ratio: float = 0.75  # share of the most uncertain candidates (paper)
    no_object_weight: float = 0.1   # class weight of "no object" (paper, after DETR)
    class_weight: float = 2.0       # loss weights lambda_cls, lambda_ce, lambda_dice (Sec. 4.1)
    mask_weight: float = 5.0
    dice_weight: float = 5.0


SMALL = Mask2FormerConfig()
PAPER = Mask2FormerConfig(depth=50, width=64, pixel_dim=256, mask_dim=256, hidden_dim=256,
                          num_queries=100, num_heads=8, dec_layers=9, dim_feedforward=2048,
                          enc_layers=6, enc_dim_feedforward=1024, num_points=12544)


def check_config(c: Mask2FormerConfig) -> None:
    """ValueError naming the field when a size cannot work."""
    for name in ("num_classes", "in_channels", "width", "pixel_dim", "mask_dim", "hidden_dim",
                 "num_queries", "num_heads", "dec_layers", "dim_feedforward",
                 "enc_dim_feedforward", "enc_points", "num_points"):
        check_count(getattr(c, name), name)
    check_count(c.enc_layers, "enc_layers", minimum=0)
    if c.depth not in ARCHITECTURES:
        raise ValueError(f"depth must be one of {sorted(ARCHITECTURES)}, got {c.depth!r}")
    for name in ("pixel_dim", "hidden_dim"):
        if getattr(c, name) % c.num_heads or getattr(c, name) % 4:
            raise ValueError(f"{name} ({getattr(c, name)}) must be divisible by num_heads "
                             f"({c.num_heads}) and by 4 (the sine position embedding)")
    if c.pixel_dim % 32 or c.pixel_dim < 64:
        # GroupNorm(32) as the reference; >= 2 channels per group, so that the 1 x 1 res5 map of
        # a 32-pixel image still has 2 values per group to normalise
        raise ValueError(f"pixel_dim must be a multiple of 32 and at least 64, got "
                         f"{c.pixel_dim}")
    if not 0.0 <= c.dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {c.dropout!r}")


# --- the transformer decoder, smallest part first ----------------------------------------------

class Attention(nn.Module):
    """Multi-head attention (batch first) returning its weights ``[B, heads, Q, S]`` too.

    ``mask [B, Q, S]`` (True = may not attend) is shared by the heads; masked logits are -inf.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        self.in_proj = nn.Linear(dim, 3 * dim)  # queries, keys, values stacked
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, query, key, value, mask=None):
        B, Q, C = query.shape
        M = self.num_heads

        def heads(x, w, b):  # (B, n, C) -> (B, M, n, C/M)
            return F.linear(x, w, b).view(B, -1, M, C // M).transpose(1, 2)

        w, b = self.in_proj.weight.chunk(3), self.in_proj.bias.chunk(3)
        q, k, v = heads(query, w[0], b[0]), heads(key, w[1], b[1]), heads(value, w[2], b[2])
        logits = q @ k.transpose(-2, -1) / math.sqrt(C // M)                # (B, M, Q, S)
        if mask is not None:
            logits = logits.masked_fill(mask[:, None], float("-inf"))
        weights = logits.softmax(-1)
        out = F.dropout(weights, self.dropout, self.training) @ v            # (B, M, Q, C/M)
        return self.out_proj(out.transpose(1, 2).reshape(B, Q, C)), weights


class MaskedAttentionLayer(nn.Module):
    """Masked cross-attention -> self-attention -> FFN, each then add & LayerNorm (post-norm;
    the paper's order, cross before self, so the learned queries see the image first)."""

    def __init__(self, dim: int, num_heads: int, dim_feedforward: int, dropout: float = 0.0):
        super().__init__()
        self.cross_attn = Attention(dim, num_heads, dropout)
        self.norm_cross = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, num_heads, dropout)
        self.norm_self = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, dim)
        self.norm_ffn = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, query_pos, memory, memory_pos, mask):
        # positions are added to queries and keys, never to the values
        out, weights = self.cross_attn(x + query_pos, memory + memory_pos, memory, mask)
        x = self.norm_cross(x + self.dropout(out))
        q = x + query_pos
        x = self.norm_self(x + self.dropout(self.self_attn(q, q, x)[0]))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(x))))
        return self.norm_ffn(x + self.dropout(ffn)), weights


class MaskedTransformerDecoder(nn.Module):
    """Queries -> per-layer (class logits, mask logits), the reference's decoder and predictor.

    ``forward(features [1/32, 1/16, 1/8 maps], mask_features [B, mask_dim, h, w],
    return_attention=False)`` -> ``(predictions, attention)``: ``dec_layers + 1`` pairs
    ``(class_logits [B, Q, K+1], mask_logits [B, Q, h, w])`` and, if asked, each layer's
    cross-attention weights ``[B, heads, Q, h_l, w_l]``.
    """

    def __init__(self, c: Mask2FormerConfig):
        super().__init__()
        d = c.hidden_dim
        self.query_feat = nn.Embedding(c.num_queries, d)    # the queries' content X_0
        self.query_embed = nn.Embedding(c.num_queries, d)   # their positions, at every attention
        self.level_embed = nn.Embedding(NUM_LEVELS, d)
        self.input_proj = nn.ModuleList(
            nn.Conv2d(c.pixel_dim, d, 1) if c.pixel_dim != d or c.enforce_input_projection
            else nn.Identity() for _ in range(NUM_LEVELS))
        self.layers = nn.ModuleList(MaskedAttentionLayer(d, c.num_heads, c.dim_feedforward,
                                                         c.dropout) for _ in range(c.dec_layers))
        self.decoder_norm = nn.LayerNorm(d)
        self.class_embed = nn.Linear(d, c.num_classes + 1)
        self.mask_embed = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d), nn.ReLU(),
                                        nn.Linear(d, c.mask_dim))
        # the reference's initialisation: Xavier for every matrix of the layers, zero attention
        # biases, c2_xavier_fill for input projections; embeddings, norms and heads keep
        # PyTorch's defaults
        with torch.no_grad():
            for layer in self.layers:
                for p in layer.parameters():
                    if p.dim() > 1:
                        nn.init.xavier_uniform_(p)
                for attn in (layer.cross_attn, layer.self_attn):
                    nn.init.zeros_(attn.in_proj.bias)
                    nn.init.zeros_(attn.out_proj.bias)
            for proj in self.input_proj:
                if isinstance(proj, nn.Conv2d):
                    nn.init.kaiming_uniform_(proj.weight, a=1)
                    nn.init.zeros_(proj.bias)

    def predict(self, x, mask_features, attention_size):
        """The prediction head, and the attention mask it gives the next layer: True where
        the mask, resized to that layer's level, has sigmoid < 0.5 (no gradient flows)."""
        x = self.decoder_norm(x)
        class_logits = self.class_embed(x)
        mask_logits = torch.einsum("bqc,bchw->bqhw", self.mask_embed(x), mask_features)
        small = F.interpolate(mask_logits.detach(), size=attention_size, mode="bilinear",
                              align_corners=False)
        return class_logits, mask_logits, small.sigmoid().flatten(2) < 0.5

    def forward(self, features, mask_features, return_attention: bool = False):
        sizes = [tuple(f.shape[-2:]) for f in features]
        memory, memory_pos = [], []
        for i, f in enumerate(features):
            # (B, C, h, w) -> (B, h*w, C), plus the level embedding; sine positions (h*w, C)
            memory.append(self.input_proj[i](f).flatten(2).transpose(1, 2)
                          + self.level_embed.weight[i])
            memory_pos.append(sine_position_embedding(*sizes[i], memory[-1].shape[-1],
                                                      f.device, f.dtype).flatten(1).T)
        B = mask_features.shape[0]
        x = self.query_feat.weight.expand(B, -1, -1)
        query_pos = self.query_embed.weight.expand(B, -1, -1)
        class_logits, mask_logits, blocked = self.predict(x, mask_features, sizes[0])
        predictions, attention = [(class_logits, mask_logits)], []
        for i, layer in enumerate(self.layers):
            level = i % NUM_LEVELS                 # 1/32, 1/16, 1/8, 1/32, ...
            # a query whose mask is empty at this level attends everywhere (else softmax of -inf)
            blocked = blocked & ~blocked.all(-1, keepdim=True)
            x, weights = layer(x, query_pos, memory[level], memory_pos[level], blocked)
            if return_attention:
                attention.append(weights.unflatten(-1, sizes[level]))
            class_logits, mask_logits, blocked = self.predict(
                x, mask_features, sizes[(i + 1) % NUM_LEVELS])
            predictions.append((class_logits, mask_logits))
        return predictions, attention


# --- the model -------------------------------------------------------------------------------

class Mask2Former(nn.Module, MaskClassifier):
    """ResNet -> MSDeformAttn pixel decoder -> masked-attention transformer decoder.

    ``thing_classes``: the dataset class ids that are countable objects (for instance and
    panoptic inference and for instance targets); every other class is stuff.
    ``forward(images)`` returns the output dict (module docstring); in training mode
    ``forward(images, targets)`` returns ``{"loss_class", "loss_mask", "loss_dice"}`` (weighted,
    summed over all layers) for a ``[B, H, W]`` semantic map or a list of instance-target dicts
    (:func:`segcourse.models.set_criterion.mask_targets`).
    """

    returns_losses = True  # segcourse.train.fit: training-mode forward(images, targets) -> dict

    def __init__(self, config: Mask2FormerConfig = SMALL, thing_classes=()):
        super().__init__()
        if not isinstance(config, Mask2FormerConfig):
            raise ValueError(f"config must be a Mask2FormerConfig, got {type(config).__name__}")
        check_config(config)
        c = self.config = config
        self.num_classes, self.in_channels = c.num_classes, c.in_channels
        self.set_categories(c.num_classes, thing_classes)
        self.backbone = resnet(c.depth, output_stride=32, in_channels=c.in_channels,
                               width=c.width)
        self.pixel_decoder = MSDeformAttnPixelDecoder(
            [self.backbone.channels[s] for s in STAGES], c.pixel_dim, c.mask_dim, c.num_heads,
            c.enc_layers, c.enc_dim_feedforward, c.enc_points, c.dropout)
        self.decoder = MaskedTransformerDecoder(c)
        self.criterion = SetCriterion.from_config(c)

    def forward(self, images: torch.Tensor, targets=None, return_attention: bool = False):
        check_model_input(self, images, min_size=32)
        losses_wanted = self.training and targets is not None
        if losses_wanted:  # bad targets fail here, before the forward pass
            targets = mask_targets(targets, self.num_classes, self.thing_classes,
                                   images.shape[-2:])
        feats = self.backbone(images)
        mask_features, multi_scale = self.pixel_decoder([feats[s] for s in STAGES])
        predictions, attention = self.decoder(multi_scale, mask_features, return_attention)
        out = {"class_logits": predictions[-1][0], "mask_logits": predictions[-1][1]}
        if self.training or return_attention:
            out["aux_outputs"] = [{"class_logits": cl, "mask_logits": ml}
                                  for cl, ml in predictions[:-1]]
        if return_attention:
            out["attention"] = attention
        return self.criterion(out, targets) if losses_wanted else out


@register("mask2former", kind="mask_classification")
def mask2former(num_classes: int, in_channels: int = 3, paper: bool = False,
                thing_classes=(), **overrides) -> Mask2Former:
    """CPU-sized Mask2Former (ResNet-18 at width 16, 64-wide heads, 16 queries, 3 decoder and
    2 encoder layers, 1024 points), or with ``paper=True`` the paper's R50 model (256 wide,
    100 queries, 9 + 6 layers, 12544 points); any :class:`Mask2FormerConfig` field by keyword."""
    config = configure(PAPER if paper else SMALL, num_classes=num_classes,
                       in_channels=in_channels, **overrides)
    return Mask2Former(config, thing_classes)


# --- HF transformers -> segcourse ------------------------------------------------------------

# HF parameter names -> ours, applied in order (after q/k/v of the self-attention are stacked)
_HF_RENAMES = [
    (r"^model\.pixel_level_module\.encoder\.", "backbone."),
    (r"^model\.pixel_level_module\.decoder\.encoder\.layers\.", "pixel_decoder.layers."),
    (r"^model\.pixel_level_module\.decoder\.", "pixel_decoder."),
    (r"^model\.transformer_module\.(decoder\.)?", "decoder."),
    (r"^class_predictor\.", "decoder.class_embed."),
    # backbone: HF's ResNetConvLayer (convolution + normalization) -> torchvision names
    (r"^backbone\.embedder\.embedder\.convolution\.", "backbone.conv1."),
    (r"^backbone\.embedder\.embedder\.normalization\.", "backbone.bn1."),
    (r"^backbone\.encoder\.stages\.(\d+)\.layers\.",
     lambda m: f"backbone.layer{int(m[1]) + 1}."),
    (r"\.layer\.(\d)\.convolution\.", lambda m: f".conv{int(m[1]) + 1}."),
    (r"\.layer\.(\d)\.normalization\.", lambda m: f".bn{int(m[1]) + 1}."),
    (r"\.shortcut\.convolution\.", ".downsample.0."),
    (r"\.shortcut\.normalization\.", ".downsample.1."),
    # pixel decoder
    (r"^pixel_decoder\.input_projections\.", "pixel_decoder.input_proj."),
    (r"^pixel_decoder\.mask_projection\.", "pixel_decoder.mask_features."),
    (r"^pixel_decoder\.adapter_1\.", "pixel_decoder.lateral_conv."),
    (r"^pixel_decoder\.layer_1\.", "pixel_decoder.output_conv."),
    (r"^(pixel_decoder\.layers\.\d+)\.self_attn_layer_norm\.", r"\1.norm1."),
    (r"^(pixel_decoder\.layers\.\d+)\.final_layer_norm\.", r"\1.norm2."),
    # transformer decoder
    (r"^decoder\.queries_embedder\.", "decoder.query_embed."),
    (r"^decoder\.queries_features\.", "decoder.query_feat."),
    (r"^decoder\.input_projections\.", "decoder.input_proj."),
    (r"^decoder\.layernorm\.", "decoder.decoder_norm."),
    (r"^decoder\.mask_predictor\.mask_embedder\.(\d)\.0\.",
     lambda m: f"decoder.mask_embed.{2 * int(m[1])}."),
    (r"_attn\.in_proj_(weight|bias)$", r"_attn.in_proj.\1"),
    (r"^(decoder\.layers\.\d+)\.cross_attn_layer_norm\.", r"\1.norm_cross."),
    (r"^(decoder\.layers\.\d+)\.self_attn_layer_norm\.", r"\1.norm_self."),
    (r"^(decoder\.layers\.\d+)\.final_layer_norm\.", r"\1.norm_ffn."),
    (r"\.fc([12])\.", r".linear\1."),
]


def _hf_resnet_architecture(bb) -> tuple[int, int]:
    """``(depth, width)`` of our ResNet equal to HF's ResNet config ``bb``, or ValueError."""
    if getattr(bb, "model_type", None) != "resnet":
        raise ValueError(f"from_hf needs a ResNet backbone (backbone_config=ResNetConfig(...)), "
                         f"got {getattr(bb, 'model_type', type(bb).__name__)!r}")
    depth = {(block.__name__, blocks): d for d, (block, blocks) in ARCHITECTURES.items()}.get(
        ({"basic": "BasicBlock", "bottleneck": "Bottleneck"}.get(bb.layer_type),
         tuple(bb.depths)))
    width = bb.embedding_size
    expansion = 4 if bb.layer_type == "bottleneck" else 1
    problems = []
    if depth is None:
        problems.append(f"layer_type={bb.layer_type!r}, depths={list(bb.depths)} is not "
                        f"ResNet-18/34/50/101")
    if list(bb.hidden_sizes) != [width * expansion * 2 ** i for i in range(4)]:
        problems.append(f"hidden_sizes={list(bb.hidden_sizes)} are not embedding_size={width} "
                        f"x {expansion} x (1, 2, 4, 8)")
    if bb.downsample_in_first_stage or getattr(bb, "downsample_in_bottleneck", False):
        problems.append("the stride must be on the 3x3 conv of the 2nd..4th stages "
                        "(downsample_in_first_stage=downsample_in_bottleneck=False)")
    if bb.hidden_act != "relu" or list(bb.out_features) != [f"stage{i}" for i in (1, 2, 3, 4)]:
        problems.append(f"need hidden_act='relu' and out_features stage1..stage4, got "
                        f"{bb.hidden_act!r}, {bb.out_features}")
    if problems:
        raise ValueError("from_hf: this ResNet has no segcourse equivalent: " + "; ".join(problems))
    return depth, width


def from_hf(hf_model, thing_classes=()) -> Mask2Former:
    """A segcourse :class:`Mask2Former` with the configuration and weights of ``hf_model``, a
    ``transformers.Mask2FormerForUniversalSegmentation`` whose backbone is HF's ResNet.

    HF counts ``decoder_layers`` including the prediction on the learned queries (10 = 9
    layers + 1). ``thing_classes`` (dataset class ids) is ours to give: HF's config does not
    say which classes are things. Returned in eval mode, on the CPU.
    """
    c = hf_model.config
    depth, width = _hf_resnet_architecture(c.backbone_config)
    if c.pre_norm or c.activation_function != "relu" or c.common_stride != 4 \
            or list(c.feature_strides) != [4, 8, 16, 32]:
        raise ValueError("from_hf supports the paper's decoder: pre_norm=False, "
                         "activation_function='relu', common_stride=4, feature_strides=[4, 8, "
                         f"16, 32]; got {c.pre_norm}, {c.activation_function!r}, "
                         f"{c.common_stride}, {list(c.feature_strides)}")
    config = Mask2FormerConfig(
        num_classes=c.num_labels, in_channels=c.backbone_config.num_channels, depth=depth,
        width=width, pixel_dim=c.feature_size, mask_dim=c.mask_feature_size,
        hidden_dim=c.hidden_dim, num_queries=c.num_queries, num_heads=c.num_attention_heads,
        dec_layers=c.decoder_layers - 1, dim_feedforward=c.dim_feedforward,
        enc_layers=c.encoder_layers, enc_dim_feedforward=c.encoder_feedforward_dim,
        dropout=float(c.dropout), enforce_input_projection=c.enforce_input_projection,
        num_points=c.train_num_points, oversample_ratio=c.oversample_ratio,
        importance_sample_ratio=c.importance_sample_ratio, no_object_weight=c.no_object_weight,
        class_weight=c.class_weight, mask_weight=c.mask_weight, dice_weight=c.dice_weight)
    model = Mask2Former(config, thing_classes)

    hf = {k: v for k, v in hf_model.state_dict().items() if not k.startswith("criterion.")}
    for key in [k for k in hf if re.search(r"\.self_attn\.q_proj\.weight$", k)]:
        base = key[: -len("q_proj.weight")]   # HF's q, k, v -> one stacked projection
        for kind in ("weight", "bias"):
            hf[f"{base}in_proj_{kind}"] = torch.cat([hf.pop(f"{base}{p}_proj.{kind}")
                                                     for p in "qkv"])
    state = {}
    for key, value in hf.items():
        for pattern, repl in _HF_RENAMES:
            key = re.sub(pattern, repl, key)
        state[key] = value
    # transformers < 5 keeps the decoder's input projections in a plain list: used, but not in
    # its state_dict (identity at the published sizes, where widths match); read them directly
    projections = getattr(hf_model.model.transformer_module, "input_projections", None)
    if isinstance(projections, list):
        for i, proj in enumerate(projections):
            for name, tensor in proj.state_dict().items():
                state.setdefault(f"decoder.input_proj.{i}.{name}", tensor)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("criterion.")]
    if missing or unexpected:
        raise ValueError(f"from_hf: names did not map: missing {missing}, unexpected "
                         f"{unexpected}")
    return model.eval()
