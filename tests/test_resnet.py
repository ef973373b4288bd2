"""Dilated ResNet backbone: published parameter counts, torchvision's layout, exact dilation.

Reference numbers come from torchvision's weight metadata (``num_params`` of
``ResNet{18,34,50,101}_Weights.IMAGENET1K_V1`` in torchvision/models/resnet.py); those models
include the ImageNet classifier ``fc`` (512 or 2048 inputs -> 1000 classes), which ours omits.
"""

import pytest
import torch

from segcourse.models.resnet import IMAGENET_URLS, load_imagenet_weights, resnet

# torchvision num_params (with fc) and fc's in_features (BasicBlock 512, Bottleneck 2048).
TORCHVISION_PARAMS = {18: (11_689_512, 512), 34: (21_797_672, 512),
                      50: (25_557_032, 2048), 101: (44_549_160, 2048)}


def n_params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
@pytest.mark.parametrize("output_stride", [32, 8])
def test_parameter_count_equals_torchvision_without_fc(depth, output_stride):
    published, fc_in = TORCHVISION_PARAMS[depth]
    fc = fc_in * 1000 + 1000                    # nn.Linear(fc_in, 1000): weight + bias
    assert n_params(resnet(depth, output_stride)) == published - fc


@pytest.mark.parametrize("depth, channels", [
    (18, {"layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}),
    (50, {"layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}),
])
def test_channels_attribute_matches_features(depth, channels):
    net = resnet(depth, width=64)
    assert net.channels == channels
    feats = net.eval()(torch.randn(1, 3, 40, 40))
    assert {k: v.shape[1] for k, v in feats.items()} == channels


# 97 x 131 by hand: the 7x7/2 conv (pad 3), the 3x3/2 max-pool (pad 1) and each 3x3/2 conv (pad 1)
# all map n -> ceil(n / 2): 97 -> 49 -> 25 -> 13 -> 7 -> 4 and 131 -> 66 -> 33 -> 17 -> 9 -> 5.
@pytest.mark.parametrize("output_stride, sizes", [
    (32, {"layer1": (25, 33), "layer2": (13, 17), "layer3": (7, 9), "layer4": (4, 5)}),
    (16, {"layer1": (25, 33), "layer2": (13, 17), "layer3": (7, 9), "layer4": (7, 9)}),
    (8, {"layer1": (25, 33), "layer2": (13, 17), "layer3": (13, 17), "layer4": (13, 17)}),
])
@pytest.mark.parametrize("depth", [18, 50])
def test_feature_sizes_follow_output_stride_on_odd_input(depth, output_stride, sizes):
    net = resnet(depth, output_stride, width=8).eval()
    feats = net(torch.randn(1, 3, 97, 131))
    assert {k: tuple(v.shape[-2:]) for k, v in feats.items()} == sizes
    assert net.strides["layer4"] == output_stride


@pytest.mark.parametrize("depth", [18, 34, 50])
def test_dilated_network_computes_the_strided_one_plus_the_points_between(depth):
    """The atrous algorithm: drop a stride, dilate what follows, and every output of the strided
    network is still computed exactly (at every s-th position), with the rest filled in. This
    holds only if the conv that used to stride keeps the previous dilation -- torchvision's rule
    for the bottleneck, timm's `first_dilation` for the basic block."""
    torch.manual_seed(0)
    strided = resnet(depth, 32, width=8)
    for m in strided.modules():     # non-trivial BN statistics, so eval-mode BN is not identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    strided.double().eval()     # float64: deep stacks drift by ~1e-4 in float32 between algorithms
    x = torch.randn(2, 3, 75, 101, dtype=torch.float64)
    with torch.no_grad():
        ref = strided(x)
        for output_stride in (16, 8):
            dilated = resnet(depth, output_stride, width=8).double().eval()
            dilated.load_state_dict(strided.state_dict())      # dilation changes no shape
            out = dilated(x)
            for name, step in (("layer3", 16 // min(16, output_stride)),
                               ("layer4", 32 // output_stride)):
                torch.testing.assert_close(out[name][..., ::step, ::step], ref[name])


def test_dilation_rates_follow_torchvision_rule():
    # ResNet-50 at OS 8: layer3 dilation 2, layer4 dilation 4; the first block of each dilated
    # stage keeps the previous rate in its 3x3 (torchvision's `previous_dilation`).
    net = resnet(50, 8, width=8)
    assert net.layer2[0].conv2.stride == (2, 2)
    assert [b.conv2.dilation[0] for b in net.layer3] == [1, 2, 2, 2, 2, 2]
    assert [b.conv2.dilation[0] for b in net.layer4] == [2, 4, 4]
    assert all(b.conv2.stride == (1, 1) for b in [*net.layer3, *net.layer4])
    # the shortcut still changes the channel count, without a stride
    assert net.layer4[0].downsample[0].stride == (1, 1)


def test_state_dict_uses_torchvision_names():
    sd = resnet(18).state_dict()
    # torchvision's resnet18 has 122 state-dict entries, 2 of them fc.weight and fc.bias.
    assert len(sd) == 122 - 2
    assert not any(k.startswith("fc.") for k in sd)
    assert sd["conv1.weight"].shape == (64, 3, 7, 7)
    assert sd["layer3.0.downsample.0.weight"].shape == (256, 128, 1, 1)
    assert sd["layer3.0.downsample.1.running_var"].shape == (256,)
    assert sd["layer4.1.conv2.weight"].shape == (512, 512, 3, 3)
    # torchvision's resnet50 has 320 entries, fc included
    assert len(resnet(50).state_dict()) == 320 - 2


def test_load_imagenet_weights_is_strict_except_fc(monkeypatch):
    source = resnet(18)
    for p in source.parameters():
        p.data.normal_()
    calls = []

    def fake_download(url, **kwargs):
        calls.append(url)
        state = dict(source.state_dict())
        state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
        return state

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    target = load_imagenet_weights(resnet(18, output_stride=8), 18)
    assert calls == ["https://download.pytorch.org/models/resnet18-f37072fd.pth"]
    torch.testing.assert_close(target.layer4[1].conv2.weight, source.layer4[1].conv2.weight)

    def missing_key(url, **kwargs):
        state = fake_download(url)
        del state["layer1.0.bn1.running_mean"]
        return state

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", missing_key)
    with pytest.raises(RuntimeError, match="Missing key"):
        load_imagenet_weights(resnet(18), 18)


def test_imagenet_urls_are_torchvision_v1_files():
    # File names of IMAGENET1K_V1 in torchvision/models/resnet.py (the hash prefix is checked
    # by torch.hub on download).
    assert {d: u.rsplit("/", 1)[1] for d, u in IMAGENET_URLS.items()} == {
        18: "resnet18-f37072fd.pth", 34: "resnet34-b627a593.pth",
        50: "resnet50-0676ba61.pth", 101: "resnet101-63fe2227.pth"}


def test_load_imagenet_weights_rejects_mismatched_backbones():
    with pytest.raises(ValueError, match="width=64"):
        load_imagenet_weights(resnet(18, width=32), 18)
    with pytest.raises(ValueError, match="does not match"):
        load_imagenet_weights(resnet(18), 50)


def test_gradients_reach_the_stem():
    net = resnet(34, 16, width=8)
    feats = net(torch.randn(2, 3, 33, 47))
    feats["layer4"].square().mean().backward()
    assert net.conv1.weight.grad is not None and net.conv1.weight.grad.abs().sum() > 0


def test_other_input_channels():
    net = resnet(18, 16, in_channels=1, width=8).eval()
    assert net(torch.randn(1, 1, 32, 32))["layer4"].shape == (1, 64, 2, 2)


@pytest.mark.parametrize("bad, match", [
    (torch.randn(3, 32, 32), "B, C, H, W"),
    (torch.ones(1, 3, 32, 32, dtype=torch.long), "floating-point"),
    (torch.randn(1, 4, 32, 32), "3 channels"),
])
def test_bad_input_raises_clear_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        resnet(18, width=8)(bad)


@pytest.mark.parametrize("kwargs, match", [
    (dict(depth=152), "depth"), (dict(output_stride=4), "output_stride"), (dict(width=0), "width"),
])
def test_bad_configuration_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        resnet(**kwargs)


def test_one_image_whose_last_map_is_1x1_is_a_clear_error_in_training():
    """torch's BatchNorm refuses one value per channel ("Expected more than 1 value per channel
    when training"); the backbone says why, naming the input -- for every model built on it."""
    from segcourse.ops import convert_frozen_batchnorm

    net = resnet(18, width=8).train()
    with pytest.raises(ValueError, match=r"input: one 32 x 32 image .* 1/32 map 1 x 1"):
        net(torch.rand(1, 3, 32, 32))
    assert net(torch.rand(1, 3, 32, 40))["layer4"].shape[-2:] == (1, 2)   # two values: fine
    assert net(torch.rand(2, 3, 32, 32))["layer4"].shape[-2:] == (1, 1)   # two images: fine
    assert net(torch.rand(1, 3, 33, 33))["layer4"].shape[-2:] == (2, 2)   # a larger one too
    assert net.eval()(torch.rand(1, 3, 32, 32))["layer4"].shape[-2:] == (1, 1)
    frozen = convert_frozen_batchnorm(resnet(18, width=8)).train()  # nothing to estimate
    assert frozen(torch.rand(1, 3, 32, 32))["layer4"].shape[-2:] == (1, 1)
    assert resnet(18, output_stride=16, width=8).train()(torch.rand(1, 3, 32, 32))[
        "layer4"].shape[-2:] == (2, 2)
