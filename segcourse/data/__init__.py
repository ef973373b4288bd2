"""Data for the course: synthetic shapes (the default), joint transforms, Oxford-IIIT Pet."""

from .pets import PETS_URLS, OxfordPets, download_oxford_pets
from .shapes import IGNORE_INDEX, SHAPES_CLASSES, SHAPES_PALETTE, ShapesDataset, ShapesSample
from .targets import InstanceTargets, panoptic_target, target_from_mask, targets_from_samples
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Compose,
    Normalize,
    RandomHorizontalFlip,
    RandomScaleCrop,
    Resize,
    resize_pair,
)

__all__ = [
    "ShapesDataset", "ShapesSample", "SHAPES_CLASSES", "SHAPES_PALETTE", "IGNORE_INDEX",
    "OxfordPets", "download_oxford_pets", "PETS_URLS",
    "Compose", "RandomHorizontalFlip", "RandomScaleCrop", "Resize", "Normalize", "resize_pair",
    "IMAGENET_MEAN", "IMAGENET_STD",
    "InstanceTargets", "targets_from_samples", "target_from_mask", "panoptic_target",
]
