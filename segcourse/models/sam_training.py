"""Training SAM from simulated clicks: the paper's interactive recipe, through ``fit``.

Paper: Kirillov et al., "Segment Anything", ICCV 2023 (https://arxiv.org/abs/2304.02643), Sec. 3
and appendix A, "Training algorithm". Per object of each image:

1. a first prompt: with probability ``box_prob`` (0.5) its box, jittered by Gaussian noise of
   std ``box_noise`` (10 %) of the box side, at most 20 pixels, else one positive point drawn
   uniformly inside its mask;
2. ``num_rounds`` further rounds: the error region of the previous prediction -- false
   negatives or false positives, whichever is larger -- gives a new click drawn uniformly inside
   it (positive in a false negative, negative in a false positive), added to the earlier
   prompts, and the previous low-res mask logits are fed back as the mask prompt (with
   ``corrective="centre"`` the click is the deepest pixel of the larger error instead --
   ``segcourse.metrics.next_click``, RITM's iterative training and the evaluation's
   simulated user);
3. ``mask_rounds`` last rounds (0 by default; the paper: 2) with no new click, only the
   previous logits fed back ("to encourage the model to benefit from the supplied mask").

The image embedding is computed once per image (:meth:`Sam.embed`) and reused by every round
(:meth:`Sam.decode`): the encoder runs once, the light decoder once per click, as the paper's
"simulate an interactive setup" does. The loss of each round is ``20 * focal + dice`` on the
mask (focal alpha 0.25, gamma 2, the paper's 20:1) and the MSE between the predicted IoU and
the IoU of the thresholded prediction with the target. With a single point (the ambiguous first
round) the model outputs 3 masks and only the one of smallest mask loss is back-propagated.

    trainer = ClickTrainer(num_rounds=2, seed=0)
    fit(sam("tiny"), InstanceTargets(ShapesDataset(num_samples=64)), step=trainer,
        max_steps=100, batch_size=4)

``click_step`` is the same as a plain function (the global RNG). Images come as
``InstanceTargets`` batches -- ``[B, 3, H, W]`` in [0, 1] and per image a dict with ``masks
[n, H, W]`` and ``boxes [n, 4]`` -- and go through :func:`sam.preprocess` and
:func:`sam.scale_prompts`, so the model sees what :meth:`Sam.predict` gives it; the losses are
computed at the image size, on the logits :func:`sam.postprocess_masks` upsamples.

Where we differ from the paper (whose training code was not released; SAM 2's
``sam2/training`` is the closest public one): 1 + 2 rounds, not the paper's 11 (8 sampled
points, plus 2 rounds with the mask prompt only, one of them at a random place among the
sampled ones -- ours are all at the end); at most ``max_objects`` objects per image (the
paper: 64 masks per GPU). As SAM 2 does: a box is one prompt but not ambiguous, so only the
single-point round uses multimask output; the mask of smallest focal + dice is also the one
whose IoU prediction is supervised; the mask fed back and the next click follow the mask of
highest predicted IoU (what inference would show the user); the fed-back logits and the clicks
are detached (no gradient through the rounds). If a prediction is already perfect its next
"click" is a padding point (label -1). The step calls ``embed`` / ``decode`` directly, which
under DDP would bypass the wrapper's ``forward`` and its gradient all-reduce: given a
``DistributedDataParallel`` model it raises a ``ValueError`` (one process only, for now).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._checks import check_count, check_images, check_number
from ..metrics.interactive import next_click
from .sam import postprocess_masks, preprocess, scale_prompts

__all__ = ["ClickTrainer", "click_step", "sigmoid_focal_loss", "dice_loss", "mask_iou",
           "sample_points", "next_clicks", "jitter_boxes", "select_min_loss"]

MASK_WEIGHTS = (20.0, 1.0)  # focal : dice, as the paper


# --- losses: one value per mask, over its pixels --------------------------------------------------

def sigmoid_focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25,
                       gamma: float = 2.0) -> torch.Tensor:
    """Binary focal loss (Lin et al. 2017) ``[..., H, W] -> [...]``, the mean over pixels:
    ``-alpha_t (1 - p_t)^gamma log p_t`` with ``alpha_t = alpha`` on the object, ``1 - alpha``
    off it."""
    target = target.to(logits.dtype)
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    alpha_t = alpha * target + (1 - alpha) * (1 - target)
    return (alpha_t * (1 - p_t) ** gamma * ce).flatten(-2).mean(-1)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice loss on sigmoid probabilities ``[..., H, W] -> [...]``:
    ``1 - (2 sum(p g) + smooth) / (sum(p) + sum(g) + smooth)`` (DETR's, SAM 2's)."""
    p, g = logits.sigmoid().flatten(-2), target.to(logits.dtype).flatten(-2)
    return 1 - (2 * (p * g).sum(-1) + smooth) / (p.sum(-1) + g.sum(-1) + smooth)


def mask_iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of boolean masks ``[..., H, W] -> [...]`` (1 where both are empty)."""
    pred, target = pred.bool().flatten(-2), target.bool().flatten(-2)
    inter = (pred & target).sum(-1).float()
    union = (pred | target).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def select_min_loss(mask_loss: torch.Tensor, iou_loss: torch.Tensor):
    """``[P, M]`` losses -> ``[P]`` of the mask with the smallest mask loss (and its IoU loss),
    and the indices chosen: only that mask of the multimask output gets a gradient."""
    best = mask_loss.detach().argmin(-1, keepdim=True)
    return mask_loss.gather(-1, best)[:, 0], iou_loss.gather(-1, best)[:, 0], best[:, 0]


# --- prompt simulation ----------------------------------------------------------------------------

def sample_points(region: torch.Tensor, generator: torch.Generator | None = None):
    """One pixel drawn uniformly inside each mask of ``region [P, H, W]`` (bool) ->
    ``points [P, 2]`` as (x, y) pixel indices, and ``found [P]`` (False for an empty mask,
    whose point is (0, 0))."""
    if not isinstance(region, torch.Tensor) or region.dim() != 3 or region.dtype != torch.bool:
        raise ValueError(f"region must be a bool tensor [P, H, W], got "
                         f"{getattr(region, 'dtype', type(region).__name__)} "
                         f"{tuple(getattr(region, 'shape', ()))}")
    P, H, W = region.shape
    scores = torch.rand(P, H * W, generator=generator).to(region.device)
    # the arg max of uniform scores over the region's pixels is a uniform pick among them
    index = torch.where(region.flatten(1), scores + 1, torch.zeros_like(scores)).argmax(-1)
    points = torch.stack([index % W, index // W], dim=-1).float()
    return points, region.flatten(1).any(-1)


def next_clicks(pred: torch.Tensor, target: torch.Tensor,
                generator: torch.Generator | None = None):
    """The paper's corrective click per object: ``pred`` and ``target`` bool ``[P, H, W]`` ->
    ``points [P, 2]`` (x, y) and ``labels [P]``: 1 (a pixel of the false negatives) when they
    are at least as many as the false positives, else 0 (a pixel of the false positives);
    -1 (padding) where the prediction is already right."""
    if not isinstance(pred, torch.Tensor) or not isinstance(target, torch.Tensor) \
            or pred.dim() != 3 or pred.shape != target.shape:
        raise ValueError(f"pred and target must be [P, H, W] of one shape, got "
                         f"{tuple(getattr(pred, 'shape', ()))} and "
                         f"{tuple(getattr(target, 'shape', ()))}")
    pred, target = pred.bool(), target.bool()
    fn, fp = target & ~pred, pred & ~target
    positive = fn.flatten(1).sum(-1) >= fp.flatten(1).sum(-1)
    points, found = sample_points(torch.where(positive[:, None, None], fn, fp), generator)
    labels = torch.where(found, positive.long(), torch.full_like(positive.long(), -1))
    return points, labels


def jitter_boxes(boxes: torch.Tensor, size: tuple[int, int], noise: float = 0.1,
                 max_shift: float = 20.0, generator: torch.Generator | None = None):
    """Boxes ``[P, 4]`` with each coordinate moved by N(0, (noise * side)^2), at most
    ``max_shift`` pixels (the paper's), kept inside the ``(H, W)`` image and non-empty."""
    H, W = size
    side = torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], -1).repeat(1, 2)
    shift = torch.randn(boxes.shape, generator=generator).to(boxes) * noise * side
    out = boxes + shift.clamp(-max_shift, max_shift)
    limit = boxes.new_tensor([W, H, W, H])
    out = torch.minimum(out.clamp(min=0), limit)
    x2 = torch.maximum(out[:, 2], out[:, 0] + 1).clamp(max=W)
    y2 = torch.maximum(out[:, 3], out[:, 1] + 1).clamp(max=H)
    return torch.stack([torch.minimum(out[:, 0], x2 - 1), torch.minimum(out[:, 1], y2 - 1),
                        x2, y2], -1)


# --- the step -------------------------------------------------------------------------------------

def _check_corrective(corrective):
    if corrective not in ("uniform", "centre"):
        raise ValueError(f"corrective must be 'uniform' (the paper's clicks) or 'centre' "
                         f"(RITM's), got {corrective!r}")
    return corrective


def _check_batch(model, batch):
    if not all(hasattr(model, a) for a in ("embed", "decode", "config")):
        raise ValueError(f"model must be a segcourse Sam (with embed and decode), got "
                         f"{type(model).__name__}")
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ValueError("batch must be (images [B, 3, H, W], [target dict, ...]) as "
                         "InstanceTargets.collate_fn makes it")
    images, targets = batch
    check_images(images, 3, name="images")
    if not isinstance(targets, (list, tuple)) or len(targets) != images.shape[0]:
        raise ValueError(f"targets must be a list of {images.shape[0]} dicts (one per image), "
                         f"got {type(targets).__name__}"
                         + (f" of {len(targets)}" if isinstance(targets, (list, tuple)) else ""))
    H, W = images.shape[-2:]
    for i, t in enumerate(targets):
        if not isinstance(t, dict) or "masks" not in t or "boxes" not in t:
            raise ValueError(f"targets[{i}] must be a dict with 'masks' [n, H, W] and "
                             f"'boxes' [n, 4]")
        m, b = t["masks"], t["boxes"]
        if not isinstance(m, torch.Tensor) or m.dim() != 3 or tuple(m.shape[1:]) != (H, W):
            raise ValueError(f"targets[{i}]['masks'] must be [n, {H}, {W}] (the images' size), "
                             f"got {tuple(getattr(m, 'shape', ()))}")
        if not isinstance(b, torch.Tensor) or tuple(b.shape) != (m.shape[0], 4):
            raise ValueError(f"targets[{i}]['boxes'] must be [{m.shape[0]}, 4], got "
                             f"{tuple(getattr(b, 'shape', ()))}")
    return images, targets


def _group_losses(net, emb, target, size, rounds, first_box, boxes, generator, box_noise,
                  clicks, corrective="uniform"):
    """Sum over the objects and rounds of one prompt group of one image (P objects)."""
    S = net.config.encoder.image_size
    P = target.shape[0]
    points = torch.zeros(1, P, 0, 2, device=emb.device)
    labels = torch.zeros(1, P, 0, dtype=torch.long, device=emb.device)
    if first_box:
        box_in = jitter_boxes(boxes.float(), size, box_noise, generator=generator) \
            if box_noise > 0 else boxes.float()
        _, box_in = scale_prompts(size, S, boxes=box_in[None])
    else:
        first, _ = sample_points(target, generator)
        points, labels = first[None, :, None], torch.ones(1, P, 1, dtype=torch.long,
                                                          device=emb.device)
        box_in = None
    # rounds 1..clicks add a click; the later ones (mask rounds) only feed the logits back
    mask_in, total_mask, total_iou = None, 0.0, 0.0
    for r in range(rounds + 1):
        multimask = not first_box and r == 0
        pts = None
        if points.shape[2]:
            pts, _ = scale_prompts(size, S, points=points)
        out = net.decode(emb, pts, labels if pts is not None else None, box_in, mask_in,
                         multimask_output=multimask)
        low = out["mask_logits"][0].float()  # (P, M, 4h, 4w)
        logits = postprocess_masks(low, size, S)  # (P, M, H, W)
        tgt = target[:, None].expand_as(logits)
        mask_loss = MASK_WEIGHTS[0] * sigmoid_focal_loss(logits, tgt) \
            + MASK_WEIGHTS[1] * dice_loss(logits, tgt)
        iou_loss = (out["iou_scores"][0].float() - mask_iou(logits.detach() > 0, tgt)) ** 2
        m, i, _ = select_min_loss(mask_loss, iou_loss)
        total_mask, total_iou = total_mask + m.sum(), total_iou + i.sum()
        if r == rounds:
            break
        shown = out["iou_scores"][0].detach().argmax(-1)  # what inference shows the user
        idx = torch.arange(P, device=emb.device)
        mask_in = low.detach()[idx, shown][None]  # (1, P, 4h, 4w)
        if r >= clicks:
            continue
        shown_mask = logits.detach()[idx, shown] > 0
        if corrective == "centre":  # RITM's: the deepest pixel of the larger error
            click, label = next_click(shown_mask, target)
        else:  # the paper's: a pixel drawn uniformly in the larger error
            click, label = next_clicks(shown_mask, target, generator)
        points = torch.cat([points, click[None, :, None]], 2)
        labels = torch.cat([labels, label[None, :, None]], 2)
    return total_mask, total_iou


def click_step(model, batch, num_rounds: int = 2, max_objects: int = 8, box_prob: float = 0.5,
               box_noise: float = 0.1, generator: torch.Generator | None = None,
               mask_rounds: int = 0, corrective: str = "uniform"):
    """One batch of simulated interactive segmentation -> ``{"loss_mask", "loss_iou"}``, each
    a mean over the objects and rounds (``fit``'s ``step`` contract; see the module doc).
    ``corrective`` places the clicks after the first prompt: ``"uniform"`` in the larger error
    (the paper's), ``"centre"`` at its deepest pixel (RITM's, the evaluation protocol's)."""
    _check_corrective(corrective)
    num_rounds = check_count(num_rounds, "num_rounds", minimum=0)
    mask_rounds = check_count(mask_rounds, "mask_rounds", minimum=0)
    max_objects = check_count(max_objects, "max_objects")
    check_number(box_prob, "box_prob", 0, 1)
    check_number(box_noise, "box_noise", 0)
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        # embed / decode run on the module, past DDP's forward: no gradient all-reduce
        raise ValueError("click_step trains on one process: under torchrun its encoder-once, "
                         "decoder-per-click calls would bypass DistributedDataParallel's "
                         "gradient synchronisation")
    net = model
    images, targets = _check_batch(net, batch)
    dtype = net.mask_decoder.iou_token.weight.dtype
    size = tuple(images.shape[-2:])
    emb = net.embed(preprocess(images.to(dtype), net.config.encoder.image_size))  # once
    total_mask, total_iou, count = emb.sum() * 0, emb.sum() * 0, 0  # 0 with a graph if no object
    for b, t in enumerate(targets):
        masks = t["masks"].bool().to(emb.device)
        keep = masks.flatten(1).any(-1).nonzero()[:, 0].cpu()  # objects with pixels
        keep = keep[torch.randperm(len(keep), generator=generator)[:max_objects]]
        if not len(keep):
            continue
        use_box = torch.rand(len(keep), generator=generator) < box_prob
        for first_box in (False, True):
            sel = keep[use_box == first_box]
            if not len(sel):
                continue
            m, i = _group_losses(net, emb[b:b + 1], masks[sel.to(emb.device)], size,
                                 num_rounds + mask_rounds, first_box,
                                 t["boxes"].to(emb.device)[sel], generator, box_noise,
                                 num_rounds, corrective)
            total_mask, total_iou = total_mask + m, total_iou + i
            count += len(sel) * (num_rounds + mask_rounds + 1)
    count = max(count, 1)
    return {"loss_mask": total_mask / count, "loss_iou": total_iou / count}


class ClickTrainer:
    """:func:`click_step` with its options and a seeded generator, for ``fit(step=...)``."""

    def __init__(self, num_rounds: int = 2, max_objects: int = 8, box_prob: float = 0.5,
                 box_noise: float = 0.1, seed: int | None = 0, mask_rounds: int = 0,
                 corrective: str = "uniform"):
        self.corrective = _check_corrective(corrective)
        self.num_rounds = check_count(num_rounds, "num_rounds", minimum=0)
        self.mask_rounds = check_count(mask_rounds, "mask_rounds", minimum=0)
        self.max_objects = check_count(max_objects, "max_objects")
        if not 0 <= box_prob <= 1:
            raise ValueError(f"box_prob must be in [0, 1], got {box_prob}")
        if not box_noise >= 0:
            raise ValueError(f"box_noise must be >= 0, got {box_noise}")
        self.box_prob, self.box_noise = box_prob, box_noise
        self.generator = None
        if seed is not None:
            self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, model, batch) -> dict[str, torch.Tensor]:
        return click_step(model, batch, self.num_rounds, self.max_objects, self.box_prob,
                          self.box_noise, self.generator, self.mask_rounds, self.corrective)

    def __repr__(self) -> str:
        return (f"ClickTrainer(num_rounds={self.num_rounds}, max_objects={self.max_objects}, "
                f"box_prob={self.box_prob}, box_noise={self.box_noise}, "
                f"mask_rounds={self.mask_rounds}, corrective={self.corrective!r})")
