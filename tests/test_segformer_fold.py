"""SegFormer's folded decoder (``decoder.fold = True``): the same logits, far fewer FLOPs.

The reference for the folded path is the published order of operations (``decoder.fused``:
project -> upsample -> concat -> 1x1 fuse + BatchNorm + ReLU at 1/4), which
``tests/test_segformer.py`` checks against HF transformers (there also with folding on).
"""

import copy

import pytest
import torch
import torch.nn as nn

from segcourse.models.segformer import VARIANTS, AllMLPDecoder, SegFormer
from segcourse.profiling import gflops, gflops_by_module

# Whole models with randomised norms give logits of about +-16, where float32 rounding of two
# summation orders differs by ~1e-6 per op (measured: up to 9e-6); the decoder-level test holds
# 1e-5 on logits of order 1 (measured: 3e-7).
MODEL_ATOL = 3e-5


def randomise_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial affine parameters and running statistics: defaults (1, 0, 0, 1) would hide
    a missing scale, shift, mean or variance in the folded weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
            if isinstance(m, nn.Linear):  # non-zero biases (the init zeroes them)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model


def model(fold: bool, **overrides) -> SegFormer:
    torch.manual_seed(0)
    net = randomise_norms(SegFormer(7, **overrides)).eval()
    net.decoder.fold = fold
    return net


def stage_features(decoder: AllMLPDecoder, size, batch: int, seed: int = 1):
    """Random stage maps at 1/4 .. 1/32 of ``size`` (ceil, as the patch embeddings give)."""
    g = torch.Generator().manual_seed(seed)
    H, W = size
    feats = []
    for i, proj in enumerate(decoder.proj):
        s = 4 * 2 ** i
        feats.append(torch.randn(batch, proj.in_features, -(-H // s), -(-W // s), generator=g))
    return feats


@pytest.mark.parametrize("variant", ["b0", "b2"])  # decoder width 256 and 768
@pytest.mark.parametrize("size, batch", [((97, 131), 1), ((33, 47), 1), ((64, 48), 2)])
def test_folded_decoder_equals_the_published_order(variant, size, batch):
    torch.manual_seed(0)
    c = VARIANTS[variant]
    decoder = randomise_norms(AllMLPDecoder(c.hidden_sizes, c.decoder_width, 7)).eval()
    feats = stage_features(decoder, size, batch)
    with torch.no_grad():
        expected = decoder.classifier(decoder.fused(feats))  # the unfolded computation
        decoder.fold = False
        unfolded = decoder(feats)
        decoder.fold = True
        folded = decoder(feats)
        by_pieces = decoder.classifier(decoder.fused_folded(feats))
    assert folded.shape == (batch, 7, -(-size[0] // 4), -(-size[1] // 4))
    torch.testing.assert_close(unfolded, expected, atol=0, rtol=0)
    torch.testing.assert_close(folded, by_pieces, atol=0, rtol=0)
    torch.testing.assert_close(folded, expected, atol=1e-5, rtol=0)
    assert not torch.equal(folded, expected)  # it really is another computation (rounding)


@pytest.mark.parametrize("size", [(97, 131), (33, 47)])
def test_folded_model_gives_the_same_logits_and_uses_the_folded_path(size, monkeypatch):
    unfolded, folded = model(fold=False), model(fold=True)
    x = torch.randn(1, 3, *size)

    def not_this_path(features):
        raise AssertionError("the folded model ran the unfolded decoder")

    monkeypatch.setattr(folded.decoder, "fused", not_this_path)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), unfolded(x), atol=MODEL_ATOL, rtol=0)


def test_folded_weights_follow_parameter_changes_and_loads():
    # M_i and c are recomputed from the current parameters: no cache to go stale
    net = model(fold=True)
    other = randomise_norms(SegFormer(7), seed=3).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = net(x)
        net.load_state_dict(other.state_dict())
        torch.testing.assert_close(net(x), other(x), atol=MODEL_ATOL, rtol=0)
        assert (net(x) - before).abs().max() > 1e-2
        net.decoder.fuse[1].running_mean.add_(1.0)
        net.decoder.fold = False
        expected = net(x)
        net.decoder.fold = True
        torch.testing.assert_close(net(x), expected, atol=MODEL_ATOL, rtol=0)


def test_training_mode_keeps_batch_statistics():
    # In training BatchNorm normalises by the batch, which does not fold: the decoder takes
    # the published order, updates the running statistics, and its output differs from eval.
    net = model(fold=True, dropout=0.0, drop_path=0.0)
    reference = copy.deepcopy(net).train()
    reference.decoder.fold = False
    x = torch.randn(2, 3, 64, 64)
    bn = net.decoder.fuse[1]
    mean = bn.running_mean.clone()
    with torch.no_grad():
        evaluated = net(x)
        trained = net.train()(x)
        expected = reference(x)
    assert not torch.equal(bn.running_mean, mean)  # batch statistics were used and tracked
    torch.testing.assert_close(trained, expected, atol=0, rtol=0)
    assert (trained - evaluated).abs().max() > 1e-2
    # a BatchNorm left in training mode inside an eval decoder still uses batch statistics
    net.eval()
    bn.train()
    with torch.no_grad():
        torch.testing.assert_close(net(x), expected, atol=MODEL_ATOL, rtol=0)


def test_gradients_flow_as_before():
    x = torch.randn(2, 3, 40, 56)
    target = torch.randint(0, 7, (2, 40, 56))
    grads = {}
    for fold in (False, True):
        for training in (True, False):
            net = model(fold=fold, dropout=0.0, drop_path=0.0).train(training)
            nn.functional.cross_entropy(net(x), target).backward()
            grads[fold, training] = {n: p.grad for n, p in net.named_parameters()}
    # training: every parameter gets a gradient, the same with and without fold
    assert [n for n, g in grads[True, True].items() if g is None or not g.abs().sum()] == []
    for n, g in grads[False, True].items():
        torch.testing.assert_close(grads[True, True][n], g, atol=1e-5, rtol=1e-4)
    # eval (fine-tuning with frozen statistics): the folded path differentiates the same
    # function, so the gradients reach the projections, the fuse conv and BN's scale and shift
    for n, g in grads[False, False].items():
        torch.testing.assert_close(grads[True, False][n], g, atol=1e-5, rtol=1e-3)
    assert all(grads[True, False][n].abs().sum() > 0 for n in (
        "decoder.proj.3.weight", "decoder.fuse.0.weight", "decoder.fuse.1.weight"))


def test_folded_b0_flops_by_hand():
    # B0 at 512 x 512, 150 classes: stages at 128^2, 64^2, 32^2, 16^2 with C_i = 32..256, decoder
    # width D = 256. A multiply-add counts 2 (segcourse.profiling); interpolation counts 0.
    C, D, K = (32, 64, 160, 256), 256, 150
    N = [(512 // (4 * 2 ** i)) ** 2 for i in range(4)]
    per_stage = sum(2 * n * c * D for n, c in zip(N, C))  # L_i, or the folded M_i: same shape
    fuse = 2 * N[0] * (4 * D) * D  # the 1x1 fuse conv at 1/4: 8.59 GFLOPs
    classifier = 2 * N[0] * D * K
    folding = 2 * D * D * sum(C)  # the products W_i L_i, once per forward pass
    with torch.device("meta"):
        net = SegFormer(K, variant="b0")
    net.decoder.fold = False
    before = gflops_by_module(net, (512, 512))
    total_before = gflops(net, (512, 512))
    net.decoder.fold = True
    after = gflops_by_module(net, (512, 512))
    total_after = gflops(net, (512, 512))
    assert before["decoder"] * 1e9 == pytest.approx(per_stage + fuse + classifier, rel=1e-3)
    assert after["decoder"] * 1e9 == pytest.approx(per_stage + classifier + folding, rel=1e-3)
    assert after["encoder"] == before["encoder"]
    saved = (total_before - total_after) * 1e9
    assert saved == pytest.approx(fuse - folding, rel=1e-3)
    assert total_after < 0.5 * total_before  # the fuse was more than half the model


def test_decoder_folding_after_fold_batchnorm():
    """segcourse.fuse folds the fuse layer's BatchNorm into its conv (an Identity remains);
    the folded decoder then reads the conv's bias and gives the same logits."""
    from segcourse.fuse import fold_batchnorm

    torch.manual_seed(0)
    model = SegFormer(5, variant="b0").eval()
    bn = model.decoder.fuse[1]
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_()
        bn.bias.normal_()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        want = model(x)
        folded = fold_batchnorm(model, x)
        assert isinstance(folded.decoder.fuse[1], torch.nn.Identity)
        folded.decoder.fold = True
        got = folded(x)
    torch.testing.assert_close(got, want, atol=3e-5 * want.abs().max().item(), rtol=0)
