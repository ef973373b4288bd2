"""FCN: bilinear deconvolution, crop alignment, paper parameter counts, VGG16 weight loading."""

from collections import OrderedDict
from dataclasses import replace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from segcourse.models import build
from segcourse.models.fcn import (
    FCN,
    SMALL,
    FCNConfig,
    VGG16Features,
    bilinear_kernel,
    bilinear_upsampling,
    crop_offsets,
    load_vgg16_weights,
)

# VGG16's geometry (first_pad=100, 7 x 7 fc6) with 1/32 of its channels: the same map sizes and
# crops as the paper network, at a cost a unit test can afford.
THIN_PAPER = FCNConfig(widths=(2, 4, 8, 16, 16), fc_channels=8)


# --- bilinear upsampling -----------------------------------------------------------------------

def test_bilinear_kernel_by_hand():
    # surgery.upsample_filt(4): factor 2, centre 1.5 -> 1-D tent [1, 3, 3, 1] / 4.
    tent = torch.tensor([0.25, 0.75, 0.75, 0.25])
    torch.testing.assert_close(bilinear_kernel(4), tent[:, None] * tent[None, :])
    # odd size 3: factor 2, centre 1 -> [0.5, 1, 0.5]
    tent3 = torch.tensor([0.5, 1.0, 0.5])
    torch.testing.assert_close(bilinear_kernel(3), tent3[:, None] * tent3[None, :])


@pytest.mark.parametrize("factor", [2, 4, 8, 32])
def test_bilinear_deconvolution_equals_interpolation_in_the_interior(factor):
    torch.manual_seed(0)
    C, h, w = 3, 6, 5
    x = torch.randn(1, C, h, w)
    up = bilinear_upsampling(C, factor)
    y = up(x)
    assert y.shape[-2:] == ((h - 1) * factor + 2 * factor, (w - 1) * factor + 2 * factor)
    # Output j of the transposed conv sits over input (j - f + 1/2) / f; interpolation's output
    # o over (o + 1/2) / f - 1/2: they coincide for j = o + f / 2.
    y = y[..., factor // 2:factor // 2 + h * factor, factor // 2:factor // 2 + w * factor]
    reference = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    # Interpolation clamps at the borders where the transposed conv sees zeros: compare inside.
    inner = (slice(None), slice(None), slice(factor, -factor), slice(factor, -factor))
    torch.testing.assert_close(y[inner], reference[inner], rtol=1e-5, atol=1e-5)


def test_bilinear_deconvolution_is_per_channel_and_fixed():
    up = bilinear_upsampling(4, 2)
    off_diagonal = up.weight.clone()
    off_diagonal[range(4), range(4)] = 0
    assert off_diagonal.abs().sum() == 0
    assert not up.weight.requires_grad and up.bias is None
    assert bilinear_upsampling(4, 2, learnable=True).weight.requires_grad


# --- alignment ---------------------------------------------------------------------------------

def test_crop_offsets_match_the_reference_prototxts():
    # shelhamer/fcn.berkeleyvision.org, crop layers of voc-fcn8s/train.prototxt (score_pool4c
    # offset 5, score_pool3c offset 9, score offset 31), voc-fcn16s (score 27), voc-fcn32s (19).
    assert crop_offsets(100, 7) == {"pool4": 5, "pool3": 9, "out32": 19, "out16": 27, "out8": 31}


def test_crop_offsets_reject_impossible_geometry():
    with pytest.raises(ValueError, match="offset"):
        crop_offsets(first_pad=1, fc6_kernel=7)


def _coordinate_probe(stride: int, config: FCNConfig,
                      size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute-force check of the alignment, independent of :func:`crop_offsets`' derivation.

    Turn the FCN into a network of symmetric averaging filters (3 x 3 means, 2 x 2 average
    pooling, a k x k mean for fc6, identity 1 x 1 layers and skips) that carries three channels:
    the x coordinate, the y coordinate and 1. Each output pixel then holds the weighted mean of the
    coordinates in its receptive field, divided by the weight: the field's centre. If every crop
    is right, away from the borders that centre is the output pixel itself.
    """
    model = FCN(3, stride=stride, config=config).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d) and not isinstance(m, nn.ConvTranspose2d):
                m.weight.zero_()
                k = m.weight.shape[-1]
                for c in range(3):
                    m.weight[c, c] = 1.0 / (k * k)
                m.bias.zero_()
    for i, layer in enumerate(model.features):
        if isinstance(layer, nn.MaxPool2d):
            model.features[i] = nn.AvgPool2d(2, stride=2, ceil_mode=True)
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float64),
                            torch.arange(size, dtype=torch.float64), indexing="ij")
    probe = torch.stack([xs, ys, torch.ones_like(xs)])[None]
    out = model.double()(probe)[0]
    return out[0] / out[2], out[1] / out[2]


@pytest.mark.parametrize("stride", [32, 16, 8])
@pytest.mark.parametrize("config", [
    FCNConfig(widths=(3,) * 5, fc_channels=3),
    replace(SMALL, widths=(3,) * 5, fc_channels=3, batch_norm=False)],
                         ids=["paper-geometry", "small-geometry"])
def test_every_output_pixel_is_centred_on_itself(stride, config):
    size = 560  # the receptive fields (< 480 px across) of the centre pixels lie inside
    cx, cy = _coordinate_probe(stride, config, size)
    centre = slice(size // 2 - 8, size // 2 + 8)
    xs = torch.arange(size, dtype=torch.float64)
    torch.testing.assert_close(cx[centre, centre], xs[centre].expand(16, 16), rtol=0, atol=1e-6)
    torch.testing.assert_close(cy[centre, centre], xs[centre, None].expand(16, 16),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("config", [
    THIN_PAPER, replace(SMALL, widths=(2, 4, 8, 16, 16), fc_channels=8)],
                         ids=["paper-geometry", "small-geometry"])
def test_fcn8s_fits_every_size_modulo_32(config):
    # Map sizes repeat with period 32 in H; 32..96 covers every residue plus the smallest sizes.
    model = FCN(2, stride=8, config=config).eval()
    with torch.no_grad():
        for size in range(32, 97):
            assert model(torch.zeros(1, 3, size, 33)).shape == (1, 2, size, 33)


@pytest.mark.parametrize("stride", [32, 16, 8])
def test_200x200_works(stride):
    # The naive FCN-8s (same-padded, 2x deconvs) crashed here: pool4 is 13 x 13 but the
    # upsampled pool5 scores are 14 x 14.
    for config in (THIN_PAPER, SMALL):
        out = FCN(4, stride=stride, config=config).eval()(torch.rand(1, 3, 200, 200))
        assert out.shape == (1, 4, 200, 200) and torch.isfinite(out).all()


def test_skips_start_at_zero_so_fcn8s_starts_from_the_coarse_prediction():
    model = FCN(3, stride=8, config=SMALL).eval()
    for layer in (model.score_pool4, model.score_pool3):
        assert layer.weight.abs().sum() == 0 and layer.bias.abs().sum() == 0
    x = torch.rand(2, 3, 64, 64)
    coarse = model.upscore(model.upscore_pool4(model.upscore2(
        model.score_fr(model.classifier(model.features(x)["pool5"])))))
    o = model.offsets["out8"]
    torch.testing.assert_close(model(x), coarse[..., o:o + 64, o:o + 64])


def test_at_once_skip_scales_multiply_the_pool_features():
    torch.manual_seed(0)
    plain = FCN(3, stride=8, config=SMALL).eval()
    for layer in (plain.score_pool4, plain.score_pool3):
        nn.init.normal_(layer.weight)
    scaled = FCN(3, stride=8, config=replace(SMALL, skip_scales=(0.01, 1e-4))).eval()
    scaled.load_state_dict(plain.state_dict())
    with torch.no_grad():  # scaling the input of a 1 x 1 conv = scaling its weight
        plain.score_pool4.weight *= 0.01
        plain.score_pool3.weight *= 1e-4
    x = torch.rand(1, 3, 50, 70)
    torch.testing.assert_close(scaled(x), plain(x))


# --- published sizes -----------------------------------------------------------------------------

def _conv(c_in, c_out, k, bias=True):
    return c_in * c_out * k * k + (c_out if bias else 0)


def test_paper_fcn8s_parameter_count_matches_the_caffe_model():
    # Layer shapes of shelhamer/fcn.berkeleyvision.org voc-fcn8s/train.prototxt (the published
    # fcn8s-heavy-pascal.caffemodel), 21 classes: VGG16's 13 3x3 convs, fc6 7x7 4096, fc7 1x1
    # 4096, score_fr / score_pool4 / score_pool3 1x1 21, deconvs 4x4, 4x4, 16x16 without bias.
    vgg = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
           (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
    expected = (sum(_conv(a, b, 3) for a, b in vgg) + _conv(512, 4096, 7) + _conv(4096, 4096, 1)
                + _conv(4096, 21, 1) + _conv(512, 21, 1) + _conv(256, 21, 1)
                + _conv(21, 21, 4, False) * 2 + _conv(21, 21, 16, False))
    assert expected == 134_489_759
    with torch.device("meta"):  # shapes only: no 540 MB allocation
        model = build("fcn8s", num_classes=21, paper=True)
    assert sum(p.numel() for p in model.parameters()) == expected
    # The fixed bilinear deconvolutions are stored but not trained (lr_mult: 0 in the prototxt).
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == expected - 2 * 7056 - 112_896
    # VGG16's convolutions alone: 14,714,688 (torchvision's vgg16 features).
    assert sum(p.numel() for p in model.features.parameters()) == 14_714_688


def test_paper_fcn32s_parameter_count():
    # voc-fcn32s/train.prototxt: same trunk, score_fr, one 64x64 stride-32 deconv without bias.
    # Without the fixed deconv this is the "134M" of Table 1 in the paper (FCN-VGG16).
    with torch.device("meta"):
        model = build("fcn32s", num_classes=21, paper=True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 14_714_688 + _conv(512, 4096, 7) + _conv(4096, 4096, 1) + _conv(4096, 21, 1)
    assert round(trainable / 1e6) == 134
    assert sum(p.numel() for p in model.parameters()) == trainable + 21 * 21 * 64 * 64


# --- ImageNet weights ----------------------------------------------------------------------------

def _torchvision_style_vgg16(widths, fc, batch_norm):
    """torchvision's VGG16 layout, written out independently: features / avgpool / classifier."""
    layers, c_in = [], 3
    for width, n in zip(widths, (2, 2, 3, 3, 3)):
        for _ in range(n):
            layers += [nn.Conv2d(c_in, width, 3, padding=1)]
            layers += [nn.BatchNorm2d(width)] if batch_norm else []
            layers += [nn.ReLU(inplace=True)]
            c_in = width
        layers.append(nn.MaxPool2d(2, 2))
    return nn.Sequential(OrderedDict(
        features=nn.Sequential(*layers), avgpool=nn.AdaptiveAvgPool2d(7), flatten=nn.Flatten(),
        classifier=nn.Sequential(nn.Linear(c_in * 49, fc), nn.ReLU(True), nn.Dropout(),
                                 nn.Linear(fc, fc), nn.ReLU(True), nn.Dropout(),
                                 nn.Linear(fc, 1000))))


@pytest.mark.parametrize("batch_norm", [False, True], ids=["vgg16", "vgg16_bn"])
def test_vgg16_weights_load_and_fc_layers_become_convolutions(batch_norm):
    torch.manual_seed(0)
    widths, fc = (4, 8, 8, 16, 16), 32
    vgg = _torchvision_style_vgg16(widths, fc, batch_norm).eval()
    for m in vgg.modules():  # non-trivial running statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    state = {k.removeprefix("flatten."): v for k, v in vgg.state_dict().items()}
    config = FCNConfig(widths=widths, fc_channels=fc, batch_norm=batch_norm)
    model = load_vgg16_weights(FCN(21, stride=8, config=config), state).eval()

    # 58 + 2 * 99 = 256: VGG on the input padded by 99 (conv1_1's extra padding) pools evenly,
    # so floor (torchvision) and ceil (Caffe) pooling agree and every tap must match exactly.
    x = torch.rand(2, 3, 58, 58)
    ours = model.features(x)
    theirs = vgg.features(F.pad(x, (99,) * 4))
    torch.testing.assert_close(ours["pool5"], theirs)  # 8 x 8
    # fc6 as a 7 x 7 conv over pool5 = the Linear layer on each flattened 7 x 7 window.
    conv_out = model.classifier(ours["pool5"])  # (2, fc, 2, 2)
    for i, j in [(0, 0), (1, 1), (0, 1)]:
        window = theirs[:, :, i:i + 7, j:j + 7]
        linear_out = vgg.classifier[:5](vgg.flatten(window))
        torch.testing.assert_close(conv_out[:, :, i, j], linear_out)


def test_vgg16_weights_of_the_wrong_kind_are_refused():
    vgg = _torchvision_style_vgg16((4, 8, 8, 16, 16), 32, batch_norm=True)
    state = {k.removeprefix("flatten."): v for k, v in vgg.state_dict().items()}
    plain = FCN(21, config=FCNConfig(widths=(4, 8, 8, 16, 16), fc_channels=32))
    with pytest.raises(ValueError, match="batch_norm"):
        load_vgg16_weights(plain, state)
    wider = FCN(21, config=FCNConfig(widths=(4, 8, 8, 16, 32), fc_channels=32, batch_norm=True))
    with pytest.raises(ValueError, match="shape"):
        load_vgg16_weights(wider, state)


def test_backbone_layout_matches_torchvision_indices():
    # torchvision vgg16.features: pools at 4, 9, 16, 23, 30 (vgg16_bn: 6, 13, 23, 33, 43).
    plain, bn = VGG16Features(), VGG16Features(batch_norm=True)
    assert [i for i, m in enumerate(plain) if isinstance(m, nn.MaxPool2d)] == [4, 9, 16, 23, 30]
    assert [i for i, m in enumerate(bn) if isinstance(m, nn.MaxPool2d)] == [6, 13, 23, 33, 43]
    assert plain[0].padding == (100, 100) and plain[2].padding == (1, 1)
