"""ShapesDataset, joint transforms and the Oxford-IIIT Pet reader."""

import numpy as np
import pytest
import torch
from PIL import Image

from segcourse.data import (
    IGNORE_INDEX,
    Compose,
    Normalize,
    OxfordPets,
    RandomHorizontalFlip,
    RandomScaleCrop,
    Resize,
    ShapesDataset,
    resize_pair,
)

# --- shapes ----------------------------------------------------------------------------------

def test_same_seed_and_index_give_the_same_sample():
    a, b = ShapesDataset(10, seed=3).sample(7), ShapesDataset(50, seed=3).sample(7)
    assert torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask)
    assert torch.equal(a.instances, b.instances)


def test_different_seeds_or_indices_differ():
    ds = ShapesDataset(10, seed=0)
    assert not torch.equal(ds.sample(0).image, ds.sample(1).image)
    assert not torch.equal(ds.sample(0).image, ShapesDataset(10, seed=1).sample(0).image)


@pytest.mark.parametrize("size", [64, (48, 80)])
def test_sample_types_shapes_and_ranges(size):
    ds = ShapesDataset(20, size=size, num_things=5, seed=1)
    H, W = (size, size) if isinstance(size, int) else size
    image, mask = ds[0]
    assert image.shape == (3, H, W) and image.dtype == torch.float32
    assert mask.shape == (H, W) and mask.dtype == torch.int64
    images, masks = ds.tensors()
    assert images.min() >= 0 and images.max() <= 1
    assert set(masks.unique().tolist()) <= set(range(ds.num_classes))
    assert ds.num_classes == 7 and len(ds.palette) == 7 and ds.classes[:2] == ("sky", "ground")


def test_semantic_and_instance_labels_agree():
    ds = ShapesDataset(40, size=64, num_things=5, max_instances=6, seed=2)
    for i in range(len(ds)):
        s = ds.sample(i)
        n = len(s.instance_classes)
        assert (sorted(s.instances.unique().tolist()) == list(range(n + 1))
                or (n == 0 and (s.instances == 0).all()))
        for k in range(1, n + 1):
            pixels = s.mask[s.instances == k]
            assert (pixels == s.instance_classes[k - 1]).all()
            assert s.instance_classes[k - 1] in ds.thing_classes
            ys, xs = torch.nonzero(s.instances == k, as_tuple=True)
            assert s.boxes[k - 1].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert (s.mask[s.instances == 0] < 2).all()  # only stuff where there is no instance
        pan = ds.panoptic(i)
        assert torch.equal(pan[..., 0], s.mask) and torch.equal(pan[..., 1], s.instances)


def test_occlusion_happens_and_hidden_instances_are_dropped():
    ds = ShapesDataset(200, size=64, max_instances=8, seed=0)
    # With up to 8 shapes of radius up to 0.2*size, some images must lose a shape to occlusion:
    # the number of visible instances is then below the number of shapes drawn. We check the
    # weaker, observable fact that some instance is partly covered (its box holds other labels).
    partly_hidden = 0
    for i in range(len(ds)):
        s = ds.sample(i)
        for k, (x1, y1, x2, y2) in enumerate(s.boxes.long().tolist(), start=1):
            inside = s.instances[y1:y2, x1:x2]
            partly_hidden += int(((inside != k) & (inside != 0)).any())
    assert partly_hidden > 20


def test_class_balance_is_reasonable():
    _, masks = ShapesDataset(300, size=64, seed=0).tensors()
    frac = torch.bincount(masks.flatten(), minlength=5).double() / masks.numel()
    assert (frac[:2] > 0.2).all() and (frac[2:] > 0.02).all()


def test_void_border_marks_only_pixels_next_to_a_thing_outline():
    plain = ShapesDataset(5, size=64, seed=4).sample(0)
    void = ShapesDataset(5, size=64, seed=4, void_border=2).sample(0)
    ignored = void.mask == IGNORE_INDEX
    assert ignored.any()
    assert torch.equal(void.mask[~ignored], plain.mask[~ignored])
    # every ignored pixel lies within 2 pixels of a change of instance id
    ids = plain.instances
    edge = torch.zeros_like(ignored)
    edge[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    edge[:, :-1] |= ids[:, 1:] != ids[:, :-1]
    edge[1:] |= ids[1:] != ids[:-1]
    edge[:-1] |= ids[1:] != ids[:-1]
    near = torch.nn.functional.max_pool2d(edge[None, None].float(), 3, 1, 1)[0, 0] > 0
    assert (ignored <= near).all()
    assert (ignored[edge]).all()  # and the outline itself is always ignored


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_things"):
        ShapesDataset(num_things=9)
    with pytest.raises(IndexError):
        ShapesDataset(3)[3]


# --- transforms ------------------------------------------------------------------------------

def _pair():
    s = ShapesDataset(1, size=48, seed=5, void_border=1).sample(0)
    return s.image, s.mask


def test_flip_moves_image_and_mask_together():
    image, mask = _pair()
    torch.manual_seed(0)
    out_image, out_mask = RandomHorizontalFlip(p=1.0)(image, mask)
    assert torch.equal(out_image, image.flip(-1)) and torch.equal(out_mask, mask.flip(-1))


def test_scale_crop_keeps_labels_integer_and_aligned():
    image, mask = _pair()
    labels = set(mask.unique().tolist())
    torch.manual_seed(0)
    for _ in range(20):
        out_image, out_mask = RandomScaleCrop(40, scale=(0.5, 2.0))(image, mask)
        assert out_image.shape == (3, 40, 40) and out_mask.shape == (40, 40)
        assert out_mask.dtype == torch.int64
        assert set(out_mask.unique().tolist()) <= labels | {IGNORE_INDEX}  # nothing invented


def test_scale_crop_pads_with_ignore():
    image, mask = _pair()
    torch.manual_seed(0)
    out_image, out_mask = RandomScaleCrop(96, scale=(1.0, 1.0))(image, mask)
    # scale 1 and a 96 crop of a 48 image: the image sits top-left, the rest is padding
    assert torch.equal(out_mask[:48, :48], mask) and torch.equal(out_image[:, :48, :48], image)
    assert (out_mask[48:] == IGNORE_INDEX).all() and (out_mask[:, 48:] == IGNORE_INDEX).all()
    assert (out_image[:, 48:] == 0).all() and (out_image[:, :, 48:] == 0).all()


def test_resize_is_nearest_on_masks_and_exact_for_integer_factors():
    image, mask = _pair()
    big_image, big_mask = resize_pair(image, mask, (96, 96))
    # Doubling with nearest-exact repeats each label in a 2x2 block: invert by striding.
    assert torch.equal(big_mask[::2, ::2], mask)
    assert big_image.shape == (3, 96, 96)


def test_normalize_and_compose():
    image, mask = _pair()
    t = Compose([Resize(32), Normalize(mean=(0.5,) * 3, std=(0.25,) * 3)])
    out_image, out_mask = t(image, mask)
    ref_image, ref_mask = resize_pair(image, mask, (32, 32))
    torch.testing.assert_close(out_image, (ref_image - 0.5) / 0.25)
    assert torch.equal(out_mask, ref_mask)


def test_dataset_applies_transform():
    ds = ShapesDataset(2, size=48, seed=1, transform=Resize(32))
    image, mask = ds[0]
    assert image.shape == (3, 32, 32) and mask.shape == (32, 32)


# --- Oxford-IIIT Pet on a fixture in the published layout -------------------------------------

@pytest.fixture
def pets_root(tmp_path):
    """Three fake pets in the exact on-disk layout of the Oxford-IIIT Pet archives."""
    (tmp_path / "images").mkdir()
    (tmp_path / "annotations" / "trimaps").mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = ["Abyssinian_1", "basset_hound_12", "Bombay_3"]
    for i, name in enumerate(names):
        h, w = 30 + 4 * i, 40 - 2 * i
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        mode = "L" if name == "Bombay_3" else "RGB"  # a few real files are greyscale
        Image.fromarray(pixels).convert(mode).save(tmp_path / "images" / f"{name}.jpg")
        trimap = np.full((h, w), 2, dtype=np.uint8)          # background
        trimap[5:20, 8:25] = 3                               # border band
        trimap[7:18, 10:23] = 1                              # pet
        Image.fromarray(trimap).save(tmp_path / "annotations" / "trimaps" / f"{name}.png")
    (tmp_path / "annotations" / "trainval.txt").write_text(
        "Abyssinian_1 1 1 1\nbasset_hound_12 4 2 1\n")
    (tmp_path / "annotations" / "test.txt").write_text("Bombay_3 7 1 3\n")
    return tmp_path


def test_pets_reader_maps_trimaps(pets_root):
    ds = OxfordPets(pets_root, split="trainval", size=None)
    assert len(ds) == 2 and ds.names == ["Abyssinian_1", "basset_hound_12"]
    image, mask = ds[0]
    assert image.shape == (3, 30, 40) and image.dtype == torch.float32
    assert mask.dtype == torch.int64
    assert (mask[7:18, 10:23] == 1).all()                   # pet
    assert mask[0, 0] == 0 and mask[25, 35] == 0             # background
    assert mask[5, 8] == IGNORE_INDEX                        # border band is ignored
    assert set(mask.unique().tolist()) == {0, 1, IGNORE_INDEX}


def test_pets_reader_resizes_and_reads_greyscale(pets_root):
    ds = OxfordPets(pets_root, split="test", size=64)
    image, mask = ds[0]
    assert image.shape == (3, 64, 64) and mask.shape == (64, 64)
    assert set(mask.unique().tolist()) <= {0, 1, IGNORE_INDEX}


def test_pets_reader_errors(tmp_path, pets_root):
    with pytest.raises(FileNotFoundError, match="Oxford-IIIT Pet layout"):
        OxfordPets(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="split"):
        OxfordPets(pets_root, split="train")
