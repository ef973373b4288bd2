"""Detection targets from the course's data: what Mask R-CNN and Panoptic FPN train on.

A semantic model trains on ``(image, mask)``; an instance model needs, per image, a dict with
one entry per object (torchvision's detection target format):

- ``boxes [n, 4]`` float (x1, y1, x2, y2), ``labels [n]`` int64 in 1..K (0 is the background),
  ``masks [n, H, W]`` bool, and ``semantic [H, W]``, the class map (for Panoptic FPN's stuff).

:class:`InstanceTargets` wraps a dataset so that ``segcourse.train.fit`` can batch it: its
``collate_fn`` stacks the images and keeps the targets a list, since images hold different
numbers of objects.

    data = InstanceTargets(ShapesDataset(num_samples=800))
    images, targets = InstanceTargets.collate_fn([data[0], data[1]])
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from .._checks import as_tensor, check_class_ids
from ..ops.boxes import masks_to_boxes

__all__ = ["InstanceTargets", "targets_from_samples", "target_from_mask", "panoptic_target"]


def targets_from_samples(samples, thing_classes) -> list[dict[str, torch.Tensor]]:
    """Targets from ``ShapesDataset.sample`` objects (which carry instance labels).

    Dataset class ``thing_classes[k]`` becomes object label ``k + 1``; ``semantic`` is the
    dataset's class map.
    """
    thing_classes = check_class_ids(thing_classes, "thing_classes")
    lookup = {c: k + 1 for k, c in enumerate(thing_classes)}
    targets = []
    for s in samples:
        unknown = sorted({int(c) for c in s.instance_classes} - set(lookup))
        if unknown:
            raise ValueError(f"instance classes {unknown} are not in thing_classes "
                             f"{tuple(thing_classes)}")
        ids = torch.arange(1, len(s.instance_classes) + 1)
        labels = [lookup[int(c)] for c in s.instance_classes]
        targets.append({
            "boxes": s.boxes.float(),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "masks": s.instances[None] == ids[:, None, None],
            "semantic": s.mask,
        })
    return targets


def target_from_mask(mask: torch.Tensor, thing_classes) -> dict[str, torch.Tensor]:
    """A target from a class map alone: every thing class present becomes *one* object.

    Right for data with at most one object per class and image (an Oxford-IIIT Pet photo shows
    one pet); for crowded scenes it merges touching objects, which is why instance datasets
    label instances.
    """
    thing_classes = check_class_ids(thing_classes, "thing_classes")
    mask = as_tensor(mask, "mask")
    if mask.dim() != 2:
        raise ValueError(f"mask must be a [H, W] class map, got shape {tuple(mask.shape)}")
    if mask.is_floating_point() or mask.is_complex() or mask.dtype == torch.bool:
        raise ValueError(f"mask must hold integer class ids (torch.int64), got {mask.dtype}")
    objects = [(k + 1, mask == c) for k, c in enumerate(thing_classes) if (mask == c).any()]
    H, W = mask.shape
    masks = torch.stack([m for _, m in objects]) if objects \
        else torch.zeros(0, H, W, dtype=torch.bool)
    return {"boxes": masks_to_boxes(masks),  # x2, y2 exclusive
            "labels": torch.tensor([k for k, _ in objects], dtype=torch.int64),
            "masks": masks, "semantic": mask}


def panoptic_target(target: dict) -> torch.Tensor:
    """The ``[H, W, 2]`` ground truth of one target dict: (``semantic`` class, object index + 1)."""
    if not isinstance(target, dict) or "semantic" not in target or "masks" not in target:
        raise ValueError("target must be a dict with 'semantic' [H, W] and 'masks' [n, H, W], "
                         f"got {type(target).__name__}"
                         + (f" with keys {sorted(target)}" if isinstance(target, dict) else ""))
    semantic, masks = target["semantic"], target["masks"]
    if not isinstance(semantic, torch.Tensor) or semantic.dim() != 2 or not isinstance(
            masks, torch.Tensor) or masks.dim() != 3 or masks.shape[1:] != semantic.shape:
        shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                  for t in (semantic, masks)]
        raise ValueError(f"target['semantic'] must be [H, W] and target['masks'] [n, H, W] "
                         f"of the same H, W; got {shapes[0]} and {shapes[1]}")
    instance = torch.zeros_like(target["semantic"])
    for k, mask in enumerate(target["masks"]):
        instance[mask.bool()] = k + 1
    return torch.stack([target["semantic"], instance], dim=-1)


class InstanceTargets(Dataset):
    """``(image [C, H, W], target dict)`` pairs over a dataset, for the detection models.

    A dataset with instance labels (``ShapesDataset``: it has ``sample(i)``) gives one object
    per instance; any other dataset of ``(image, mask)`` gives one object per thing class
    present (:func:`target_from_mask`). ``thing_classes`` (dataset class ids, in label order)
    defaults to the dataset's own ``thing_classes``.

    ShapesDataset samples are read untransformed: its joint transforms move the image and the
    class map, not the boxes and instance masks.
    """

    def __init__(self, dataset, thing_classes=None):
        if thing_classes is None:
            thing_classes = getattr(dataset, "thing_classes", None)
            if thing_classes is None:
                raise ValueError(f"{type(dataset).__name__} has no thing_classes; pass "
                                 "thing_classes, the dataset class ids that are objects")
        self.dataset = dataset
        self.thing_classes = check_class_ids(thing_classes, "thing_classes")
        self.stuff_classes = check_class_ids(getattr(dataset, "stuff_classes", ()),
                                             "the dataset's stuff_classes", allow_empty=True)
        shared = sorted(set(self.thing_classes) & set(self.stuff_classes))
        if shared:
            raise ValueError(f"thing_classes {self.thing_classes} and the dataset's "
                             f"stuff_classes {self.stuff_classes} must not share a class, both "
                             f"hold {shared}")

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        if hasattr(self.dataset, "sample"):
            s = self.dataset.sample(index)
            return s.image, targets_from_samples([s], self.thing_classes)[0]
        image, mask = self.dataset[index]
        return image, target_from_mask(mask, self.thing_classes)

    @staticmethod
    def collate_fn(batch):
        """``[(image, target), ...]`` -> ``(images [B, C, H, W], [target, ...])``."""
        images, targets = zip(*batch)
        return torch.stack(images), list(targets)

    def __repr__(self) -> str:
        return f"InstanceTargets({self.dataset!r}, thing_classes={self.thing_classes})"
