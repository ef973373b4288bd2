"""Mask2Former: equal to HF transformers (random weights, no download), HF's parameter counts at
the COCO-panoptic sizes, any image size, masked attention that really masks, training."""

import inspect
import math
import types

import pytest
import torch
import torch.nn.functional as F

from segcourse.models import build
from segcourse.models import mask2former as m2f
from segcourse.models.pixel_decoder import (
    MSDeformAttnPixelDecoder,
    encoder_reference_points,
    sine_position_embedding,
)

transformers = pytest.importorskip("transformers")
hf_m2f = pytest.importorskip("transformers.models.mask2former.modeling_mask2former")

STAGES = ["stage1", "stage2", "stage3", "stage4"]
# a tiny model: ResNet-18 at width 8, 64-wide pixel decoder, 32-wide transformer decoder (so
# with input projections), 6 queries, 3 decoder and 2 encoder layers
TINY = dict(width=8, pixel_dim=64, mask_dim=32, hidden_dim=32, num_queries=6, num_heads=4,
            dec_layers=3, dim_feedforward=64, enc_layers=2, enc_dim_feedforward=64,
            num_points=256)


def tiny(num_classes=3, **overrides):
    torch.manual_seed(0)
    return build("mask2former", num_classes, **{**TINY, **overrides})


def hf_config(num_labels=3, decoder_layers=4, backbone=None, **kw):
    backbone = backbone or transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[2, 2, 2, 2], layer_type="basic",
        out_features=STAGES)
    sizes = dict(feature_size=64, mask_feature_size=32, hidden_dim=32, encoder_layers=2,
                 encoder_feedforward_dim=64, decoder_layers=decoder_layers,
                 num_attention_heads=4, dim_feedforward=64, num_queries=5)
    return transformers.Mask2FormerConfig(backbone_config=backbone, num_labels=num_labels,
                                          **{**sizes, **kw})


def random_hf_model(config):
    torch.manual_seed(0)
    hf = transformers.Mask2FormerForUniversalSegmentation(config).eval()
    with torch.no_grad():  # HF's init leaves BN near zero and the deformable offsets constant
        for name, mod in hf.named_modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0, 0.1)
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
            if name.endswith(("sampling_offsets", "attention_weights")):
                mod.weight.normal_(0, 0.3)
    return hf


@pytest.fixture(scope="module")
def hf_model():
    return random_hf_model(hf_config())


def test_logits_equal_hf_on_an_odd_non_square_image(hf_model):
    ours = m2f.from_hf(hf_model)
    x = torch.randn(1, 3, 97, 131, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = hf_model(x, output_auxiliary_logits=True)
        out = ours(x, return_attention=True)
    assert out["mask_logits"].shape == (1, 5, 25, 33)                # ceil(97/4), ceil(131/4)
    torch.testing.assert_close(out["class_logits"], theirs.class_queries_logits,
                               rtol=0, atol=1e-4)
    torch.testing.assert_close(out["mask_logits"], theirs.masks_queries_logits, rtol=0, atol=1e-4)
    assert len(out["aux_outputs"]) == len(theirs.auxiliary_logits) == 3
    for a, b in zip(out["aux_outputs"], theirs.auxiliary_logits):
        torch.testing.assert_close(a["class_logits"], b["class_queries_logits"], rtol=0,
                                   atol=1e-4)
        torch.testing.assert_close(a["mask_logits"], b["masks_queries_logits"], rtol=0,
                                   atol=1e-4)
    # the comparison exercised masking: some attention weights were masked to exactly zero
    assert any((w == 0).any() and (w > 0).any() for w in out["attention"])


def test_hf_bottleneck_strides_on_its_3x3_like_ours():
    # HF's bottleneck with downsample_in_bottleneck=False (its default) puts the stride on the
    # 3x3 conv, as torchvision's "V1.5" and ours: the backbones agree on an odd image
    backbone = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[32, 64, 128, 256],
                                         depths=[3, 4, 6, 3], layer_type="bottleneck",
                                         out_features=STAGES)
    hf = random_hf_model(hf_config(backbone=backbone))
    ours = m2f.from_hf(hf)
    assert ours.config.depth == 50 and ours.backbone.layer2[0].conv2.stride == (2, 2)
    x = torch.randn(1, 3, 65, 47)
    with torch.no_grad():
        theirs = hf.model.pixel_level_module.encoder(x).feature_maps
        mine = ours.backbone(x)
    for a, name in zip(theirs, ("layer1", "layer2", "layer3", "layer4")):
        torch.testing.assert_close(mine[name], a, rtol=0, atol=1e-4)
    backbone.downsample_in_bottleneck = True
    with pytest.raises(ValueError, match="3x3"):
        m2f.from_hf(types.SimpleNamespace(config=hf_config(backbone=backbone)))


def test_parameter_counts_equal_hf_at_coco_panoptic_sizes():
    # HF's Mask2Former R50 at the COCO-panoptic settings (its defaults: 100 queries, hidden 256,
    # 10 = 9 + 1 decoder layers, 6 encoder layers, FFN 2048 / 1024, 8 heads), on the meta device
    backbone = transformers.ResNetConfig(layer_type="bottleneck", depths=[3, 4, 6, 3],
                                         hidden_sizes=[256, 512, 1024, 2048],
                                         embedding_size=64, out_features=STAGES)
    config = transformers.Mask2FormerConfig(backbone_config=backbone, num_labels=133)
    with torch.device("meta"):
        hf = transformers.Mask2FormerForUniversalSegmentation(config)
        ours = m2f.mask2former(133, paper=True)

    def count(*modules):
        return sum(p.numel() for m in modules for p in m.parameters())

    hf_pixel = count(hf.model.pixel_level_module.decoder)
    hf_decoder = count(hf.model.transformer_module, hf.class_predictor)
    print(f"pixel decoder {hf_pixel:,}, transformer decoder {hf_decoder:,}")
    assert count(ours.pixel_decoder) == hf_pixel
    assert count(ours.decoder) == hf_decoder
    assert count(ours.backbone) == count(hf.model.pixel_level_module.encoder)
    assert next(ours.parameters()).is_meta


@pytest.mark.parametrize("shape", [(1, 33, 47), (2, 97, 131), (1, 32, 32)])
def test_any_size_and_batch_one(shape):
    model = tiny().eval()
    B, H, W = shape
    with torch.no_grad():
        out = model(torch.randn(B, 3, H, W))
    h, w = math.ceil(H / 4), math.ceil(W / 4)
    assert out["class_logits"].shape == (B, 6, 4) and out["mask_logits"].shape == (B, 6, h, w)
    assert "aux_outputs" not in out and torch.isfinite(out["mask_logits"]).all()
    if (B, H, W) == (1, 32, 32):  # a 1 x 1 res5 of one image: BatchNorm cannot train on it
        return
    model.train()
    out = model(torch.randn(B, 3, H, W))
    assert len(out["aux_outputs"]) == 3                              # one per layer before last
    assert all(a["mask_logits"].shape == (B, 6, h, w) for a in out["aux_outputs"])


@pytest.mark.parametrize("images, match", [
    (torch.randn(1, 3, 31, 64), "at least 32"), (torch.randn(1, 1, 64, 64), "3 channels"),
    (torch.zeros(1, 3, 64, 64, dtype=torch.long), "floating-point"),
    (torch.randn(3, 64, 64), r"\[B, C, H, W\]"), (torch.randn(1, 3, 64, 64).double(), "double"),
])
def test_bad_images(images, match):
    with pytest.raises(ValueError, match=match):
        tiny().eval()(images)


def test_masked_attention_is_zero_outside_the_previous_mask():
    model = tiny().eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96), return_attention=True)
    masks = [a["mask_logits"] for a in out["aux_outputs"]]   # the mask each layer attended by
    partial = 0
    for layer, (weights, previous) in enumerate(zip(out["attention"], masks)):
        h, w = weights.shape[-2:]
        assert (h, w) == [(2, 3), (4, 6), (8, 12)][layer % 3]    # 1/32, 1/16, 1/8 round robin
        inside = F.interpolate(previous, size=(h, w), mode="bilinear",
                               align_corners=False).sigmoid() >= 0.5          # [B, Q, h, w]
        empty = ~inside.flatten(2).any(-1)                                    # [B, Q]
        allowed = (inside | empty[..., None, None])[:, None]                  # every head
        assert (weights[~allowed.expand_as(weights)] == 0).all()
        assert (weights[allowed.expand_as(weights)] > 0).all()
        torch.testing.assert_close(weights.sum((-2, -1)), torch.ones(weights.shape[:3]))
        partial += int((inside.flatten(2).any(-1) & ~inside.flatten(2).all(-1)).sum())
    assert partial > 0  # some query really had its attention restricted


def test_one_training_step_lowers_the_loss():
    model = tiny(num_classes=3).train()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    target = torch.zeros(2, 64, 64, dtype=torch.long)
    target[:, 16:48, 8:40] = 1
    target[1, :20, 40:] = 2
    target[0, :4] = 255                                               # ignored pixels

    def loss():
        torch.manual_seed(1)                                          # the same sampled points
        losses = model(images, target)
        assert set(losses) == {"loss_class", "loss_mask", "loss_dice"}
        return sum(losses.values())

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = loss()
    before.backward()
    optimizer.step()
    with torch.no_grad():  # the same batch, so train-mode BatchNorm sees the same statistics
        after = loss()
    assert torch.isfinite(before) and after < before


def test_inference_for_the_three_tasks():
    model = tiny(num_classes=3, thing_classes=(1, 2)).train()
    images = torch.randn(2, 3, 33, 47)
    scores = model.semantic(images)
    assert model.training and scores.shape == (2, 3, 33, 47) and (scores >= 0).all()
    result = model.segment(images[:1])[0]
    assert result["panoptic"].shape == (33, 47, 2)
    assert set(result["categories"].tolist()) <= {1, 2}


def test_instance_targets():
    model = tiny(num_classes=3, thing_classes=(1, 2)).train()
    masks = torch.zeros(2, 48, 64, dtype=torch.bool)
    masks[0, 4:20, 4:20], masks[1, 24:40, 30:60] = True, True
    semantic = torch.zeros(48, 64, dtype=torch.long)
    semantic[masks[0]], semantic[masks[1]] = 1, 2
    targets = [{"labels": torch.tensor([1, 2]), "masks": masks, "semantic": semantic}]
    losses = model(torch.randn(1, 3, 48, 64), targets)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert model.decoder.query_feat.weight.grad.abs().sum() > 0
    assert model.thing_classes == (1, 2) and model.stuff_classes == (0,)


@pytest.mark.parametrize("targets, match", [
    (torch.zeros(1, 32, 32, dtype=torch.long), "but the images are"),
    (torch.full((1, 64, 64), 7), r"labels must be in \[0, 2\]"),
    ([{"labels": torch.tensor([1])}], "'masks'"),
    ([{"labels": torch.tensor([1]), "masks": torch.ones(1, 32, 64, dtype=torch.bool)}],
     "must have the image size"),
])
def test_bad_targets(targets, match):
    model = tiny(thing_classes=(1,)).train()
    with pytest.raises(ValueError, match=match):
        model(torch.randn(1, 3, 64, 64), targets)


def test_pixel_decoder_shapes_and_hf_position_embedding():
    dec = MSDeformAttnPixelDecoder([8, 16, 32, 64], conv_dim=32, mask_dim=16, num_heads=4,
                                   num_layers=1, dim_feedforward=32)
    feats = [torch.randn(1, c, h, w) for c, (h, w) in
             zip([8, 16, 32, 64], [(25, 33), (13, 17), (7, 9), (4, 5)])]
    mask_features, levels = dec(feats)
    assert mask_features.shape == (1, 16, 25, 33)
    assert [tuple(f.shape[-2:]) for f in levels] == [(4, 5), (7, 9), (13, 17)]
    # the argument names changed across transformers versions (4.57: num_pos_feats)
    init = inspect.signature(hf_m2f.Mask2FormerSinePositionEmbedding).parameters
    width = "num_position_features" if "num_position_features" in init else "num_pos_feats"
    theirs = hf_m2f.Mask2FormerSinePositionEmbedding(**{width: 16}, normalize=True)
    if "shape" in inspect.signature(theirs.forward).parameters:
        pos = theirs(torch.Size([1, 32, 7, 9]), "cpu", torch.float32)
    else:  # older: forward(x)
        pos = theirs(torch.zeros(1, 32, 7, 9))
    torch.testing.assert_close(sine_position_embedding(7, 9, 32)[None], pos)
    ref = encoder_reference_points([(2, 4), (1, 2)])
    assert ref.shape == (10, 2, 2)
    torch.testing.assert_close(ref[5, 1], torch.tensor([1.5 / 4, 1.5 / 2]))   # row 1, col 1
    with pytest.raises(ValueError, match="multiple of 32"):
        MSDeformAttnPixelDecoder([8, 16, 32, 64], conv_dim=48)


@pytest.mark.parametrize("overrides, match", [
    (dict(pixel_dim=96 + 16), "multiple of 32"), (dict(pixel_dim=32), "at least 64"),
    (dict(hidden_dim=30), "divisible"),
    (dict(depth=20), "depth"), (dict(num_queries=0), "num_queries"),
    (dict(thing_classes=(3,)), "below num_classes"), (dict(hiden_dim=32), "unknown"),
])
def test_bad_configs(overrides, match):
    with pytest.raises(ValueError, match=match):
        tiny(**overrides)


@pytest.mark.parametrize("change, match", [
    (dict(pre_norm=True), "pre_norm"), (dict(backbone="swin"), "ResNet backbone"),
    (dict(depths=[1, 1, 1, 1]), "ResNet-18/34/50/101"),
])
def test_from_hf_refuses_what_it_cannot_convert(change, match):
    backbone = transformers.SwinConfig(out_features=STAGES) if "backbone" in change else None
    config = hf_config(pre_norm=change.get("pre_norm", False), backbone=backbone)
    if "depths" in change:
        config.backbone_config.depths = change["depths"]
    with pytest.raises(ValueError, match=match):
        m2f.from_hf(types.SimpleNamespace(config=config))
