"""DeepLabV3 / V3+: reference parameter counts, ASPP rates, batch-1 training, sizes, receptive
fields.

Reference counts (21 classes):
- torchvision ``DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1.meta["num_params"]`` is
  42,004,074 and ResNet-101's 60,996,202; both include the auxiliary ``FCNHead(1024, 21)`` on
  layer3 (torchvision/models/segmentation/fcn.py): 3x3 conv 1024->256 without bias
  (2,359,296) + BN (512) + 1x1 conv 256->21 with bias (5,397) = 2,365,205, which we omit.
- DeepLabV3+ ResNet-101: jfzhang95/pytorch-deeplab-xception (commit 9135e10),
  ``DeepLab(backbone="resnet", output_stride=16, num_classes=21)`` has 59,344,309 parameters
  (backbone 42,500,160, ASPP 15,535,104, decoder 1,309,045) -- the paper's decoder: 48-channel
  projection and two 3x3 convs of 256.
- DeepLabV3+ ResNet-50: VainF/DeepLabV3Plus-Pytorch (commit 4e1087d) ``deeplabv3plus_resnet50``
  has 39,761,845 with ONE 3x3 conv after the concatenation; the paper's second 3x3 conv-BN of
  256 channels adds 256*256*9 + 2*256 = 590,336.
"""

import itertools

import numpy as np
import pytest
import torch
import torch.nn as nn

from segcourse.models import build, list_models
from segcourse.models.deeplab import (
    ASPP,
    PAPER,
    SMALL,
    DeepLabV3Plus,
    PoolingBatchNorm2d,
    atrous_rates,
)
from segcourse.viz import receptive_field_extent, receptive_field_map
from segcourse.widgets import dilation_explorer

AUX_FCN_HEAD = 1024 * 256 * 9 + 2 * 256 + 256 * 21 + 21


def n_params(module):
    return sum(p.numel() for p in module.parameters())


# --- parameter counts against references --------------------------------------------------------

@pytest.mark.parametrize("depth, torchvision_with_aux", [(50, 42_004_074), (101, 60_996_202)])
def test_deeplabv3_matches_torchvision_without_aux(depth, torchvision_with_aux):
    assert AUX_FCN_HEAD == 2_365_205
    model = build("deeplabv3", 21, paper=True, depth=depth, output_stride=8)
    assert n_params(model) == torchvision_with_aux - AUX_FCN_HEAD


def test_deeplabv3plus_resnet101_matches_jfzhang95():
    model = build("deeplabv3plus", 21, paper=True)          # ResNet-101, output stride 16
    assert n_params(model) == 59_344_309
    assert n_params(model.backbone) == 42_500_160
    assert n_params(model.aspp) == 15_535_104
    assert n_params(model.decoder) == 1_309_045


def test_deeplabv3plus_resnet50_is_vainf_plus_the_second_decoder_conv():
    model = build("deeplabv3plus", 21, paper=True, depth=50)
    assert n_params(model) == 39_761_845 + (256 * 256 * 9 + 2 * 256)


def test_deeplabv3_uses_torchvision_names():
    sd = build("deeplabv3", 21, paper=True, depth=50).state_dict()
    # torchvision deeplabv3_resnet50(num_classes=21, aux_loss=False) has 362 state-dict entries.
    assert len(sd) == 362
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    expected = [f"classifier.0.convs.{i}.0.weight" for i in range(4)]       # 1x1 + 3 atrous
    expected += [f"classifier.0.convs.{i}.1.{b}" for i in range(4) for b in bn]
    expected += ["classifier.0.convs.4.1.weight"]                              # pooling conv
    expected += [f"classifier.0.convs.4.2.{b}" for b in bn]
    expected += ["classifier.0.project.0.weight"] + [f"classifier.0.project.1.{b}" for b in bn]
    expected += ["classifier.1.weight"] + [f"classifier.2.{b}" for b in bn]
    expected += ["classifier.4.weight", "classifier.4.bias"]
    assert sorted(k for k in sd if k.startswith("classifier.")) == sorted(expected)
    assert all(k.startswith(("backbone.", "classifier.")) for k in sd)


# --- ASPP ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("output_stride, rates", [(16, (6, 12, 18)), (8, (12, 24, 36))])
@pytest.mark.parametrize("name", ["deeplabv3", "deeplabv3plus"])
def test_aspp_rates_follow_output_stride(name, output_stride, rates):
    model = build(name, 3, output_stride=output_stride, width=8)
    aspp = model.aspp if name == "deeplabv3plus" else model.classifier[0]
    assert atrous_rates(output_stride) == rates
    convs = [branch[0] for branch in aspp.convs[:4]]
    assert [c.kernel_size for c in convs] == [(1, 1)] + [(3, 3)] * 3
    assert [c.dilation[0] for c in convs[1:]] == list(rates)
    assert [c.padding[0] for c in convs[1:]] == list(rates)
    assert model.backbone.output_stride == output_stride


def test_atrous_rates_reject_other_strides():
    with pytest.raises(ValueError, match="16 or 8"):
        atrous_rates(32)
    with pytest.raises(ValueError, match="16 or 8"):
        build("deeplabv3", 3, output_stride=32)


def test_aspp_branches_by_hand():
    torch.manual_seed(0)
    aspp = ASPP(8, rates=(1, 2, 3), out_channels=4).eval()
    for m in aspp.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 8, 5, 7)

    def bn(m, t):
        mean, var = m.running_mean[:, None, None], m.running_var[:, None, None]
        weight, bias = m.weight[:, None, None], m.bias[:, None, None]
        return (t - mean) / torch.sqrt(var + m.eps) * weight + bias

    with torch.no_grad():
        # image pooling by hand: mean over space -> 1x1 conv -> BN -> ReLU, constant over space
        pool = aspp.convs[4]
        w = pool[1].weight[:, :, 0, 0]                             # (4, 8)
        pooled = torch.relu(bn(pool[2], (x.mean((2, 3)) @ w.T)[..., None, None]))
        torch.testing.assert_close(pool(x), pooled.expand(-1, -1, 5, 7))
        # 1x1 branch by hand
        c0, b0 = aspp.convs[0][0], aspp.convs[0][1]
        one = torch.relu(bn(b0, torch.einsum("oc,bchw->bohw", c0.weight[:, :, 0, 0], x)))
        torch.testing.assert_close(aspp.convs[0](x), one)
        assert aspp(x).shape == (2, 4, 5, 7)


# --- batch size 1 ---------------------------------------------------------------------------------

def test_pooling_batchnorm_equals_batchnorm_for_larger_batches():
    torch.manual_seed(0)
    ours, ref = PoolingBatchNorm2d(6), nn.BatchNorm2d(6)
    x = torch.randn(3, 6, 1, 1)
    torch.testing.assert_close(ours(x), ref(x))
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)


def test_pooling_batchnorm_with_one_value_uses_running_statistics():
    torch.manual_seed(0)
    plain = nn.BatchNorm2d(6).train()
    x = torch.randn(1, 6, 1, 1)
    with pytest.raises(ValueError, match="more than 1 value"):      # what torchvision hits
        plain(x)
    bn = PoolingBatchNorm2d(6)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 2)
    mean, var = bn.running_mean.clone(), bn.running_var.clone()
    out = bn.train()(x)
    expected = (x - mean[:, None, None]) / torch.sqrt(var[:, None, None] + bn.eps) \
        * bn.weight[:, None, None] + bn.bias[:, None, None]
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(bn.running_mean, mean)        # no update from one value
    torch.testing.assert_close(bn.running_var, var)


@pytest.mark.parametrize("name", ["deeplabv3", "deeplabv3plus"])
def test_training_step_with_batch_size_one(name):
    torch.manual_seed(0)
    model = build(name, 4, width=8).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.rand(1, 3, 48, 40), torch.randint(0, 4, (1, 48, 40))
    aspp = model.aspp if name == "deeplabv3plus" else model.classifier[0]
    before = aspp.convs[4][1].weight.detach().clone()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    assert aspp.convs[4][1].weight.grad.abs().sum() > 0     # the pooling branch learns
    opt.step()
    assert not torch.equal(aspp.convs[4][1].weight, before)


# --- shapes, gradients, errors -------------------------------------------------------------------

@pytest.mark.parametrize("name", ["deeplabv3", "deeplabv3plus"])
@pytest.mark.parametrize("output_stride", [16, 8])
@pytest.mark.parametrize("size", [(97, 131), (33, 47), (32, 32)])
def test_logits_at_input_size(name, output_stride, size):
    model = build(name, 5, output_stride=output_stride, width=8).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, *size)).shape == (1, 5, *size)


def test_decoder_runs_at_stride_four_on_layer1():
    model = build("deeplabv3plus", 5, width=8, low_level_channels=12).eval()
    seen = {}
    model.decoder.register_forward_hook(lambda m, args, out: seen.update(
        low=args[1].shape, out=out.shape))
    with torch.no_grad():
        model(torch.rand(2, 3, 97, 131))
    assert seen["low"] == (2, model.backbone.channels["layer1"], 25, 33)   # ceil(97/4), ceil(131/4)
    assert seen["out"] == (2, 5, 25, 33)
    assert model.decoder.project[0].out_channels == 12


@pytest.mark.parametrize("name", ["deeplabv3", "deeplabv3plus"])
def test_gradients_reach_the_first_convolution(name):
    model = build(name, 3, width=8)
    model(torch.rand(2, 3, 33, 47)).logsumexp(1).mean().backward()
    assert model.backbone.conv1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("bad, match", [
    (torch.rand(3, 64, 64), "B, C, H, W"),
    (torch.ones(1, 3, 64, 64, dtype=torch.uint8), "floating-point"),
    (torch.rand(1, 1, 64, 64), "3 channels"),
    (torch.rand(1, 3, 31, 64), "at least 32"),
])
@pytest.mark.parametrize("name", ["deeplabv3", "deeplabv3plus"])
def test_bad_input_raises_value_error(name, bad, match):
    with pytest.raises(ValueError, match=match):
        build(name, 3, width=8)(bad)


def test_registry_defaults_and_paper_switch():
    assert {"deeplabv3", "deeplabv3plus"} <= set(list_models())
    small = build("deeplabv3plus", 5)
    assert small.config == SMALL and small.backbone.depth == 18
    paper = build("deeplabv3plus", 5, paper=True)
    assert paper.config == PAPER and paper.backbone.depth == 101
    assert paper.decoder.project[0].out_channels == 48
    assert isinstance(build("deeplabv3plus", 2, in_channels=1), DeepLabV3Plus)


# --- receptive fields (segcourse.widgets) ---------------------------------------------------------

def _paths_brute_force(dilations, k=3):
    """Enumerate every choice of kernel tap in every layer; count where each path starts."""
    extent = 1 + sum(d * (k - 1) for d in dilations)
    counts = np.zeros((extent, extent))
    c = extent // 2
    taps = range(-(k // 2), k // 2 + 1)
    for choice in itertools.product(itertools.product(taps, taps), repeat=len(dilations)):
        dy = sum(d * t[0] for d, t in zip(dilations, choice))
        dx = sum(d * t[1] for d, t in zip(dilations, choice))
        counts[c + dy, c + dx] += 1
    return counts


def test_receptive_field_of_three_3x3_convs_is_a_dense_7x7():
    rf = receptive_field_map((1, 1, 1))
    assert rf.shape == (7, 7) and bool((rf > 0).all())
    row = np.convolve(np.convolve([1, 1, 1], [1, 1, 1]), [1, 1, 1])     # [1 3 6 7 6 3 1]
    np.testing.assert_array_equal(rf.numpy(), np.outer(row, row))
    assert rf.sum() == 9 ** 3                                              # every path once


def test_repeated_rate_two_grids_the_receptive_field():
    rf = receptive_field_map((2, 2, 2)).numpy()
    assert rf.shape == (13, 13)
    offsets = np.arange(13) - 6
    even = (offsets[:, None] % 2 == 0) & (offsets[None, :] % 2 == 0)
    assert (rf[even] > 0).all() and (rf[~even] == 0).all()               # holes at odd offsets
    assert int((rf > 0).sum()) == 49                                       # 7 x 7 of 169


@pytest.mark.parametrize("dilations", [(1, 2, 4), (1, 3, 2), (2, 3), (1, 2, 5)])
def test_receptive_field_map_equals_path_enumeration(dilations):
    np.testing.assert_array_equal(receptive_field_map(dilations).numpy(),
                                  _paths_brute_force(dilations))


def test_mixed_rates_close_the_holes():
    assert bool((receptive_field_map((1, 2, 4)) > 0).all())                # 15 x 15, dense
    assert receptive_field_extent((1, 2, 4)) == 15


def test_receptive_field_map_on_a_larger_canvas_is_centred():
    small, big = receptive_field_map((1, 2)), receptive_field_map((1, 2), size=11)
    assert big.shape == (11, 11)
    torch.testing.assert_close(big[2:9, 2:9], small)
    assert big.sum() == small.sum()


@pytest.mark.parametrize("dilations, size", [((), None), ((0, 1), None), ((1.5,), None),
                                             ((2, 2), 7), ((1,), 4)])
def test_receptive_field_map_rejects_bad_arguments(dilations, size):
    with pytest.raises(ValueError):
        receptive_field_map(dilations, size)


def test_dilation_explorer_builds_one_slider_per_layer():
    box = dilation_explorer(num_layers=4, max_dilation=5)
    sliders = [w for row in box.children[:-1] for w in row.children]
    assert len(sliders) == 4 and all(s.max == 5 for s in sliders)
    sliders[0].value = 3                                                   # redraws without error
