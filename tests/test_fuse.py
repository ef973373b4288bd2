"""segcourse.fuse: BatchNorm folded into the conv before it computes the same function."""

import copy

import pytest
import torch
import torch.nn as nn

from segcourse import fuse, models
from segcourse.fuse import FoldReport, batchnorm_layers, fold_batchnorm, fold_conv_bn
from segcourse.models.mask_rcnn import mask_rcnn
from segcourse.ops.misc import FrozenBatchNorm2d


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Running statistics and affine far from the identity, so that a missed or wrong fold
    shows (a fresh BatchNorm in eval is x / sqrt(1 + eps), nearly nothing)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
                n = m.num_features
                m.running_mean.copy_(0.3 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=g))
                if m.weight is not None:
                    m.weight.copy_(0.5 + torch.rand(n, generator=g))
                    m.bias.copy_(0.3 * torch.randn(n, generator=g))
    return model


def relative_difference(expected, actual) -> float:
    """max |actual - expected| / max |expected| per tensor, over dicts / lists / tuples."""
    if isinstance(expected, dict):
        assert expected.keys() == actual.keys()
        return max(relative_difference(expected[k], actual[k]) for k in expected)
    if isinstance(expected, (list, tuple)):
        assert len(expected) == len(actual)
        return max(relative_difference(e, a) for e, a in zip(expected, actual))
    assert expected.shape == actual.shape
    return float((actual - expected).abs().max() / expected.abs().max())


# --- fold_conv_bn ------------------------------------------------------------------------------

def test_fold_conv_bn_by_hand():
    # conv: y = 2 x + 1; BN (eps 1): s = 4 / sqrt(3 + 1) = 2, so BN(y) = 2 (y - 3) + 5 = 4 x + 1
    conv = nn.Conv2d(1, 1, 1)
    bn = nn.BatchNorm2d(1, eps=1.0).eval()
    with torch.no_grad():
        conv.weight.fill_(2.0), conv.bias.fill_(1.0)
        bn.running_mean.fill_(3.0), bn.running_var.fill_(3.0)
        bn.weight.fill_(4.0), bn.bias.fill_(5.0)
    fused = fold_conv_bn(conv, bn)
    assert fused.weight.item() == 4.0 and fused.bias.item() == 1.0
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    assert torch.equal(fused(x), torch.tensor([[[[5.0, 9.0], [13.0, 17.0]]]]))
    assert conv.weight.item() == 2.0 and conv.bias.item() == 1.0  # inputs untouched


def _check(conv: nn.Module, bn: nn.Module, x: torch.Tensor) -> None:
    randomise_batchnorm(bn)
    bn.eval()
    with torch.no_grad():
        expected = bn(conv(x))
        actual = fold_conv_bn(conv, bn)(x)
    assert actual.shape == expected.shape
    assert relative_difference(expected, actual) < 1e-6


@pytest.mark.parametrize("kwargs", [
    dict(groups=1, bias=True),
    dict(groups=2, dilation=2, padding=2, bias=False),
    dict(groups=6, stride=2, padding=1, bias=False),                  # depthwise
    dict(groups=3, padding=1, padding_mode="reflect", bias=True),
    dict(groups=1, padding=1, padding_mode="circular", stride=2, bias=False),
    dict(groups=2, padding=1, padding_mode="replicate", dilation=1, bias=True),
])
def test_fold_conv_bn_matches_conv_then_bn(kwargs):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 12, 3, **kwargs)
    _check(conv, nn.BatchNorm2d(12), torch.randn(2, 6, 11, 13))


@pytest.mark.parametrize("groups, bias", [(1, True), (2, False), (4, True)])
def test_fold_conv_transpose_bn(groups, bias):
    torch.manual_seed(1)
    conv = nn.ConvTranspose2d(8, 12, 3, stride=2, padding=1, output_padding=1, groups=groups,
                              bias=bias)
    _check(conv, nn.BatchNorm2d(12), torch.randn(2, 8, 5, 7))


def test_fold_conv_bn_without_affine_and_frozen():
    torch.manual_seed(2)
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=False)
    x = torch.randn(2, 3, 9, 9)
    plain = nn.BatchNorm2d(5, affine=False)
    _check(conv, plain, x)
    assert fold_conv_bn(conv, plain).bias is not None
    frozen = FrozenBatchNorm2d(5, eps=1e-3)  # a non-default eps must be the one used
    _check(conv, frozen, x)
    frozen.train()  # frozen: the same map in training mode, so it folds there too
    with torch.no_grad():
        assert relative_difference(frozen(conv(x)), fold_conv_bn(conv, frozen)(x)) < 1e-6


def test_fold_conv_bn_refusals():
    conv = nn.Conv2d(3, 4, 3)
    with pytest.raises(ValueError, match="training mode"):
        fold_conv_bn(conv, nn.BatchNorm2d(4).train())
    with pytest.raises(ValueError, match="4 output channels"):
        fold_conv_bn(conv, nn.BatchNorm2d(5).eval())
    with pytest.raises(ValueError, match="running statistics"):
        fold_conv_bn(conv, nn.BatchNorm2d(4, track_running_stats=False).eval())
    with pytest.raises(ValueError, match="conv must be"):
        fold_conv_bn(nn.Linear(3, 4), nn.BatchNorm2d(4).eval())
    with pytest.raises(ValueError, match="bn must be"):
        fold_conv_bn(conv, nn.GroupNorm(2, 4))
    with pytest.raises(ValueError, match="parametrisation"):
        fold_conv_bn(nn.utils.parametrizations.weight_norm(nn.Conv2d(3, 4, 3)),
                     nn.BatchNorm2d(4).eval())


# --- fold_batchnorm: which pairs ---------------------------------------------------------------

class Pairs(nn.Module):
    """One foldable pair and one BatchNorm of each kind that must be kept."""

    def __init__(self):
        super().__init__()
        c = 4
        self.conv_a, self.bn_a = nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c)  # foldable
        self.conv_b, self.bn_b = nn.Conv2d(c, c, 1), nn.BatchNorm2d(c)  # + residual of conv_b
        self.conv_c, self.bn_c = nn.Conv2d(c, c, 1), nn.BatchNorm2d(c)  # in-place ReLU between
        self.conv_d, self.bn_d = nn.Conv2d(c, c, 1), nn.BatchNorm2d(c)  # bn_d after an addition
        self.conv_e, self.bn_e = nn.Conv2d(c, c, 1), nn.BatchNorm2d(c)  # bn_e called twice
        self.conv_f = nn.Conv2d(c, c, 1)  # conv_f called twice, each time before its own BN
        self.bn_f1, self.bn_f2 = nn.BatchNorm2d(c), nn.BatchNorm2d(c)
        self.unused = nn.BatchNorm2d(c)
        self.sync = nn.SyncBatchNorm(c)
        self.conv_g = nn.Conv2d(c, c, 1)

    def forward(self, x):
        x = self.bn_a(self.conv_a(x))
        z = self.conv_b(x)
        x = self.bn_b(z) + z
        z = self.conv_c(x)
        x = self.bn_c(torch.relu_(z))
        x = self.bn_d(self.conv_d(x) + 1)
        x = self.bn_e(self.bn_e(self.conv_e(x)))
        x = self.bn_f1(self.conv_f(x)) + self.bn_f2(self.conv_f(x))
        return self.sync(self.conv_g(x))


def test_fold_batchnorm_finds_only_the_safe_pairs():
    torch.manual_seed(3)
    model = randomise_batchnorm(Pairs()).eval()
    x = torch.randn(2, 3, 8, 8)
    folded, report = fold_batchnorm(model, x, report=True)
    assert isinstance(report, FoldReport)
    assert report.pairs == [("conv_a", "bn_a")]
    assert report.total == len(batchnorm_layers(model)) == 9
    assert set(report.kept) == {"bn_b", "bn_c", "bn_d", "bn_e", "bn_f1", "bn_f2", "unused",
                                "sync"}
    assert "used elsewhere" in report.kept["bn_b"]
    assert "in place" in report.kept["bn_c"]
    assert "not the output of a conv" in report.kept["bn_d"]
    assert "called 2 times" in report.kept["bn_e"]
    assert "shared" in report.kept["bn_f1"] and "shared" in report.kept["bn_f2"]
    assert "not called" in report.kept["unused"]
    assert "SyncBatchNorm" in report.kept["sync"]
    assert isinstance(folded.bn_a, nn.Identity) and isinstance(folded.bn_b, nn.BatchNorm2d)
    assert "1 of 9 BatchNorm layers folded" in str(report)
    with torch.no_grad():
        assert relative_difference(model(x), folded(x)) < 1e-6


class Hidden(nn.Module):
    """conv -> BN, and the conv's output also used where the watch cannot see it."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x):
        z = self.conv(x)
        with torch._C.DisableTorchFunction():  # invisible to the TorchFunctionMode
            twice = z * 2
        return self.bn2(self.conv2(self.bn(z) + twice))


def test_fold_batchnorm_verification_undoes_a_fold_that_changes_the_output():
    torch.manual_seed(4)
    model = randomise_batchnorm(Hidden()).eval()
    x = torch.randn(1, 3, 6, 6)
    folded, report = fold_batchnorm(model, x, report=True)
    assert report.pairs == [("conv2", "bn2")]  # the other fold was tried, measured and undone
    assert "changed the output" in report.kept["bn"]
    assert isinstance(folded.bn, nn.BatchNorm2d) and isinstance(folded.bn2, nn.Identity)
    with torch.no_grad():
        assert relative_difference(model(x), folded(x)) < 1e-6


def test_fold_batchnorm_bad_arguments():
    with pytest.raises(ValueError, match="model must be"):
        fold_batchnorm(lambda x: x, torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="rtol"):
        fold_batchnorm(nn.Conv2d(3, 3, 1), torch.randn(1, 3, 8, 8), rtol=-1.0)
    with pytest.raises(ValueError, match="forward"):
        fold_batchnorm(nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)),
                       torch.randn(1, 3, 8, 8), forward="features")


# --- fold_batchnorm: every registered model -----------------------------------------------------

# How many BatchNorm layers each registry default has, read off the model code; every one
# directly follows a conv whose output nothing else uses, so all of them must fold.
# U-Net (depth 4): inc + 4 downs + 4 ups = 9 DoubleConvs x 2 ConvBNReLU = 18; Attention U-Net
# adds one 1x1 conv + BN (W) per gate, 4 gates; ResNet-18: stem 1 + 8 BasicBlocks x 2 + 3
# projection shortcuts = 20; DeepLabV3: + ASPP's 4 conv branches, pooling branch and projection
# (6) + the head's 3x3 conv (1); V3+: + the low-level projection and 2 decoder convs; FCN: 13
# VGG16 convs, each with BN in SMALL; Mask2Former: its ResNet-18 (the pixel decoder uses
# GroupNorm); SegFormer: the decoder's fuse; SETR: naive 1, PUP 3 (patch 8: log2 8 steps);
# EoMT: none (LayerNorm only).
BATCHNORMS = {"unet": 18, "attention_unet": 22, "deeplabv3": 27, "deeplabv3plus": 29,
              "fcn32s": 13, "fcn8s": 13, "mask2former": 20, "segformer": 1, "setr_naive": 1,
              "setr_pup": 3, "eomt": 0}


def _size(model: nn.Module) -> int:
    return sum(t.numel() for t in [*model.parameters(), *model.buffers()])


@pytest.mark.parametrize("name", models.list_models(models.CLASSIFIERS))
def test_fold_batchnorm_every_classifier(name):
    torch.manual_seed(0)
    model = randomise_batchnorm(models.build(name, num_classes=3))
    before = copy.deepcopy(model.state_dict())
    folded, report = fold_batchnorm(model, torch.randn(1, 3, 64, 64), report=True)

    assert report.total == len(batchnorm_layers(model)) == BATCHNORMS[name]
    assert len(report.pairs) == BATCHNORMS[name], str(report)
    assert batchnorm_layers(folded) == []
    # the original is untouched: same BatchNorms, same weights, still in training mode
    assert model.training and len(batchnorm_layers(model)) == BATCHNORMS[name]
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not folded.training
    if BATCHNORMS[name]:
        assert _size(folded) < _size(model)

    # the same function at a size and batch the fold never saw (measured: <= 2e-6 relative)
    x = torch.randn(2, 3, 97, 131)
    with torch.no_grad():
        expected, actual = model.eval()(x), folded(x)
    assert relative_difference(expected, actual) < 1e-4


def test_fold_batchnorm_sam_has_nothing_to_fold():
    model = models.build("sam")
    S = model.config.encoder.image_size
    torch.manual_seed(5)
    images = torch.rand(1, 3, S, S)
    points, labels = torch.rand(1, 1, 2, 2) * S, torch.ones(1, 1, 2, dtype=torch.long)
    folded, report = fold_batchnorm(model, (images, points, labels), report=True)
    assert report.total == 0 and report.pairs == []
    assert folded is not model and not folded.training
    with torch.no_grad():
        expected, actual = model.eval()(images, points, labels), folded(images, points, labels)
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[k], actual[k]) for k in expected)


def test_fold_batchnorm_mask_rcnn_frozen_batchnorm():
    # Mask R-CNN's backbone with FrozenBatchNorm2d (torchvision's detection layout); compared on
    # the features, before the detections' thresholds and mask pasting
    torch.manual_seed(6)
    model = randomise_batchnorm(mask_rcnn(num_classes=3, frozen_batchnorm=True))
    frozen = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(frozen) == 20  # its ResNet-18, converted
    folded, report = fold_batchnorm(model, torch.rand(1, 3, 64, 64),
                                    forward=lambda m, x: m.features(x), report=True)
    assert len(report.pairs) == 20 and not batchnorm_layers(folded)
    x = torch.rand(2, 3, 97, 131)
    with torch.no_grad():
        assert relative_difference(model.eval().features(x), folded.features(x)) < 1e-4


def test_folded_model_exports_to_onnx(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from segcourse.export import check_onnx, export_onnx

    torch.manual_seed(7)
    folded = fold_batchnorm(randomise_batchnorm(models.build("unet", num_classes=3)),
                            torch.randn(1, 3, 64, 64))
    export_onnx(folded, tmp_path / "unet.onnx", torch.randn(1, 3, 64, 64))
    assert check_onnx(folded, tmp_path / "unet.onnx", torch.randn(2, 3, 97, 131)) < 1e-4


# --- for_inference: every exact rewrite in one call ---------------------------------------------

def test_for_inference_folds_segformer_decoder_and_batchnorm():
    from segcourse.profiling import gflops
    torch.manual_seed(0)
    net = models.build("segformer", num_classes=3).eval()
    x = torch.randn(1, 3, 64, 96)
    fast, report = fuse.for_inference(net, x, report=True)
    assert fast.decoder.fold and not net.decoder.fold          # the original is untouched
    assert not fuse.batchnorm_layers(fast) and report.total == 1  # the decoder's one BN
    with torch.no_grad():
        expected, got = net(x), fast(x)
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()
    assert report.max_difference <= 1e-5
    # the fold removes FLOPs: the fuse no longer runs at 1/4 resolution on 4 x 256 channels
    assert gflops(fast, (64, 96)) < 0.8 * gflops(net, (64, 96))


def test_for_inference_on_a_cnn_is_fold_batchnorm():
    torch.manual_seed(0)
    net = models.build("unet", num_classes=3).eval()
    x = torch.randn(1, 3, 48, 40)
    fast = fuse.for_inference(net, x)
    assert not fuse.batchnorm_layers(fast) and fuse.batchnorm_layers(net)
    with torch.no_grad():
        assert torch.allclose(fast(x), net(x), atol=1e-5)


def test_for_inference_rejects_bad_model():
    with pytest.raises(ValueError, match="model must be an nn.Module"):
        fuse.for_inference("unet", torch.randn(1, 3, 32, 32))
