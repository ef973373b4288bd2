"""tools/full_dry_run.py: its fake dataset and fake checkpoints must look like the real ones."""

import importlib.util
from pathlib import Path

import pytest
import torch

from segcourse.data import OxfordPets
from segcourse.models.fcn import VGG16_BN_URL, VGG16_URL
from segcourse.models.resnet import IMAGENET_URLS

spec = importlib.util.spec_from_file_location(
    "full_dry_run", Path(__file__).parents[1] / "tools" / "full_dry_run.py")
full_dry_run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(full_dry_run)


def test_fake_pets_is_read_by_the_real_reader(tmp_path):
    root = full_dry_run.write_fake_pets(tmp_path, splits={"trainval": 30, "test": 7}, distinct=5)
    train, test = OxfordPets(root, "trainval", size=40), OxfordPets(root, "test", size=None)
    assert len(train) == 30 and len(test) == 7
    image, mask = train[0]
    assert image.shape == (3, 40, 40) and image.dtype == torch.float32
    assert set(mask.unique().tolist()) == {0, 1, 255}       # background, pet, trimap border
    grey_image, _ = test[0]                                  # the greyscale JPEG, read as RGB
    assert grey_image.shape[0] == 3


# Published parameter counts of torchvision's checkpoints (including the 1000-way classifier).
@pytest.mark.parametrize("url, params", [(VGG16_URL, 138_357_544), (VGG16_BN_URL, 138_365_992),
                                         (IMAGENET_URLS[50], 25_557_032)])
def test_fake_checkpoints_have_the_published_sizes(url, params):
    state = full_dry_run.fake_torchvision_state(url)
    learned = {k: v for k, v in state.items()
               if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    assert sum(v.numel() for v in learned.values()) == params


def test_fake_checkpoint_for_an_unknown_url_is_an_error():
    with pytest.raises(ValueError, match="no fake checkpoint"):
        full_dry_run.fake_torchvision_state("https://example.com/weights.pth")


def test_fake_eomt_loads_through_the_converter_with_the_coco_labels():
    transformers = pytest.importorskip("transformers")
    from segcourse.models.eomt import from_hf

    config = full_dry_run.fake_eomt_config()
    assert config.num_labels == 133 and config.patch_size == 16
    assert [config.id2label[i] for i in (15, 16)] == ["cat", "dog"]   # COCO panoptic ids
    model = from_hf(transformers.EomtForUniversalSegmentation(config).eval())
    with torch.no_grad():
        assert model.semantic(torch.rand(1, 3, 64, 48)).shape == (1, 133, 64, 48)


def test_fake_sam_checkpoint_loads_through_the_official_converter():
    """The stand-in keeps the paper's input geometry and decoder; the fake checkpoint carries
    the authors' names, and segcourse's converter reads it into the stand-in exactly."""
    from segcourse.models.sam import OFFICIAL_CHECKPOINTS, convert_official_state_dict, sam_config

    stand_in = full_dry_run.stand_in_sam("vit_b")
    paper = sam_config("vit_b")
    c = stand_in.config
    assert (c.encoder.image_size, c.encoder.patch_size, c.encoder.window_size) == (1024, 16, 14)
    assert c.decoder == paper.decoder and c.encoder.num_hidden_layers == 2
    state = full_dry_run.fake_torchvision_state(OFFICIAL_CHECKPOINTS["vit_b"])
    assert "image_encoder.patch_embed.proj.weight" in state      # segment_anything's names
    stand_in.load_state_dict(convert_official_state_dict(state))   # strict: every tensor
    assert full_dry_run.stand_in_sam("tiny").config == sam_config("tiny")
