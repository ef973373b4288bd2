"""EoMT: a plain ViT whose last blocks also carry the object queries -- no adapter, no decoder.

Paper: T. Kerssies, N. Cavagnero, A. Hermans, N. Norouzi, G. Averta, B. Leibe, G. Dubbelman,
D. de Geus, "Your ViT is Secretly an Image Segmentation Model", CVPR 2025
(https://arxiv.org/abs/2503.19108). Reference code: tue-mps/eomt (``models/eomt.py``,
``models/scale_block.py``; the annealing in ``training/lightning_module.py`` and ``configs/``)
and HF transformers' ``models/eomt/modeling_eomt.py``. ``tests/test_eomt.py`` checks that
:func:`from_hf` gives ``EomtForUniversalSegmentation``'s class and mask logits (to 1e-4, with
and without masked attention) and that ``PAPER`` has HF's parameter count.

Read top to bottom like the paper (section 3):

1. **A DINOv2-style ViT** -- 16 x 16 patches, a class token and register tokens, learned
   position embeddings, pre-norm blocks whose two residual branches are scaled by LayerScale.
2. **Queries in the last L2 blocks** -- ``num_queries`` learned tokens join the sequence before
   block ``num_layers - num_blocks``; the encoder's own self-attention then lets queries and
   patches talk both ways, which replaces Mask2Former's pixel and transformer decoders.
3. **Mask module** -- per query a class (``K + 1``: the last is "no object") and a mask: an MLP
   of the query dotted with the patch features upscaled 4x by ``ScaleBlock`` s, i.e. masks at
   stride ``patch / 4``. It also predicts from the input of every query block: the auxiliary
   outputs (deep supervision) and the masks for masked attention.
4. **Masked attention, annealed** -- in training, each query of a query block attends only to
   patches inside its previous mask. Block ``i`` keeps that restriction with probability
   ``P_i``, annealed 1 -> 0 block after block (:func:`mask_annealing_windows`), so at the end
   nothing needs masks: inference runs the plain ViT and predicts once.

The annealing works through ``segcourse.train.fit`` (one ``model(images, targets)`` per step, no
callbacks): the model counts its steps in the buffer ``train_step`` (saved with the weights) and
sets ``attn_mask_probs`` from :func:`mask_annealing_probs` before each, as the authors'
``on_train_batch_end`` does from Lightning's ``global_step``. Set ``anneal_steps`` to the run's
optimizer steps, or ``None`` (SMALL's default): the run ``fit`` is about to train, which it
announces by calling ``model.plan_training(total_steps)``. ``anneal_steps=0`` leaves
``attn_mask_probs`` as you set it.

Where we differ from the reference, and why:

- **Any image size.** The authors and HF run at one size (resize and pad, or sliding windows,
  outside the model); a course model takes any ``H, W >= 32``: zero-padded right and bottom to
  whole patches, position embeddings resized bicubically to the grid (timm's
  ``dynamic_img_pad`` / ``dynamic_img_size``, the authors' ViT library), mask logits cropped to
  the ``ceil(H / stride) x ceil(W / stride)`` cells covering the image. At the stored
  ``image_size`` nothing changes -- that is what the tests compare.
- **Inference never masks.** The reference still masks in eval while ``attn_mask_probs > 0``:
  never for a model trained to the end of its schedule (HF's converter copies the authors'
  buffer, which their schedule leaves at 0).
- No pixel normalisation inside (the course's data transforms do it for every model), no
  dropout or drop path (0 in every EoMT config).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._checks import check_count, check_model_input
from . import register
from .blocks import LayerNorm2d
from .config import configure
from .mask_inference import MaskClassifier
from .set_criterion import SetCriterion, mask_targets

__all__ = ["EomtConfig", "SMALL", "PAPER", "LayerScale", "Attention", "SwiGLU", "Block",
           "LayerNorm2d", "ScaleBlock", "EoMT", "mask_annealing_windows", "mask_annealing_probs",
           "from_hf", "eomt"]


@dataclass(frozen=True)
class EomtConfig:
    """Hyper-parameters of one EoMT (paper section 4.1; HF ``EomtConfig``)."""

    num_classes: int  # K: the model predicts K classes plus "no object"
    in_channels: int = 3  # image channels
    hidden_size: int = 1024  # token width D (ViT-L)
    num_layers: int = 24  # ViT blocks
    num_heads: int = 16  # attention heads (head width 64)
    mlp_ratio: int = 4  # MLP hidden width = mlp_ratio * D
    swiglu: bool = False  # SwiGLU MLP instead of GELU (DINOv2 ViT-g, HF use_swiglu_ffn)
    patch_size: int = 16  # paper: 16 x 16 patches (DINOv2's 14 resampled to 16)
    image_size: tuple[int, int] = (640, 640)  # size the position embeddings are stored for
    num_register_tokens: int = 4  # DINOv2 "registers" (Darcet et al. 2024): 4
    num_queries: int = 200  # object queries (COCO panoptic: 200)
    num_blocks: int = 4  # L2: the last blocks that carry the queries (ViT-L: 4)
    num_upscale_blocks: int = 2  # ScaleBlocks (2x each): max(1, log2(patch) - 2) -> stride 4
    layerscale_init: float = 1e-5  # LayerScale's initial gamma (DINOv2's init_values)
    layer_norm_eps: float = 1e-6  # DINOv2 / timm ViT LayerNorm eps
    # T: optimizer steps the annealing spans (authors: 12 COCO epochs); None: the length of the
    # segcourse.train.fit run, which tells the model (plan_training)
    anneal_steps: int | None = 88692
    anneal_power: float = 0.9  # P_i = (1 - progress) ** 0.9 (the authors' poly_power)
    # the set criterion (Mask2Former's, as the authors train EoMT)
    no_object_weight: float = 0.1  # class weight of "no object" in the cross-entropy
    class_weight: float = 2.0  # lambda_ce, in the loss and the matching cost
    mask_weight: float = 5.0  # lambda_bce
    dice_weight: float = 5.0  # lambda_dice
    num_points: int = 12544  # points sampled per mask (112 * 112)
    oversample_ratio: float = 3.0  # candidate points per sampled point
    importance_sample_ratio: float = 0.75  # share of points at the most uncertain candidates

    @property
    def mask_stride(self) -> int:
        """Pixels per mask cell: the patch over the ScaleBlocks' total 2**n upsampling."""
        return self.patch_size // 2 ** self.num_upscale_blocks


# CPU size for the 64 x 64 shapes scenes: 8 x 8 patches (an 8 x 8 grid) and one ScaleBlock give
# masks at stride 4 (16 x 16), like the paper's 16 x 16 patches with two ScaleBlocks.
SMALL = EomtConfig(num_classes=5, hidden_size=128, num_layers=6, num_heads=4, patch_size=8,
                   image_size=(64, 64), num_queries=16, num_blocks=3, num_upscale_blocks=1,
                   layerscale_init=0.1,  # CaiT's value for shallow nets trained from scratch
                   anneal_steps=None, num_points=256)
# ViT-L/16 at 640 x 640 on COCO panoptic (133 classes): tue-mps/coco_panoptic_eomt_large_640
# (configs/dinov2/coco/panoptic/eomt_large_640.yaml; HF EomtConfig's defaults).
PAPER = EomtConfig(num_classes=133)


def check_config(c: EomtConfig) -> None:
    """ValueError naming the field that makes ``c`` impossible to build."""
    for name in ("num_classes", "in_channels", "hidden_size", "num_layers", "num_heads",
                 "mlp_ratio", "patch_size", "num_queries", "num_blocks", "num_upscale_blocks",
                 "num_points"):
        check_count(getattr(c, name), f"config.{name}")
    check_count(c.num_register_tokens, "config.num_register_tokens", minimum=0)
    if c.anneal_steps is not None:
        check_count(c.anneal_steps, "config.anneal_steps", minimum=0)
    if c.hidden_size % c.num_heads:
        raise ValueError(f"config.hidden_size {c.hidden_size} is not divisible by "
                         f"config.num_heads {c.num_heads}")
    if c.num_blocks > c.num_layers:
        raise ValueError(f"config.num_blocks ({c.num_blocks} query blocks) must be at most "
                         f"config.num_layers ({c.num_layers})")
    if c.patch_size % 2 ** c.num_upscale_blocks:
        raise ValueError(f"config.patch_size {c.patch_size} must be divisible by "
                         f"2 ** num_upscale_blocks = {2 ** c.num_upscale_blocks}")
    size = tuple(c.image_size) if isinstance(c.image_size, (tuple, list)) else ()
    if len(size) != 2 or any(s < c.patch_size or s % c.patch_size for s in size):
        raise ValueError(f"config.image_size must be (H, W), multiples of patch_size "
                         f"{c.patch_size}, got {c.image_size!r}")


# --- The ViT, smallest piece first ----------------------------------------------------------------

class LayerScale(nn.Module):
    """x * gamma, one learned factor per channel (CaiT): residual branches start small."""

    def __init__(self, dim: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Attention(nn.Module):
    """Multi-head self-attention; ``mask`` (bool, True = may attend) restricts who sees whom."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = (f(x).reshape(B, N, self.num_heads, -1).transpose(1, 2)  # (B, h, N, d)
                   for f in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # mask (B, 1, N, N)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))  # (B, h, N, d) -> (B, N, C)


class SwiGLU(nn.Module):
    """SwiGLU MLP (DINOv2 ViT-g): down(silu(gate(x)) * up(x)), hidden 2/3 of 4D, rounded to 8."""

    def __init__(self, dim: int, mlp_ratio: int):
        super().__init__()
        hidden = (int(dim * mlp_ratio * 2 / 3) + 7) // 8 * 8  # HF EomtSwiGLUFFN's width
        self.gate, self.up = nn.Linear(dim, hidden), nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    """Pre-norm ViT block with LayerScale: x + g1 * MSA(LN(x)), then x + g2 * MLP(LN(x))."""

    def __init__(self, c: EomtConfig):
        super().__init__()
        D = c.hidden_size
        self.norm1 = nn.LayerNorm(D, eps=c.layer_norm_eps)
        self.attn = Attention(D, c.num_heads)
        self.ls1 = LayerScale(D, c.layerscale_init)
        self.norm2 = nn.LayerNorm(D, eps=c.layer_norm_eps)
        self.mlp = (SwiGLU(D, c.mlp_ratio) if c.swiglu else
                    nn.Sequential(nn.Linear(D, c.mlp_ratio * D), nn.GELU(),
                                  nn.Linear(c.mlp_ratio * D, D)))
        self.ls2 = LayerScale(D, c.layerscale_init)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), mask))
        return x + self.ls2(self.mlp(self.norm2(x)))


# --- The mask module ------------------------------------------------------------------------------

class ScaleBlock(nn.Sequential):
    """2x upsampling of patch features: 2x2 transposed conv -> GELU -> 3x3 depthwise -> LN2d."""

    def __init__(self, dim: int):
        super().__init__(nn.ConvTranspose2d(dim, dim, 2, stride=2), nn.GELU(),
                         nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False),
                         LayerNorm2d(dim))


# --- Mask annealing (authors: training/lightning_module.py mask_annealing + the configs' steps) ---

def mask_annealing_windows(total_steps: int, num_blocks: int) -> list[tuple[float, float]]:
    """``(start, end)`` step of each query block's annealing, staggered over training.

    Every block anneals over ``T / 6`` steps; the first starts at ``T / 6``, the last ends at
    ``5 T / 6``, starts evenly spaced -- the rule behind the authors' configs (COCO, 12 epochs,
    T = 88692: ViT-L's 4 blocks start at 14782, 29564, 44346, 59128, ViT-S's 3 at 14782, 36955,
    59128, each ending T / 6 later). One block: ``[T / 6, T / 3]``.
    """
    T, L = check_count(total_steps, "total_steps"), check_count(num_blocks, "num_blocks")
    spacing = (T / 2) / (L - 1) if L > 1 else 0.0
    return [(T / 6 + i * spacing, T / 6 + i * spacing + T / 6) for i in range(L)]


def mask_annealing_probs(step: int, total_steps: int, num_blocks: int,
                         power: float = 0.9) -> torch.Tensor:
    """``P_i``, the probability that query block ``i`` masks its attention at ``step``:
    1 before the block's window, ``(1 - progress) ** power`` inside it, 0 after."""
    check_count(step, "step", minimum=0)
    probs = []
    for start, end in mask_annealing_windows(total_steps, num_blocks):
        progress = min(max((step - start) / (end - start), 0.0), 1.0)
        probs.append((1.0 - progress) ** power)
    return torch.tensor(probs)


# --- The model ------------------------------------------------------------------------------------

class EoMT(nn.Module, MaskClassifier):
    """Encoder-only Mask Transformer: a ViT, queries in its last ``num_blocks`` blocks, masks.

    ``forward(images)``: ``{"class_logits": [B, Q, K+1], "mask_logits": [B, Q, h, w]}`` (``h =
    ceil(H / stride)``), plus ``"aux_outputs"`` in training, one per query block. In training,
    ``forward(images, targets)`` returns the criterion's losses (targets: ``mask_targets``) and
    advances the annealing one step. ``thing_classes``: the class ids of countable objects.
    """

    returns_losses = True  # segcourse.train.fit: training-mode forward(images, targets) -> dict

    def __init__(self, config: EomtConfig = SMALL, thing_classes=()):
        super().__init__()
        if not isinstance(config, EomtConfig):
            raise ValueError(f"config must be an EomtConfig, got {type(config).__name__}")
        check_config(config)
        c = self.config = config
        self.num_classes, self.in_channels = c.num_classes, c.in_channels
        self.set_categories(c.num_classes, thing_classes)
        D, P = c.hidden_size, c.patch_size
        self.grid = (c.image_size[0] // P, c.image_size[1] // P)  # the stored position grid
        self.num_prefix_tokens = 1 + c.num_register_tokens  # class token + registers
        self.patch_embed = nn.Conv2d(c.in_channels, D, P, stride=P)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.register_tokens = nn.Parameter(torch.zeros(1, c.num_register_tokens, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], D))
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.num_layers))
        self.norm = nn.LayerNorm(D, eps=c.layer_norm_eps)  # before every prediction
        self.queries = nn.Embedding(c.num_queries, D)
        self.class_head = nn.Linear(D, c.num_classes + 1)
        self.mask_head = nn.Sequential(nn.Linear(D, D), nn.GELU(), nn.Linear(D, D), nn.GELU(),
                                       nn.Linear(D, D))
        self.upscale = nn.Sequential(*(ScaleBlock(D) for _ in range(c.num_upscale_blocks)))
        # P_i of each query block, and the optimizer steps taken (the annealing's clock)
        self.register_buffer("attn_mask_probs", torch.ones(c.num_blocks))
        self.register_buffer("train_step", torch.zeros((), dtype=torch.long))
        self.criterion = SetCriterion.from_config(c)
        self._init_weights()

    def _init_weights(self) -> None:
        # timm's ViT: linear layers trunc-normal(0.02), position embeddings trunc-normal(0.02),
        # class / register tokens N(0, 1e-6); queries keep nn.Embedding's N(0, 1) (the authors')
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.normal_(self.register_tokens, std=1e-6)

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Tokens ``(B, 1 + R + h*w, D)`` -- class, registers, patches -- and the grid (h, w)."""
        P = self.config.patch_size
        H, W = images.shape[-2:]
        # pad right / bottom to whole patches (timm's dynamic_img_pad)
        images = F.pad(images, (0, -W % P, 0, -H % P))
        x = self.patch_embed(images)
        B, D, h, w = x.shape
        pos = self.pos_embed
        # Resize the stored grid to this one (timm: bicubic, antialias). While exporting to ONNX
        # always resize: the tracer would freeze this Python `if` at the export size, and the
        # resize to the same size is the identity (bicubic weights 0, 1, 0, 0), so it is exact.
        if (h, w) != self.grid or torch.onnx.is_in_onnx_export():
            pos = pos.reshape(1, *self.grid, D).permute(0, 3, 1, 2)  # -> (1, D, gh, gw)
            pos = F.interpolate(pos, size=(h, w), mode="bicubic", align_corners=False,
                                antialias=True).flatten(2).transpose(1, 2)  # -> (1, h*w, D)
        x = x.flatten(2).transpose(1, 2) + pos  # (B, D, h, w) -> (B, h*w, D); no pos for prefix
        prefix = torch.cat([self.cls_token, self.register_tokens], 1).expand(B, -1, -1)
        return torch.cat([prefix, x], dim=1), (h, w)

    def predict(self, x: torch.Tensor, grid: tuple[int, int]):
        """Mask logits ``(B, Q, 2^n h, 2^n w)`` and class logits ``(B, Q, K+1)`` from normed tokens
        ``(B, Q + prefix + h*w, D)``: mask MLP(query) . upscaled patch features."""
        Q = self.config.num_queries
        q, patches = x[:, :Q], x[:, Q + self.num_prefix_tokens:]
        B, N, D = patches.shape
        features = self.upscale(patches.transpose(1, 2).reshape(B, D, *grid))  # (B, D, 4h, 4w)
        mask_logits = torch.einsum("bqd,bdhw->bqhw", self.mask_head(q), features)
        return mask_logits, self.class_head(q)

    def attention_mask(self, mask_logits: torch.Tensor, grid: tuple[int, int],
                       prob: torch.Tensor) -> torch.Tensor | None:
        """Bool ``(B, 1, N, N)``: query q sees patch p only where its mask logit (downsampled to
        the patch grid) is > 0; everything else attends freely. Each query of each image keeps
        that restriction with probability ``prob`` (``None``: no one keeps it)."""
        if prob <= 0:
            return None
        B, Q = mask_logits.shape[:2]
        inside = F.interpolate(mask_logits, size=grid, mode="bilinear").flatten(2) > 0
        if prob < 1:  # annealing: a random share 1 - prob of the queries attend freely
            inside = inside | (torch.rand(B, Q, 1, device=inside.device) > prob)
        N = self.num_prefix_tokens + Q + grid[0] * grid[1]
        mask = torch.ones(B, N, N, dtype=torch.bool, device=mask_logits.device)
        mask[:, :Q, Q + self.num_prefix_tokens:] = inside
        return mask[:, None]  # one mask for all heads

    def plan_training(self, total_steps: int) -> None:
        """Called by ``segcourse.train.fit`` before it trains ``total_steps`` optimizer steps:
        with ``anneal_steps=None`` the annealing spans exactly this run, from the current step."""
        self._run = (int(self.train_step), check_count(total_steps, "total_steps"))

    def _anneal(self) -> None:
        """Set ``attn_mask_probs`` for this optimizer step, then count the step."""
        c = self.config
        start, span = 0, c.anneal_steps
        if span is None:
            if getattr(self, "_run", None) is None:
                raise ValueError("EomtConfig.anneal_steps=None anneals over the run that "
                                 "segcourse.train.fit plans (model.plan_training(total_steps)); "
                                 "in your own loop call plan_training first, or set "
                                 "anneal_steps")
            start, span = self._run
        if span > 0:
            probs = mask_annealing_probs(max(int(self.train_step) - start, 0), span,
                                         c.num_blocks, c.anneal_power)
            self.attn_mask_probs.copy_(probs)
        self.train_step.add_(1)

    def forward(self, images: torch.Tensor, targets=None):
        check_model_input(self, images, min_size=32)
        if self.training and targets is not None:
            self._anneal()
        H, W = images.shape[-2:]
        x, grid = self.embed(images)
        first = len(self.blocks) - self.config.num_blocks  # the first query block
        per_block = []
        for i, block in enumerate(self.blocks):
            mask = None
            if i == first:  # queries go in front: (B, Q + 1 + R + h*w, D)
                x = torch.cat([self.queries.weight.expand(x.shape[0], -1, -1), x], dim=1)
            if i >= first and self.training:  # predict from the block's input, mask with it
                mask_logits, class_logits = self.predict(self.norm(x), grid)
                per_block.append((mask_logits, class_logits))
                mask = self.attention_mask(mask_logits, grid, self.attn_mask_probs[i - first])
            x = block(x, mask)
        per_block.append(self.predict(self.norm(x), grid))
        # cells covering the image: ceil(n / s), written (n + s - 1) // s and not -(-n // s),
        # because ONNX's integer Div truncates: the exported -(-97 // 4) would be 24, not 25
        s = self.config.mask_stride
        h, w = ((n + s - 1) // s for n in (H, W))
        outputs = [{"class_logits": c, "mask_logits": m[..., :h, :w]} for m, c in per_block]
        out = dict(outputs[-1])
        if self.training:
            out["aux_outputs"] = outputs[:-1]
            if targets is not None:
                return self.criterion(out, mask_targets(targets, self.num_classes,
                                                        self.thing_classes, (H, W)))
        return out


# --- From HF transformers -------------------------------------------------------------------------

_HF_TO_OURS = [  # HF EomtForUniversalSegmentation name -> ours (prefix rewrite)
    ("embeddings.cls_token", "cls_token"), ("embeddings.register_tokens", "register_tokens"),
    ("embeddings.patch_embeddings.projection.", "patch_embed."),
    ("embeddings.position_embeddings.weight", "pos_embed"),
    ("layers.", "blocks."), ("layernorm.", "norm."), ("query.", "queries."),
    ("class_predictor.", "class_head."), ("upscale_block.block.", "upscale."),
]
_HF_PARTS = {".attention.q_proj.": ".attn.q.", ".attention.k_proj.": ".attn.k.",
             ".attention.v_proj.": ".attn.v.", ".attention.out_proj.": ".attn.proj.",
             ".layer_scale1.lambda1": ".ls1.gamma", ".layer_scale2.lambda1": ".ls2.gamma",
             ".mlp.fc1.": ".mlp.0.", ".mlp.fc2.": ".mlp.2.", ".mlp.gate_proj.": ".mlp.gate.",
             ".mlp.up_proj.": ".mlp.up.", ".mlp.down_proj.": ".mlp.down.",
             ".mlp.weights_out.": ".mlp.down.",  # transformers < 5's SwiGLU output
             ".conv1.": ".0.", ".conv2.": ".2.", ".layernorm2d.": ".3.",
             "head.fc1.": "head.0.", "head.fc2.": "head.2.", "head.fc3.": "head.4."}


def from_hf(hf_model, thing_classes=()) -> EoMT:
    """An :class:`EoMT` with the configuration and weights of a HF ``EomtForUniversalSegmentation``
    (``from_pretrained("tue-mps/coco_panoptic_eomt_large_640")``); the position grid is HF's
    ``grid_size``, the grid its forward reshapes the patches to."""
    hc = hf_model.config
    if hc.hidden_act != "gelu":
        raise ValueError(f"hf_model.config.hidden_act must be 'gelu', got {hc.hidden_act!r}")
    P = hc.patch_size if isinstance(hc.patch_size, int) else hc.patch_size[0]
    gh, gw = hf_model.grid_size
    config = EomtConfig(
        num_classes=hc.num_labels, in_channels=hc.num_channels, hidden_size=hc.hidden_size,
        num_layers=hc.num_hidden_layers, num_heads=hc.num_attention_heads,
        mlp_ratio=hc.mlp_ratio, swiglu=hc.use_swiglu_ffn, patch_size=P,
        image_size=(gh * P, gw * P), num_register_tokens=hc.num_register_tokens,
        num_queries=hc.num_queries, num_blocks=hc.num_blocks,
        num_upscale_blocks=hc.num_upscale_blocks, layerscale_init=hc.layerscale_value,
        layer_norm_eps=hc.layer_norm_eps, no_object_weight=hc.no_object_weight,
        class_weight=hc.class_weight, mask_weight=hc.mask_weight, dice_weight=hc.dice_weight,
        num_points=hc.train_num_points, oversample_ratio=hc.oversample_ratio,
        importance_sample_ratio=hc.importance_sample_ratio)
    model = EoMT(config, thing_classes)
    state = {}
    for name, tensor in hf_model.state_dict().items():
        if name.startswith("criterion."):  # loss buffers: ours come from the config
            continue
        for old, new in _HF_TO_OURS:
            if name.startswith(old):
                name = new + name[len(old):]
                break
        for old, new in _HF_PARTS.items():
            name = name.replace(old, new)
        if ".mlp.weights_in." in name:  # transformers < 5 packs SwiGLU's gate and up
            gate, up = tensor.chunk(2, dim=0)
            state[name.replace("weights_in", "gate")] = gate
            name, tensor = name.replace("weights_in", "up"), up
        state[name] = tensor
    state["pos_embed"] = state["pos_embed"][None]  # (h*w, D) -> (1, h*w, D)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "train_step" and not k.startswith("criterion.")]
    if missing or unexpected:
        raise ValueError(f"hf_model is not an EomtForUniversalSegmentation this file can read: "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model


@register("eomt", kind="mask_classification")
def eomt(num_classes: int, in_channels: int = 3, paper: bool = False, thing_classes=(),
         **overrides) -> EoMT:
    """EoMT: ``SMALL`` (a 6-block ViT on 8 x 8 patches, 3 query blocks, 16 queries) or, with
    ``paper=True``, ViT-L/16 at 640 with 200 queries in the last 4 blocks (COCO panoptic)."""
    config = configure(PAPER if paper else SMALL, num_classes=num_classes,
                       in_channels=in_channels, **overrides)
    return EoMT(config, thing_classes)
