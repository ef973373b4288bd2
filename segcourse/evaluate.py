"""Running a model over a data set: the batches ``fit`` trains on, and every evaluator.

    evaluate(unet, val_set)                  # semantic: {"miou", "pixel_accuracy", "iou", ...}
    evaluate_panoptic(model, InstanceTargets(ShapesDataset(200, seed=1)))   # mask AP and PQ
    evaluate_clicks(sam_model, InstanceTargets(ShapesDataset(50)))   # mIoU per click, NoC@85/90
    fit(model, train, val, max_steps=1000, evaluator=evaluate_panoptic)    # after every epoch

:func:`make_loader` turns what the course passes around -- a Dataset of ``(image, target)``, a
DataLoader, or a tuple of tensors -- into batches, one shard per process under torchrun;
:func:`segcourse.train.fit` uses it too. The model runs in eval mode (its mode is restored
afterwards); under torchrun every process scores its shard and the results are combined, so
every process returns the same scores.

The detection evaluators take a Dataset of ``(image, target dict)`` whose ``collate_fn`` gives
``(images, list of target dicts)`` (``segcourse.data.InstanceTargets``), or such a DataLoader.
Targets are in the model's label space (objects 1..K-1, see ``MaskRCNN``); Panoptic FPN's also
hold ``semantic``, the ``[H, W]`` class map. They run in float32 and keep per image only what
the metrics need (boolean masks, scores, labels, the panoptic map), on the CPU;
``return_predictions=True`` keeps every output, for plotting.

:func:`evaluate_clicks` scores SAM as an interactive tool (chapter 11): simulated clicks
(``metrics.next_click``), the IoU after each, NoC (``metrics.noc``); on one process.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset, TensorDataset

from ._checks import check_count, check_images, check_logits_and_target
from .data import panoptic_target
from .losses import cross_entropy
from .metrics import SegmentationMetric, mask_average_precision, next_click, noc, panoptic_quality
from .models.sam import Sam, preprocess
from .ops import masks_to_boxes

__all__ = ["make_loader", "to_device", "is_distributed", "semantic_logits", "evaluate", "predict",
           "evaluate_instances", "evaluate_panoptic", "evaluate_clicks"]


# --- batches --------------------------------------------------------------------------------------

def is_distributed() -> bool:
    """Whether this process is one of several (under torchrun, after ``setup_distributed``)."""
    return dist.is_available() and dist.is_initialized()


def _as_dataset(data, name: str = "data"):
    """``data`` as a DataLoader or a non-empty Dataset; ``ValueError`` naming ``name`` if it is
    neither, if it is empty, or if a tuple's images and masks differ in number."""
    if isinstance(data, DataLoader):
        return data
    if (isinstance(data, (tuple, list)) and len(data) == 2
            and all(isinstance(t, torch.Tensor) for t in data)):
        images, masks = data
        if images.dim() == 0 or masks.dim() == 0 or len(images) != len(masks):
            raise ValueError(f"{name} = (images, masks) must hold as many masks as images, got "
                             f"images of shape {tuple(images.shape)} and masks of shape "
                             f"{tuple(masks.shape)}")
        data = TensorDataset(images, masks)
    elif getattr(data, "transform", "absent") is None and hasattr(data, "tensors"):
        # An untransformed ShapesDataset: render once, then batch from memory (much faster).
        data = TensorDataset(*data.tensors())
    if not isinstance(data, Dataset):
        raise ValueError(f"{name} must be a Dataset of (image, target), a DataLoader, or a tuple "
                         f"(images, masks) of tensors; got {type(data).__name__}")
    try:
        size = len(data)
    except TypeError:  # an IterableDataset without a length
        size = None
    if size == 0:
        raise ValueError(f"{name} is empty (0 items): nothing to batch")
    return data


def make_loader(data, batch_size: int, shuffle: bool, seed: int = 0, *, name: str = "data",
                **kwargs) -> DataLoader:
    """A ``DataLoader`` from a DataLoader (returned as is), a Dataset, or ``(images, masks)``.

    A dataset with a ``collate_fn`` attribute batches with it: detection datasets, whose items
    are ``(image, target dict)``, give ``(images, list of target dicts)`` that way. Under
    torchrun, each process gets its own shard. An empty dataset, a tuple whose images and masks
    differ in number, or a ``batch_size`` that is not an int >= 1 is a ``ValueError`` naming
    the argument (``name``: what the caller calls ``data``, e.g. ``"train_data"``).
    """
    data = _as_dataset(data, name)
    if isinstance(data, DataLoader):
        return data
    check_count(batch_size, "batch_size")
    if getattr(data, "collate_fn", None) is not None:
        kwargs.setdefault("collate_fn", data.collate_fn)
    if is_distributed():
        rank, world = dist.get_rank(), dist.get_world_size()
        if shuffle:  # training: every process gets a different, equally long shard per epoch
            sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True,
                                         seed=seed, drop_last=True)
            return DataLoader(data, batch_size=batch_size, sampler=sampler, **kwargs)
        # evaluation: disjoint shards (item i on process i % world), no padding duplicates;
        # the evaluators combine the shards' results
        data = Subset(data, range(rank, len(data), world))
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator, **kwargs)


def to_device(batch, device: torch.device):
    """``batch`` with every tensor moved to ``device``, inside tuples, lists and dicts too."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def _default_loss(logits: torch.Tensor, target: torch.Tensor,
                  ignore_index: int = 255) -> torch.Tensor:
    """Cross-entropy over the pixels not labelled ``ignore_index``: ``segcourse.losses``'s
    contract -- labels checked (a ``ValueError`` for a label >= K, a float or ``[N, 1, H, W]``
    mask), and an all-ignored batch gives 0 with a gradient instead of NaN. On a batch with valid
    pixels it is ``F.cross_entropy`` itself, so the numbers are bit for bit the ones torch gives
    (``losses.cross_entropy`` sums in another order: equal to the last float bit or so)."""
    check_logits_and_target(logits, target, ignore_index)
    if target.dtype != torch.int64:  # F.cross_entropy's own message names nothing of ours
        raise ValueError(f"masks must be integer labels of dtype torch.int64, got "
                         f"{target.dtype}: pass masks.long()")
    if bool((target != ignore_index).any()):
        return F.cross_entropy(logits, target, ignore_index=ignore_index)
    return cross_entropy(logits, target, ignore_index=ignore_index)  # 0, connected to the graph


def _param_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype of ``model``'s first floating-point parameter (None: it has none)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), None)


def _check_semantic_batch(images, target, model: nn.Module, where: str,
                          labels: bool = True, int64: bool = True) -> None:
    """A semantic batch as the default loss and the metrics need it: float images ``[B, C, H,
    W]`` of the model's dtype and (``labels``) integer masks ``[B, H, W]`` of the same B, H, W
    (int64, what cross-entropy indexes with, unless ``int64=False``: a custom loss decides).
    ``where`` names the data in the message (``"train_data"``, ``"images"``)."""
    try:
        check_images(images, name="images", dtype=_param_dtype(model))
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    if not labels:
        return
    if not isinstance(target, torch.Tensor):
        raise ValueError(f"{where}: masks must be a tensor of labels [N, H, W], got "
                         f"{type(target).__name__}")
    expected = (images.shape[0], *images.shape[2:])
    if target.dim() == 4 and target.shape[1] == 1:
        raise ValueError(f"{where}: masks must have shape [N, H, W] = {expected}, got "
                         f"{tuple(target.shape)} (a channel dimension): pass masks[:, 0]")
    if tuple(target.shape) != expected:
        raise ValueError(f"{where}: masks must have shape [N, H, W] = {expected} (matching the "
                         f"images {tuple(images.shape)}), got {tuple(target.shape)}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool or (
            int64 and target.dtype != torch.int64):
        hint = " (labels, not probabilities)" if target.is_floating_point() else ""
        raise ValueError(f"{where}: masks must be integer labels of dtype torch.int64, got "
                         f"{target.dtype}{hint}: pass masks.long()")


def _autocast(device: torch.device, enabled: bool):
    """float16 autocast on CUDA when ``enabled``; otherwise no context at all (CPU autocast
    supports bfloat16 only, and older torch versions warn about or refuse float16 there)."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.float16)


# --- semantic models ------------------------------------------------------------------------------

def semantic_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Per-pixel class logits ``[B, K, H, W]`` of any semantic-capable model.

    A per-pixel classifier returns them from ``model(images)``. A mask-classification model
    (chapter 10: it has ``semantic(images)``, the paper's semantic inference, scores >= 0 summed
    over its queries) gives the log of those scores normalised over the classes: the same
    argmax, and a cross-entropy that measures the distribution the model implies per pixel.
    """
    semantic = getattr(model, "semantic", None)
    if semantic is None or not callable(semantic):
        return model(images)
    scores = semantic(images).float()
    return (scores.clamp_min(1e-8) / scores.sum(1, keepdim=True).clamp_min(1e-8)).log()


@torch.no_grad()
def evaluate(model: nn.Module, data, num_classes: int | None = None, *,
             device: str | torch.device | None = None, batch_size: int = 32,
             ignore_index: int = 255, loss_fn=None, amp: bool | None = None) -> dict:
    """Metrics of a semantic ``model`` on ``data`` from one confusion matrix over the whole set.

    Returns ``{"miou", "pixel_accuracy", "mean_accuracy", "iou" (tensor[K], NaN = absent),
    "confusion_matrix", "loss"}``. The model's train/eval mode is restored afterwards. Under
    torchrun every process scores its shard and the matrices are summed.

    The default loss is :func:`_default_loss` (cross-entropy ignoring ``ignore_index``). Masks
    must be ``[N, H, W]`` integer labels (int64 with the default loss), images the dtype of the
    model's parameters; anything else, an empty ``data`` or ``amp=True`` on the CPU is a
    ``ValueError`` saying what was given and what is expected.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    if num_classes is not None:
        check_count(num_classes, "num_classes")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    use_amp = device.type == "cuda" if amp is None else bool(amp)
    if use_amp and device.type != "cuda":
        raise ValueError("amp=True needs a CUDA device; on CPU evaluate in float32")
    default_loss = loss_fn is None
    if default_loss:
        def loss_fn(logits, target):
            return _default_loss(logits, target, ignore_index)
    loader = make_loader(data, batch_size, shuffle=False)
    was_training = model.training
    model.eval()
    metric, total_loss, count = None, 0.0, 0
    try:
        for images, target in loader:
            images, target = images.to(device), target.to(device)
            _check_semantic_batch(images, target, model, "data", int64=default_loss)
            with _autocast(device, use_amp):
                logits = semantic_logits(model, images)
            logits = logits.float()
            if metric is None:
                metric = SegmentationMetric(num_classes or logits.shape[1], ignore_index)
            metric.update(logits.argmax(1), target)
            loss = loss_fn(logits, target)
            total_loss += float(loss) * images.shape[0]
            count += images.shape[0]
    finally:
        model.train(was_training)
    if is_distributed():  # sum the matrices and losses of every process's shard
        # K from a process that saw data: a shard can be empty (fewer images than processes).
        # Every process takes part in this reduction, so the collectives stay in step.
        k = torch.tensor([metric.num_classes if metric is not None else num_classes or 0],
                         device=device)
        dist.all_reduce(k, op=dist.ReduceOp.MAX)
        if int(k) == 0:
            raise ValueError("evaluate() got an empty dataset")
        if metric is None:
            metric = SegmentationMetric(int(k), ignore_index)
        cm = metric.cm.to(device)
        totals = torch.tensor([total_loss, count], dtype=torch.float64, device=device)
        dist.all_reduce(cm)
        dist.all_reduce(totals)
        metric.cm = cm.cpu()
        total_loss, count = float(totals[0]), int(totals[1])
    if metric is None or count == 0:
        raise ValueError("data gives no batch: evaluate() got an empty dataset")
    scores = metric.compute()
    scores["loss"] = total_loss / count
    return scores


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 32,
            device: str | torch.device | None = None, return_probs: bool = False) -> torch.Tensor:
    """Predicted labels ``[N, H, W]`` (or softmax probabilities ``[N, K, H, W]``), on the CPU.

    ``images``: a float tensor ``[N, C, H, W]`` (N >= 1) of the model's dtype; ``batch_size``
    an int >= 1 -- otherwise a ``ValueError`` naming the argument.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    check_count(batch_size, "batch_size")
    try:
        check_images(images, name="images", dtype=_param_dtype(model))
    except ValueError as e:
        raise ValueError(f"predict: {e}") from None
    if images.shape[0] == 0:
        raise ValueError(f"images is empty: shape {tuple(images.shape)}, expected N >= 1 images")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    outputs = []
    try:
        for start in range(0, images.shape[0], batch_size):
            logits = semantic_logits(model, images[start:start + batch_size].to(device)).float()
            outputs.append((logits.softmax(1) if return_probs else logits.argmax(1)).cpu())
    finally:
        model.train(was_training)
    return torch.cat(outputs)


# --- detection models -----------------------------------------------------------------------------

@torch.no_grad()
def _predict_all(model: nn.Module, data, batch_size: int, device, fields, target_fields,
                 target_extra=None) -> tuple[list[dict], list[dict]]:
    """Per image, the model's outputs ``fields`` and the targets' ``target_fields`` (plus
    ``target_extra(target)``), on the CPU, in dataset order, over every process's shard."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    predictions, targets = [], []
    try:
        # a mask-classification model (chapter 10) gives these dicts from ``segment``
        run = getattr(model, "segment", None) or model
        for images, batch_targets in make_loader(data, batch_size, shuffle=False):
            for out, t in zip(run(to_device(images, device)), batch_targets):
                predictions.append({k: v.cpu() for k, v in out.items()
                                    if fields is None or k in fields})
                kept = {k: t[k].cpu() for k in target_fields}
                targets.append(kept | (target_extra(t) if target_extra else {}))
    finally:
        model.train(was_training)
    if is_distributed() and not isinstance(data, DataLoader):  # make_loader gave this a shard
        world = dist.get_world_size()
        shards = [None] * world
        dist.all_gather_object(shards, (predictions, targets))
        # make_loader puts item i on process i % world, at position i // world
        total = sum(len(p) for p, _ in shards)
        predictions = [shards[i % world][0][i // world] for i in range(total)]
        targets = [shards[i % world][1][i // world] for i in range(total)]
    if not predictions:
        raise ValueError("the evaluation data set is empty")
    return predictions, targets


def evaluate_instances(model: nn.Module, data, *, batch_size: int = 16, device=None,
                       return_predictions: bool = False) -> dict:
    """Mask AP@0.5 of a Mask R-CNN (or of any model with its outputs) on ``data``.

    Returns ``{"mask_ap50", "mask_ap50_per_class": {label: ap}}`` and, if asked,
    ``"predictions"``: per image the model's output dict, on the CPU.
    """
    fields = None if return_predictions else ("masks", "scores", "labels")
    predictions, targets = _predict_all(model, data, batch_size, device, fields,
                                        ("masks", "labels"))
    ap = mask_average_precision(predictions, targets, iou_threshold=0.5)
    scores = {"mask_ap50": ap["ap"], "mask_ap50_per_class": ap["per_class"]}
    return scores | ({"predictions": predictions} if return_predictions else {})


def evaluate_panoptic(model: nn.Module, data, *, batch_size: int = 16, device=None,
                      return_predictions: bool = False) -> dict:
    """Mask AP@0.5 of the instance branch and PQ of the fused output of a Panoptic FPN.

    The ground-truth panoptic map of a target is (``semantic`` class, object index + 1) per
    pixel (``segcourse.data.panoptic_target``); PQ is over the model's ``thing_classes`` and
    ``stuff_classes``.

    Returns ``{"mask_ap50", "pq", "sq", "rq", "pq_things", "pq_stuff"}`` and, if asked,
    ``"predictions"``: per image the model's output dict, on the CPU.
    """
    # int32 maps: ids are small, and a data set of them is then half the size
    fields = None if return_predictions else ("masks", "scores", "labels", "panoptic")
    predictions, targets = _predict_all(
        model, data, batch_size, device, fields, ("masks", "labels"),
        lambda t: {"panoptic": panoptic_target(t).to(torch.int32).cpu()})
    ap = mask_average_precision(predictions, targets, iou_threshold=0.5)
    pq = panoptic_quality(torch.stack([p["panoptic"].to(torch.int32) for p in predictions]),
                          torch.stack([t["panoptic"] for t in targets]),
                          model.thing_classes, model.stuff_classes)
    scores = {"mask_ap50": ap["ap"], "pq": pq["pq"], "sq": pq["sq"], "rq": pq["rq"],
              "pq_things": pq["things"]["pq"], "pq_stuff": pq["stuff"]["pq"]}
    return scores | ({"predictions": predictions} if return_predictions else {})


# --- interactive segmentation (SAM) ---------------------------------------------------------------

def _check_click_args(model, data, max_clicks, first, thresholds, max_objects):
    if not isinstance(model, Sam):
        raise ValueError(f"model must be a segcourse Sam (segcourse.models.sam), got "
                         f"{type(model).__name__}")
    if not hasattr(data, "__len__") or not hasattr(data, "__getitem__") or len(data) == 0:
        raise ValueError("data must be a non-empty dataset or list of (image [3, H, W], target "
                         "dict with 'masks' [n, H, W]), e.g. InstanceTargets(ShapesDataset())")
    check_count(max_clicks, "max_clicks")
    if first not in ("point", "box"):
        raise ValueError(f"first must be 'point' or 'box', got {first!r}")
    if max_objects is not None:
        check_count(max_objects, "max_objects")
    if not isinstance(thresholds, (tuple, list)) or not thresholds:
        raise ValueError(f"thresholds must be a non-empty tuple of IoUs in (0, 1], got "
                         f"{thresholds!r}")
    keys = [round(float(t) * 100) if isinstance(t, (int, float)) and not isinstance(t, bool)
            and 0 < t <= 1 else None for t in thresholds]
    if None in keys or len(set(keys)) != len(keys):
        raise ValueError(f"thresholds must be distinct IoUs in (0, 1] (named by percent: 0.85 "
                         f"-> noc85), got {thresholds!r}")
    return keys


def _click_item(item, i, ignore_index):
    """``(image [3, H, W], masks [n, H, W] bool, boxes [n, 4] or None, ignore [H, W] bool or
    None)`` of item ``i``; ``ignore`` from the target's ``semantic`` map where it has one."""
    if not isinstance(item, (tuple, list)) or len(item) != 2 or not isinstance(item[1], dict):
        raise ValueError(f"data[{i}] must be (image, target dict), got {type(item).__name__}")
    image, target = item
    check_images(image[None] if isinstance(image, torch.Tensor) else image, 3,
                 name=f"data[{i}] image")
    masks = target.get("masks")
    if not isinstance(masks, torch.Tensor) or masks.dim() != 3 \
            or masks.shape[1:] != image.shape[1:]:
        raise ValueError(f"data[{i}] target['masks'] must be [n, {image.shape[1]}, "
                         f"{image.shape[2]}] (the image's size), got "
                         f"{tuple(getattr(masks, 'shape', ()))}")
    boxes = target.get("boxes")
    if boxes is not None and tuple(boxes.shape) != (masks.shape[0], 4):
        raise ValueError(f"data[{i}] target['boxes'] must be [{masks.shape[0]}, 4], got "
                         f"{tuple(boxes.shape)}")
    semantic = target.get("semantic")
    ignore = None
    if isinstance(semantic, torch.Tensor) and ignore_index is not None:
        if semantic.shape != masks.shape[1:]:
            raise ValueError(f"data[{i}] target['semantic'] must be {tuple(masks.shape[1:])} "
                             f"(the image's size), got {tuple(semantic.shape)}")
        ignore = semantic == ignore_index
    return image, masks.bool(), boxes, ignore


def _click_rounds(model, emb, target, box, max_clicks, first, ignore=None) -> torch.Tensor:
    """IoU ``[P, max_clicks]`` of the P objects ``target [P, H, W]`` of one embedded image;
    pixels in ``ignore [H, W]`` neither count nor get clicked."""
    P, H, W = target.shape
    dev = emb.device
    points, labels = torch.zeros(P, 0, 2, device=dev), torch.zeros(P, 0, dtype=torch.long,
                                                                   device=dev)
    pred = torch.zeros_like(target)
    box_in = box[None] if first == "box" else None  # prompts in the image's pixels
    mask_in, ious = None, []
    for k in range(max_clicks):
        if k > 0 or first == "point":  # a box is the first interaction itself
            click, label = next_click(pred, target, ignore)
            points = torch.cat([points, click[:, None]], 1)
            labels = torch.cat([labels, label[:, None]], 1)
        pts = points[None] if points.shape[1] else None
        # a single point is ambiguous: 3 masks, the one of highest predicted IoU (SAM's rule)
        multimask = k == 0 and first == "point"
        out = model.decode_image(emb, (H, W), pts, labels[None] if pts is not None else None,
                                 box_in, mask_in, multimask_output=multimask)
        best = out["iou_scores"][0].argmax(-1)  # (P,): 0 for a single mask
        rows = torch.arange(P, device=dev)
        # the chosen low-res logits go back in with the next click, as SamPredictor is used
        mask_in = out["mask_logits"][0].float()[rows, best][None]  # (1, P, 4h, 4w)
        pred = out["logits"][0][rows, best] > 0  # (P, H, W)
        scored = pred if ignore is None else pred & ~ignore
        inter = (scored & target).flatten(1).sum(1).float()
        ious.append(inter / (scored | target).flatten(1).sum(1).float())
    return torch.stack(ious, 1)


@torch.no_grad()
def evaluate_clicks(model: nn.Module, data, max_clicks: int = 10, first: str = "point",
                    thresholds=(0.85, 0.90), device=None, max_objects: int | None = None,
                    ignore_index: int | None = 255) -> dict:
    """SAM as an interactive tool: per object, ``max_clicks`` simulated clicks and the IoU
    after each (RITM's and SAM's protocol, ``segcourse.metrics.interactive``).

    ``data``: a dataset or list of ``(image [3, H, W] in [0, 1], target dict with masks [n, H,
    W])``, e.g. ``InstanceTargets(ShapesDataset(...))``. Per image the encoder runs once; its
    objects (those with pixels; the first ``max_objects`` if given) are P prompts decoded
    together. ``first="point"``: click 1 is a positive click at the object's centre
    (``next_click`` of an empty prediction), decoded with 3 masks of which the one of highest
    predicted IoU is kept; ``first="box"``: interaction 1 is the object's tight box
    (``target["boxes"]``, x2 and y2 exclusive; computed from the mask when absent), kept in
    every later round. Each later click (``next_click`` of the current prediction) is added to
    the earlier prompts, the previous low-res logits go back in as ``mask_inputs``, and a single
    mask is decoded. IoUs are at the image size (:meth:`Sam.decode_image`, threshold 0), as
    :meth:`Sam.predict` gives. Pixels labelled ``ignore_index`` in a target's ``semantic`` map
    (Oxford-IIIT Pet's trimap border) count in no IoU and are never clicked.

    Returns ``{"iou": [N, max_clicks] (N objects of the whole set, on the CPU), "miou":
    [max_clicks], "noc85", "nof85", "noc90", "nof90"}`` (one pair per threshold, named by
    percent); NoC counts ``max_clicks`` for an object that never reaches the threshold, NoF is
    how many never do. Every object gets all ``max_clicks`` (RITM stops at its IoU goal; the
    NoC is the same, and the mIoU curve needs them all). The model's train/eval mode is
    restored afterwards.
    """
    keys = _check_click_args(model, data, max_clicks, first, thresholds, max_objects)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    dtype = _param_dtype(model)
    S = model.config.encoder.image_size
    was_training = model.training
    model.eval()
    ious = []
    try:
        for i in range(len(data)):
            image, masks, boxes, ignore = _click_item(data[i], i, ignore_index)
            keep = masks.flatten(1).any(1).nonzero()[:, 0][:max_objects]
            if not len(keep):
                continue
            target = masks[keep].to(device)
            box = (boxes[keep].float() if boxes is not None else masks_to_boxes(target)).to(device)
            emb = model.embed(preprocess(image[None].to(device, dtype), S))  # once per image
            ignore = None if ignore is None else ignore.to(device)
            ious.append(_click_rounds(model, emb, target, box, max_clicks, first,
                                      ignore).cpu())
    finally:
        model.train(was_training)
    if not ious:
        raise ValueError("data holds no object with pixels: nothing to click on")
    iou = torch.cat(ious)
    scores = {"iou": iou, "miou": iou.mean(0)}
    for t, key in zip(thresholds, keys):
        scores[f"noc{key}"], scores[f"nof{key}"] = noc(iou, float(t))
    return scores
