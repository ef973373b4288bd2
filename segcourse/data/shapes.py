"""A synthetic shapes dataset: the course's default data, generated on the fly, no download.

Each image is a little outdoor scene. Two *stuff* classes fill the background -- a sky with a
colour gradient and a textured ground below a tilted, wavy horizon -- and a handful of *thing*
instances (circles, squares, triangles, stars, crosses) of random size, rotation and colour are
drawn on top, so later shapes occlude earlier ones. Gaussian noise and per-image colour jitter
keep it from being solvable by colour alone: a circle and a square can share a colour, so a model
has to look at shape.

Every sample is a pure function of ``(seed, index)``, so a dataset is reproducible on any machine,
and each sample carries three aligned labels: the semantic mask, the instance map and (derived)
the panoptic map, which is what lets the same data serve chapters 1 to 9.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from .._checks import check_count, check_size

__all__ = ["ShapesDataset", "ShapesSample", "SHAPES_CLASSES", "SHAPES_PALETTE", "IGNORE_INDEX"]

IGNORE_INDEX = 255
STUFF_NAMES = ("sky", "ground")
THING_NAMES = ("circle", "square", "triangle", "star", "cross")
SHAPES_CLASSES = STUFF_NAMES + THING_NAMES

# Palette for *label* colours (not image colours): distinct hues so masks read at a glance.
SHAPES_PALETTE = np.array([
    [70, 130, 180],   # sky: steel blue
    [107, 142, 35],   # ground: olive
    [220, 20, 60],    # circle: crimson
    [255, 215, 0],    # square: gold
    [138, 43, 226],   # triangle: violet
    [255, 140, 0],    # star: orange
    [0, 206, 209],    # cross: turquoise
], dtype=np.uint8)

# Mean image colour of each thing class. Instances jitter around it by up to ±0.25 per channel,
# so neighbouring classes overlap in colour and shape has to be used to tell them apart.
_THING_COLOURS = np.array([
    [0.85, 0.25, 0.25],
    [0.85, 0.55, 0.20],
    [0.65, 0.30, 0.70],
    [0.90, 0.80, 0.25],
    [0.30, 0.55, 0.85],
])


@dataclass
class ShapesSample:
    """One sample with all its labels (tensors, aligned pixel for pixel)."""

    image: torch.Tensor             # float32 [3, H, W] in [0, 1]
    mask: torch.Tensor              # int64 [H, W]: class per pixel (IGNORE_INDEX on void)
    instances: torch.Tensor         # int64 [H, W]: 0 on stuff, 1..n on the n visible things
    instance_classes: torch.Tensor  # int64 [n]: class id of instance k + 1
    boxes: torch.Tensor             # float32 [n, 4]: (x1, y1, x2, y2), x2 and y2 exclusive


class ShapesDataset(Dataset):
    """Synthetic scenes of sky, ground and overlapping shapes.

    Args:
        num_samples: length of the dataset.
        size: image height and width in pixels (int) or ``(H, W)``.
        num_things: number of thing classes, 1..5 (circle, square, triangle, star, cross);
            ``num_classes = 2 + num_things``.
        max_instances: each image has between 1 and this many things (before occlusion).
        seed: sample ``i`` depends only on ``(seed, i)``; use different seeds for train and val.
        noise: standard deviation of the additive Gaussian pixel noise.
        void_border: if > 0, pixels within this many pixels of a thing's outline are labelled
            ``IGNORE_INDEX`` in the semantic mask, like the void band of PASCAL VOC.
        transform: optional joint transform ``(image, mask) -> (image, mask)`` applied by
            ``__getitem__`` (see ``segcourse.data.transforms``).

    ``ds[i]`` gives ``(image, mask)``; ``ds.sample(i)`` every label; ``ds.panoptic(i)`` the
    ``[H, W, 2]`` (category, instance id) map; ``ds.tensors()`` the whole set stacked.
    """

    def __init__(self, num_samples: int = 1000, size: int | tuple[int, int] = 64,
                 num_things: int = 3, max_instances: int = 5, seed: int = 0,
                 noise: float = 0.06, void_border: int = 0, transform=None):
        num_samples = check_count(num_samples, "num_samples")
        num_things = check_count(num_things, "num_things")
        if not 1 <= num_things <= len(THING_NAMES):
            raise ValueError(f"num_things must be in 1..{len(THING_NAMES)}, got {num_things}")
        height, width = check_size(size, "size", minimum=8)
        max_instances = check_count(max_instances, "max_instances")
        check_count(seed, "seed", minimum=0)
        check_count(void_border, "void_border", minimum=0)
        if (isinstance(noise, bool) or not isinstance(noise, (int, float, np.floating))
                or not noise >= 0):
            raise ValueError(f"noise must be a number >= 0, got {noise!r}")
        self.num_samples = int(num_samples)
        self.size = (height, width)
        self.num_things = num_things
        self.max_instances = max_instances
        self.seed = seed
        self.noise = noise
        self.void_border = void_border
        self.transform = transform
        self.classes = SHAPES_CLASSES[: 2 + num_things]
        self.num_classes = len(self.classes)
        self.stuff_classes = tuple(range(len(STUFF_NAMES)))
        self.thing_classes = tuple(range(len(STUFF_NAMES), self.num_classes))
        self.palette = SHAPES_PALETTE[: self.num_classes].copy()
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int):
        sample = self.sample(index)
        image, mask = sample.image, sample.mask
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return image, mask

    def sample(self, index: int) -> ShapesSample:
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        index %= self.num_samples
        image, mask, instances, classes = _render(np.random.default_rng((self.seed, index)),
                                                  self.size, self.num_things,
                                                  self.max_instances, self.noise)
        boxes = _boxes(instances, len(classes))
        if self.void_border > 0:
            mask = _add_void_border(mask, instances, self.void_border)
        return ShapesSample(
            image=torch.from_numpy(image),
            mask=torch.from_numpy(mask),
            instances=torch.from_numpy(instances),
            instance_classes=torch.from_numpy(classes),
            boxes=torch.from_numpy(boxes),
        )

    def panoptic(self, index: int) -> torch.Tensor:
        """``[H, W, 2]`` int64 map of (category id, instance id); stuff has instance id 0."""
        s = self.sample(index)
        return torch.stack([s.mask, s.instances], dim=-1)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images ``[N, 3, H, W]`` and masks ``[N, H, W]`` (untransformed; cached)."""
        if self._cache is None:
            samples = [self.sample(i) for i in range(self.num_samples)]
            self._cache = (torch.stack([s.image for s in samples]),
                           torch.stack([s.mask for s in samples]))
        return self._cache

    def __repr__(self) -> str:
        return (f"ShapesDataset(num_samples={self.num_samples}, size={self.size}, "
                f"classes={list(self.classes)}, seed={self.seed})")


# --- rendering ----------------------------------------------------------------------------

def _render(rng: np.random.Generator, size: tuple[int, int], num_things: int,
            max_instances: int, noise: float):
    H, W = size
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32) + 0.5  # pixel centres
    image = np.empty((3, H, W), dtype=np.float32)
    mask = np.empty((H, W), dtype=np.int64)

    # Stuff: a tilted, slightly wavy horizon splits sky (0) from ground (1).
    horizon = (H * rng.uniform(0.3, 0.65) + rng.uniform(-0.3, 0.3) * (xx - W / 2)
               + H * rng.uniform(0.0, 0.05)
               * np.sin(xx / W * rng.uniform(3, 9) + rng.uniform(0, 6)))
    sky = yy < horizon
    mask[sky], mask[~sky] = 0, 1

    sky_top = np.array([0.25, 0.45, 0.85]) + rng.uniform(-0.1, 0.1, 3)
    sky_bottom = np.array([0.65, 0.80, 0.95]) + rng.uniform(-0.1, 0.05, 3)
    t = yy / H
    sky_rgb = sky_top[:, None, None] * (1 - t) + sky_bottom[:, None, None] * t
    ground_rgb = np.array([0.35, 0.50, 0.20]) + rng.uniform(-0.12, 0.12, 3)
    angle = rng.uniform(0, np.pi)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * rng.uniform(0.4, 1.2)
                     * 64 / max(H, W))
    ground_rgb = ground_rgb[:, None, None] * (1 + 0.18 * stripes)
    image[:] = np.where(sky, sky_rgb, ground_rgb)

    # Things, drawn in order: later instances occlude earlier ones.
    instances = np.zeros((H, W), dtype=np.int64)
    drawn_classes = []
    scale = min(H, W)
    for _ in range(rng.integers(1, max_instances + 1)):
        cls = int(rng.integers(num_things))
        radius = scale * rng.uniform(0.09, 0.2)
        cy, cx = rng.uniform(0.1, 0.9) * H, rng.uniform(0.1, 0.9) * W
        angle = rng.uniform(0, 2 * np.pi)
        colour = np.clip(_THING_COLOURS[cls] + rng.uniform(-0.25, 0.25, 3), 0, 1)
        # Work in the shape's bounding window only: the rest of the image cannot be inside.
        window = (slice(max(int(cy - radius) - 1, 0), min(int(cy + radius) + 2, H)),
                  slice(max(int(cx - radius) - 1, 0), min(int(cx + radius) + 2, W)))
        dx, dy = xx[window] - cx, yy[window] - cy
        inside = _SHAPES[cls](dx, dy, radius, angle)
        if not inside.any():
            continue
        shade = 1 + 0.15 * (dx + dy)[inside] / (2 * radius)  # light from the top left
        image[(slice(None),) + window][:, inside] = colour[:, None] * shade
        drawn_classes.append(len(STUFF_NAMES) + cls)
        instances[window][inside] = len(drawn_classes)
        mask[window][inside] = len(STUFF_NAMES) + cls

    image += rng.normal(0, noise, image.shape).astype(np.float32)
    np.clip(image, 0, 1, out=image)

    # Keep only instances that are still visible; renumber them 1..n in drawing order.
    visible = np.unique(instances[instances > 0])
    remap = np.zeros(len(drawn_classes) + 1, dtype=np.int64)
    remap[visible] = np.arange(1, len(visible) + 1)
    instances = remap[instances]
    classes = np.array(drawn_classes, dtype=np.int64)[visible - 1]
    return image, mask, instances, classes


def _rotate(dx, dy, angle):
    c, s = np.cos(angle), np.sin(angle)
    return c * dx + s * dy, -s * dx + c * dy


def _circle(dx, dy, r, angle):
    return dx * dx + dy * dy <= r * r


def _square(dx, dy, r, angle):
    u, v = _rotate(dx, dy, angle)
    half = r * 0.85  # same area scale as the circle, roughly
    return (np.abs(u) <= half) & (np.abs(v) <= half)


def _triangle(dx, dy, r, angle):
    # Equilateral: inside all three half-planes whose normals point to the vertices' opposite edges.
    inside = np.ones(dx.shape, dtype=bool)
    for k in range(3):
        a = angle + k * 2 * np.pi / 3
        inside &= dx * np.cos(a) + dy * np.sin(a) <= r * 0.6
    return inside


def _star(dx, dy, r, angle):
    # Five points: the boundary radius is a triangle wave in the polar angle.
    rho = np.hypot(dx, dy)
    phase = ((np.arctan2(dy, dx) - angle) * 5 / (2 * np.pi)) % 1.0
    boundary = r * (0.5 + 0.6 * np.abs(phase - 0.5) * 2)
    return rho <= boundary


def _cross(dx, dy, r, angle):
    u, v = _rotate(dx, dy, angle)
    arm = r * 0.35
    return ((np.abs(u) <= r) & (np.abs(v) <= arm)) | ((np.abs(v) <= r) & (np.abs(u) <= arm))


_SHAPES = (_circle, _square, _triangle, _star, _cross)


def _boxes(instances: np.ndarray, n: int) -> np.ndarray:
    boxes = np.zeros((n, 4), dtype=np.float32)
    for k in range(1, n + 1):
        ys, xs = np.nonzero(instances == k)
        boxes[k - 1] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    return boxes


def _add_void_border(mask: np.ndarray, instances: np.ndarray, width: int) -> np.ndarray:
    """Mark pixels within ``width`` of a change of instance id as ignore (a VOC-style void band)."""
    edge = np.zeros(mask.shape, dtype=bool)
    edge[:, 1:] |= instances[:, 1:] != instances[:, :-1]
    edge[:, :-1] |= instances[:, 1:] != instances[:, :-1]
    edge[1:, :] |= instances[1:, :] != instances[:-1, :]
    edge[:-1, :] |= instances[1:, :] != instances[:-1, :]
    band = edge.copy()
    for _ in range(width - 1):  # grow the one-pixel outline by a 3x3 max filter
        grown = band.copy()
        grown[1:, :] |= band[:-1, :]
        grown[:-1, :] |= band[1:, :]
        grown[:, 1:] |= band[:, :-1]
        grown[:, :-1] |= band[:, 1:]
        band = grown
    out = mask.copy()
    out[band] = IGNORE_INDEX
    return out
