"""The contract of every registered model, whichever family registered it.

Parametrised over ``list_models()``: a family that registers a model is tested here without
editing this file, except for one line of :data:`PUBLISHED` (a new model must say what its
paper configuration is checked against). Registry defaults are CPU-sized, so the forward tests
run in seconds per model; the paper configurations are built on the meta device (shapes only,
no memory).
"""

import dataclasses
import sys

import pytest
import torch

from segcourse.models import CLASSIFIERS, KINDS, build, list_models

NUM_CLASSES = 3
MODELS = list_models(CLASSIFIERS)                      # built with num_classes
PROMPTABLE = list_models("promptable")                  # SAM: {"mask_logits", "iou_scores"}
PER_PIXEL = list_models("per_pixel")                    # logits [B, K, H, W]
MASK_CLASSIFIERS = list_models("mask_classification")   # {"class_logits", "mask_logits"}


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv(c_in: int, c_out: int, k: int = 1, bias: bool = True) -> int:
    return c_in * c_out * k * k + (c_out if bias else 0)


# --- published parameter counts of the paper configurations -----------------------------------
#
# Each is a number taken from the reference code or derived by hand from the published layer
# table -- never this package's own output.

# ozan-oktay/Attention-Gated-Networks @ eee4881, models/layers/grid_attention_layer.py,
# GridAttentionBlock2D(in_channels=F_x, gating_channels=F_g, mode="concatenation",
# sub_sample_factor=2), inter_channels F_x // 2 (its default): theta 2x2 conv without bias, phi
# 1x1 conv, psi 1x1 conv to one channel, W = 1x1 conv + BN. On U-Net's four skips, gated by the
# decoder map one level coarser. Instantiating that file gives 1,050,625 + 263,169 + 66,049 +
# 16,641 for these four gates.
ATTENTION_GATES = sum(conv(f_x, f_x // 2, 2, bias=False) + conv(f_g, f_x // 2) + conv(f_x // 2, 1)
                      + conv(f_x, f_x) + 2 * f_x
                      for f_x, f_g in ((512, 1024), (256, 512), (128, 256), (64, 128)))

# ViT-L/16 on 384 x 384 images (the paper's T-Large encoder), by hand from Dosovitskiy et al.
# Table 1 (D = 1024, 24 layers, MLP 4096): patch embedding, class token, 1 + 24 x 24 position
# embeddings, 24 pre-norm blocks (2 LayerNorms, qkv, projection, 2-layer MLP), final LayerNorm.
# HF transformers' ViTModel(add_pooling_layer=False) with that config has the same 303,690,752
# (checked below when transformers is installed).
D, C = 1024, 256  # ViT-L width; SETR decoder width (mmseg's SETR configs, channels=256)
VIT_L16_384 = (conv(3, D, 16) + D + (1 + 24 * 24) * D
               + 24 * (2 * 2 * D + conv(D, 3 * D) + conv(D, D) + conv(D, 4 * D) + conv(4 * D, D))
               + 2 * D)
# SETR decoders (paper Sec. 3.3; mmseg SETRUPHead): naive = 1x1 conv + BN + ReLU + 1x1 classifier;
# PUP = four (3x3 conv + BN + ReLU, 2x upsampling) + 1x1 classifier. Convs before BN: no bias.
NAIVE_HEAD = conv(D, C, bias=False) + 2 * C + conv(C, 150)
PUP_HEAD = conv(D, C, 3, bias=False) + 3 * conv(C, C, 3, bias=False) + 4 * 2 * C + conv(C, 150)

# name: (num_classes, published count of build(name, num_classes, paper=True), source)
PUBLISHED = {
    "fcn32s": (21, 136_152_917, "wkentaro/pytorch-fcn @ 4b98850 FCN32s(n_class=21), the layers "
               "of shelhamer/fcn.berkeleyvision.org voc-fcn32s (fixed 64x64 deconv included)"),
    "fcn8s": (21, 134_489_759, "wkentaro/pytorch-fcn @ 4b98850 FCN8s(n_class=21) = voc-fcn8s "
              "train.prototxt; tests/test_fcn.py derives it layer by layer"),
    "unet": (2, 31_037_698, "milesial/Pytorch-UNet @ 21d7850 UNet(n_channels=3, n_classes=2); "
             "Ronneberger et al.'s net (no BN, 1 channel) has 31,030,658, see below"),
    "attention_unet": (2, 31_037_698 + ATTENTION_GATES, "milesial's U-Net + 4 gates of "
                       "GridAttentionBlock2D (no canonical 2-D net at these widths)"),
    "deeplabv3": (21, 60_996_202 - 2_365_205, "torchvision DeepLabV3_ResNet101_Weights."
                  "COCO_WITH_VOC_LABELS_V1 num_params minus its auxiliary FCNHead (see "
                  "tests/test_deeplab.py); output stride changes no parameter"),
    "deeplabv3plus": (21, 59_344_309, "jfzhang95/pytorch-deeplab-xception @ 9135e10 "
                      "DeepLab(backbone='resnet', output_stride=16, num_classes=21)"),
    "setr_naive": (150, VIT_L16_384 + NAIVE_HEAD, "ViT-L/16 + naive head, by hand"),
    "setr_pup": (150, VIT_L16_384 + PUP_HEAD, "ViT-L/16 + PUP head, by hand"),
    "segformer": (150, 3_752_694, "HF transformers SegformerForSemanticSegmentation, B0 config, "
                  "150 labels (paper: 3.8 M on ADE20K)"),
    "mask2former": (133, 44_036_998, "HF Mask2FormerForUniversalSegmentation, COCO-panoptic "
                    "defaults (133 labels) on its bottleneck ResNet-50 (ResNetConfig depths "
                    "3, 4, 6, 3); tests/test_mask2former.py builds it (paper: 44 M)"),
    "eomt": (133, 316_695_686, "HF EomtForUniversalSegmentation, EomtConfig defaults = "
             "tue-mps/coco_panoptic_eomt_large_640 (ViT-L/16 at 640, 200 queries, 4 query "
             "blocks, 4 registers); tests/test_eomt.py derives it by hand and builds HF's"),
}


def test_hand_counts_agree_with_the_reference_implementations():
    assert ATTENTION_GATES == 1_050_625 + 263_169 + 66_049 + 16_641
    assert VIT_L16_384 == 303_690_752


def test_every_registered_model_has_a_published_count():
    assert set(PUBLISHED) == set(MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_paper_configuration_has_the_published_parameter_count(name):
    num_classes, expected, source = PUBLISHED[name]
    with torch.device("meta"):  # shapes only: ViT-L or VGG16 cost no memory
        model = build(name, num_classes, paper=True)
    assert count(model) == expected, source


def test_original_unet_differs_from_the_paper_config_by_batchnorm_only():
    # Ronneberger et al. 2015, Fig. 1, by hand: 1 input channel, 2 classes, unpadded 3x3 convs
    # with bias, 2x2 up-convs halving the channels, 1x1 classifier; no BatchNorm.
    w = (64, 128, 256, 512, 1024)
    encoder = conv(1, 64, 3) + conv(64, 64, 3) + sum(
        conv(w[i - 1], w[i], 3) + conv(w[i], w[i], 3) for i in range(1, 5))
    decoder = sum(conv(w[i], w[i - 1], 2) + conv(w[i], w[i - 1], 3) + conv(w[i - 1], w[i - 1], 3)
                  for i in range(1, 5))
    original = encoder + decoder + conv(64, 2)
    assert original == 31_030_658
    # Ours (milesial's layout) trades each 3x3 conv's bias (1 per channel) for BatchNorm (2).
    bn_extra = 2 * sum(w) + 2 * sum(w[:4])
    with torch.device("meta"):
        assert count(build("unet", 2, in_channels=1, paper=True)) == original + bn_extra


@pytest.mark.parametrize("variant, published", [
    ("b0", 3.8), ("b1", 13.7), ("b2", 27.5), ("b3", 47.3), ("b4", 64.1), ("b5", 84.7)])
def test_every_segformer_size_matches_hf_and_the_paper(variant, published):
    # Published: Xie et al. 2021, the comparison on ADE20K (150 classes), parameters in millions
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        ours = build("segformer", 150, paper=True, variant=variant)
        v = ours.config
        hf = transformers.SegformerForSemanticSegmentation(transformers.SegformerConfig(
            hidden_sizes=list(v.hidden_sizes), depths=list(v.depths),
            num_attention_heads=list(v.num_heads), sr_ratios=list(v.sr_ratios),
            decoder_hidden_size=v.decoder_width, num_labels=150))
    assert count(ours) == count(hf)
    assert round(count(ours) / 1e6, 1) == published


def test_setr_encoder_matches_hf_vit_large():
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                    intermediate_size=4096, image_size=384, patch_size=16)
    with torch.device("meta"):
        hf = transformers.ViTModel(config, add_pooling_layer=False)
        ours = build("setr_pup", 150, paper=True)
    assert count(hf) == count(ours.encoder) == VIT_L16_384


# --- one config idiom: SMALL by default, PAPER with paper=True, fields by keyword --------------

# A field of each family's config and a value to set it to (any field would do)
OVERRIDES = {"fcn32s": ("fc_channels", 64), "fcn8s": ("dropout", 0.2),
             "unet": ("base_channels", 8), "attention_unet": ("bilinear", True),
             "deeplabv3": ("depth", 50), "deeplabv3plus": ("low_level_channels", 12),
             "setr_naive": ("depth", 2), "setr_pup": ("decoder_channels", 32),
             "segformer": ("decoder_width", 64), "mask2former": ("num_queries", 8),
             "eomt": ("num_queries", 8)}


def built(base):
    """``base`` as ``build(name, NUM_CLASSES)`` fills it: families whose config holds the class
    and channel counts (the mask classifiers) get the arguments' values there."""
    fields = {f.name for f in dataclasses.fields(base)}
    given = {"num_classes": NUM_CLASSES, "in_channels": 3}
    return dataclasses.replace(base, **{k: v for k, v in given.items() if k in fields})


@pytest.mark.parametrize("name", MODELS)
def test_builders_start_from_small_or_paper_and_override_fields(name):
    field, value = OVERRIDES[name]
    with torch.device("meta"):
        small, paper = build(name, NUM_CLASSES), build(name, NUM_CLASSES, paper=True)
        family = sys.modules[type(small).__module__]
        assert small.config == built(family.SMALL) and paper.config == built(family.PAPER)
        for base, kwargs in ((family.SMALL, {}), (family.PAPER, {"paper": True})):
            changed = build(name, NUM_CLASSES, **kwargs, **{field: value})
            assert changed.config == dataclasses.replace(built(base), **{field: value})
    assert dataclasses.is_dataclass(family.PAPER)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(family.PAPER, field, value)  # frozen: a config is a value, shared safely


@pytest.mark.parametrize("name", MODELS)
def test_unknown_override_raises_value_error_listing_the_fields(name):
    field, _ = OVERRIDES[name]
    for paper in (False, True):
        with pytest.raises(ValueError, match=f"valid fields:.*{field}"):
            build(name, NUM_CLASSES, paper=paper, no_such_field=1)


def test_registering_a_builder_without_the_contract_fails():
    from segcourse.models import register

    with pytest.raises(ValueError, match="paper"):
        register("not-a-contract")(lambda num_classes, in_channels=3: None)


def test_registry_is_populated_and_rejects_unknown_names():
    assert {"fcn32s", "fcn8s", "unet", "attention_unet"} <= set(MODELS)
    with pytest.raises(ValueError, match="unknown model"):
        build("no-such-model", NUM_CLASSES)
    with pytest.raises(ValueError, match="num_classes"):
        build(MODELS[0], 0)
    with pytest.raises(ValueError, match="in_channels"):
        build(MODELS[0], NUM_CLASSES, in_channels=0)


def test_every_model_has_one_kind():
    assert sorted(PER_PIXEL + MASK_CLASSIFIERS) == MODELS
    assert sorted(MODELS + PROMPTABLE) == list_models()
    by_kind = [set(list_models(k)) for k in KINDS]
    assert sum(map(len, by_kind)) == len(set().union(*by_kind)) == len(list_models())
    assert list_models(KINDS) == list_models()
    with pytest.raises(ValueError, match="kind"):
        list_models(())
    with pytest.raises(ValueError, match="kind"):
        list_models("semantic")
    from segcourse.models import register
    with pytest.raises(ValueError, match="kind"):
        register("x", kind="semantic")


@pytest.fixture(scope="module", params=PER_PIXEL)
def model(request):
    torch.manual_seed(0)
    return build(request.param, num_classes=NUM_CLASSES, in_channels=3)


@pytest.mark.parametrize("shape", [(2, 97, 131), (2, 33, 47), (1, 64, 64), (1, 32, 32)],
                         ids=["97x131", "33x47", "batch1-64", "batch1-32"])
def test_logits_have_the_input_size(model, shape):
    batch, h, w = shape
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(batch, 3, h, w))
    assert out.shape == (batch, NUM_CLASSES, h, w)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_backward_reaches_the_first_layer(model):
    model.train()
    model.zero_grad(set_to_none=True)
    x = torch.rand(2, 3, 48, 56)
    target = torch.randint(0, NUM_CLASSES, (2, 48, 56))
    loss = torch.nn.functional.cross_entropy(model(x), target)
    loss.backward()
    first = next(p for p in model.parameters() if p.requires_grad)
    assert first.grad is not None and first.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("bad, message", [
    (torch.rand(3, 64, 64), "shape"),                     # no batch dimension
    (torch.rand(1, 1, 3, 64, 64), "shape"),               # 5-D
    (torch.rand(1, 4, 64, 64), "channels"),               # wrong channel count
    (torch.randint(0, 255, (1, 3, 64, 64)), "floating"),  # integer images
], ids=["rank3", "rank5", "channels", "int-dtype"])
def test_bad_input_raises_value_error(model, bad, message):
    model.eval()
    with pytest.raises(ValueError, match=message):
        model(bad)


def test_eval_mode_is_deterministic(model):
    model.eval()
    x = torch.rand(2, 3, 40, 52)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)


def test_in_channels_is_respected():
    for name in MODELS:
        net = build(name, NUM_CLASSES, in_channels=1).eval()
        with torch.no_grad():
            # per-pixel logits, or a mask classifier's per-pixel scores
            out = net.semantic(torch.rand(1, 1, 40, 40)) if name in MASK_CLASSIFIERS else net(
                torch.rand(1, 1, 40, 40))
            assert out.shape == (1, NUM_CLASSES, 40, 40)


# --- mask classification: a set of (class, mask) pairs, per-pixel scores through semantic() ----

@pytest.fixture(scope="module", params=MASK_CLASSIFIERS)
def set_model(request):
    torch.manual_seed(0)
    return build(request.param, num_classes=NUM_CLASSES, in_channels=3)


@pytest.mark.parametrize("shape", [(2, 97, 131), (1, 33, 47), (1, 32, 32)],
                         ids=["97x131", "batch1-33x47", "batch1-32"])
def test_set_outputs_and_semantic_scores_have_the_input_size(set_model, shape):
    batch, h, w = shape
    set_model.eval()
    with torch.no_grad():
        out = set_model(torch.rand(batch, 3, h, w))
        scores = set_model.semantic(torch.rand(batch, 3, h, w))
    queries = out["class_logits"].shape[1]
    assert out["class_logits"].shape == (batch, queries, NUM_CLASSES + 1)
    assert out["mask_logits"].shape[:2] == (batch, queries)
    assert scores.shape == (batch, NUM_CLASSES, h, w) and torch.isfinite(scores).all()
    assert (scores >= 0).all()


def test_set_model_trains_on_a_semantic_map(set_model):
    set_model.train()
    set_model.zero_grad(set_to_none=True)
    x = torch.rand(2, 3, 48, 56)
    target = torch.randint(0, NUM_CLASSES, (2, 48, 56))
    target[0, :4] = 255                                           # ignored pixels
    if hasattr(set_model, "plan_training"):                       # as fit does (EoMT)
        set_model.plan_training(10)
    losses = set_model(x, target)
    assert set(losses) == {"loss_class", "loss_mask", "loss_dice"}
    sum(losses.values()).backward()
    first = next(p for p in set_model.parameters() if p.requires_grad)
    assert first.grad is not None and first.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in set_model.parameters()
               if p.grad is not None)


@pytest.mark.parametrize("bad, message", [
    (torch.rand(3, 64, 64), "shape"),
    (torch.rand(1, 4, 64, 64), "channels"),
    (torch.randint(0, 255, (1, 3, 64, 64)), "floating"),
], ids=["rank3", "channels", "int-dtype"])
def test_set_model_bad_input_raises_value_error(set_model, bad, message):
    set_model.eval()
    with pytest.raises(ValueError, match=message):
        set_model(bad)


# --- promptable models (SAM): no classes, prompts in, masks and predicted IoUs out --------------

# name: (published count of build(name, paper=True), source)
PUBLISHED_PROMPTABLE = {
    "sam": (93_735_472, "facebookresearch/segment-anything build_sam_vit_b() (the 375 MB "
            "sam_vit_b_01ec64.pth holds exactly these tensors plus the Fourier buffer); HF 5's "
            "SamModel counts 256 more: it makes that Gaussian a parameter"),
}


def test_every_promptable_model_has_a_published_count():
    assert set(PUBLISHED_PROMPTABLE) == set(PROMPTABLE) and PROMPTABLE


@pytest.mark.parametrize("name", PROMPTABLE)
def test_promptable_paper_configuration_has_the_published_count(name):
    expected, source = PUBLISHED_PROMPTABLE[name]
    with torch.device("meta"):
        assert count(build(name, paper=True)) == expected, source


@pytest.mark.parametrize("name", PROMPTABLE)
def test_promptable_builder_starts_from_small_or_paper_and_refuses_classes(name):
    from segcourse.models.sam import sam_config

    with torch.device("meta"):
        assert build(name).config == sam_config("tiny")
        assert build(name, paper=True).config == sam_config("vit_b")
        assert build(name, variant="vit_l").config == sam_config("vit_l")
        assert build(name, mask_in_chans=8).config.mask_in_chans == 8
    with pytest.raises(ValueError, match="no classes"):
        build(name, NUM_CLASSES)
    with pytest.raises(ValueError, match="in_channels must be 3"):
        build(name, in_channels=1)
    with pytest.raises(ValueError, match="valid fields"):
        build(name, no_such_field=1)
    with pytest.raises(ValueError, match="num_classes is required"):
        build(MODELS[0])


@pytest.fixture(scope="module", params=PROMPTABLE)
def promptable(request):
    torch.manual_seed(0)
    return build(request.param).eval()


@pytest.mark.parametrize("shape", [(2, 97, 131), (1, 33, 47), (1, 32, 32)],
                         ids=["97x131", "batch1-33x47", "batch1-32"])
def test_promptable_masks_have_the_input_size(promptable, shape):
    batch, h, w = shape
    points = torch.tensor([[w / 3, h / 2], [w / 2, h / 3]])[:, None].expand(batch, 2, 1, 2)
    boxes = torch.tensor([[1.0, 2.0, w - 3.0, h - 1.0]]).expand(batch, 1, 4)
    for prompts, masks in ((dict(points=points, point_labels=torch.ones(batch, 2, 1).long()), 3),
                           (dict(boxes=boxes), 3)):
        out = promptable.predict(torch.rand(batch, 3, h, w), **prompts)
        P = next(iter(prompts.values())).shape[1]
        assert out["masks"].shape == (batch, P, masks, h, w) and out["masks"].dtype == torch.bool
        assert out["iou_scores"].shape == (batch, P, masks)
