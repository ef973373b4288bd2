"""Oxford-IIIT Pet (Parkhi et al., 2012) for the chapters' ``FULL = True`` runs.

The published archives unpack to this layout (the reader expects exactly this under ``root``)::

    root/images/Abyssinian_1.jpg ...           7,390 photos (a few are PNG/CMYK/greyscale inside)
    root/annotations/trimaps/Abyssinian_1.png  trimap per photo: 1 = pet, 2 = background, 3 = border
    root/annotations/trainval.txt              "Abyssinian_100 1 1 1": name, class, species, breed
    root/annotations/test.txt

The trimap becomes a two-class mask: background 0, pet 1, and the ambiguous border band the
annotators left is ``255`` (ignored by the losses and metrics), which is how the dataset is meant
to be scored.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .._checks import check_size
from .shapes import IGNORE_INDEX
from .transforms import resize_pair

__all__ = ["OxfordPets", "download_oxford_pets", "PETS_URLS"]

PETS_URLS = {
    "images": "https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz",
    "annotations": "https://www.robots.ox.ac.uk/~vgg/data/pets/data/annotations.tar.gz",
}
PETS_CLASSES = ("background", "pet")
PETS_PALETTE = np.array([[40, 40, 40], [230, 160, 40]], dtype=np.uint8)
# Trimap value -> class id.
_TRIMAP_TO_CLASS = {1: 1, 2: 0, 3: IGNORE_INDEX}


def download_oxford_pets(root: str | Path) -> Path:
    """Download and unpack the two archives into ``root`` (about 800 MB; meant for Colab).

    Skips an archive whose folder already exists, so calling it twice is cheap.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for name, url in PETS_URLS.items():
        if (root / name).is_dir():
            continue
        archive = root / f"{name}.tar.gz"
        if not archive.exists():
            torch.hub.download_url_to_file(url, str(archive))
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(root, filter="data")
            else:
                tar.extractall(root)
        archive.unlink()
    return root


class OxfordPets(Dataset):
    """Pet vs background segmentation from Oxford-IIIT Pet trimaps.

    Args:
        root: folder with ``images/`` and ``annotations/`` (see the module docstring).
        split: ``"trainval"`` (3,680 images) or ``"test"`` (3,669 images).
        size: every sample is resized to ``size x size`` (or ``(H, W)``) so batches stack;
            ``None`` keeps the original resolution. A trimap whose size differs from its
            photo's is a ``ValueError`` naming the file (never resized into agreement).
        download: fetch the archives first if ``root`` lacks them (needs the network).
        transform: optional joint ``(image, mask) -> (image, mask)`` applied after resizing.
    """

    classes = PETS_CLASSES
    num_classes = len(PETS_CLASSES)
    palette = PETS_PALETTE

    def __init__(self, root: str | Path, split: str = "trainval",
                 size: int | tuple[int, int] | None = 128, download: bool = False,
                 transform=None):
        if split not in ("trainval", "test"):
            raise ValueError(f"split must be 'trainval' or 'test', got {split!r}")
        self.root = Path(root)
        if download:
            download_oxford_pets(self.root)
        listing = self.root / "annotations" / f"{split}.txt"
        if not listing.is_file():
            raise FileNotFoundError(
                f"{listing} not found: expected the Oxford-IIIT Pet layout under {self.root} "
                "(images/, annotations/trimaps/, annotations/trainval.txt); pass download=True")
        self.names = [line.split()[0] for line in listing.read_text().splitlines()
                      if line.strip() and not line.startswith("#")]
        self.split = split
        self.size = None if size is None else check_size(size)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int):
        name = self.names[index]
        # .convert("RGB"): a few files are greyscale, RGBA or CMYK despite the .jpg name.
        image_file = self.root / "images" / f"{name}.jpg"
        trimap_file = self.root / "annotations" / "trimaps" / f"{name}.png"
        with Image.open(image_file) as im:
            image = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)
        with Image.open(trimap_file) as tm:
            trimap = np.asarray(tm, dtype=np.int64)
        if trimap.shape != tuple(image.shape[:2]):  # resizing both would hide a wrong pairing
            raise ValueError(f"{trimap_file} is {trimap.shape[1]} x {trimap.shape[0]} (W x H) but "
                             f"its image {image_file} is {image.shape[1]} x {image.shape[0]}: a "
                             "trimap must have its photo's size")
        mask = np.full(trimap.shape, IGNORE_INDEX, dtype=np.int64)
        for value, cls in _TRIMAP_TO_CLASS.items():
            mask[trimap == value] = cls
        image, mask = image.permute(2, 0, 1).contiguous(), torch.from_numpy(mask)
        if self.size is not None:
            image, mask = resize_pair(image, mask, self.size)
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return image, mask

    def __repr__(self) -> str:
        return (f"OxfordPets(root={str(self.root)!r}, split={self.split!r}, n={len(self)}, "
                f"size={self.size})")
