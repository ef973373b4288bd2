"""RoIAlign against an independent, literal re-statement of torchvision's semantics.

The reference below is a per-sample Python loop written from torchvision's C++ CPU kernel
(``torchvision/csrc/ops/cpu/roi_align_kernel.cpp``, ``roi_align_common.h``) -- nothing
vectorised is shared with the implementation under test. The work is cut into chunks of a
bounded number of (pixel, weight) pairs; the tests run with the default budget and with budgets
small enough that every RoI row is its own chunk.
"""

import importlib
import math

import pytest
import torch

from segcourse.ops import roi_align

roi_align_module = importlib.import_module("segcourse.ops.roi_align")


def bilinear_reference(fmap, y, x):
    """One channel-map ``[H, W]`` sampled at (y, x) with torchvision's border rules."""
    H, W = fmap.shape
    if y < -1.0 or y > H or x < -1.0 or x > W:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= H - 1:
        y_high = y_low = H - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= W - 1:
        x_high = x_low = W - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    return (hy * hx * fmap[y_low, x_low] + hy * lx * fmap[y_low, x_high]
            + ly * hx * fmap[y_high, x_low] + ly * lx * fmap[y_high, x_high])


def roi_align_reference(inp, rois, out_h, out_w, scale, sampling_ratio, aligned):
    inp = inp.double()
    K, C = rois.shape[0], inp.shape[1]
    out = torch.zeros(K, C, out_h, out_w, dtype=torch.float64)
    for k in range(K):
        b = int(rois[k, 0])
        offset = 0.5 if aligned else 0.0
        x1, y1, x2, y2 = (float(v) * scale - offset for v in rois[k, 1:])
        roi_w, roi_h = x2 - x1, y2 - y1
        if not aligned:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_h, bin_w = roi_h / out_h, roi_w / out_w
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / out_h)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / out_w)
        count = max(grid_h * grid_w, 1)
        for c in range(C):
            for ph in range(out_h):
                for pw in range(out_w):
                    total = 0.0
                    for iy in range(grid_h):
                        y = y1 + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                        for ix in range(grid_w):
                            x = x1 + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                            total += bilinear_reference(inp[b, c], y, x)
                    out[k, c, ph, pw] = total / count
    return out


ROIS = torch.tensor([
    [0, 1.0, 1.0, 6.0, 5.0],      # inside
    [1, 0.3, 2.7, 9.6, 8.2],      # fractional corners
    [0, -3.0, -2.0, 4.0, 3.0],    # partly outside, top-left
    [1, 5.0, 4.0, 14.0, 12.0],    # partly outside, bottom-right
    [0, 2.0, 2.0, 2.4, 2.2],      # smaller than a pixel (legacy mode makes it 1 x 1)
    [1, -20.0, -20.0, -15.0, -12.0],  # fully outside: zeros
    [0, 3.0, 3.0, 3.0, 3.0],      # empty box (aligned: zero-size grid -> zeros)
    [1, 1.0, 4.0, 8.0, 4.0],      # zero height only (aligned adaptive: no rows -> zeros)
])


# Budgets of (pixel, weight) pairs per chunk: the default (these small cases: one chunk), one
# output row per chunk (1), and a few rows per chunk (300).
BUDGETS = [roi_align_module._MAX_PAIRS, 1, 300]


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 2, 3])
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_roi_align_matches_reference(monkeypatch, aligned, sampling_ratio, scale):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 11)
    ref = roi_align_reference(x, ROIS, 3, 4, scale, sampling_ratio, aligned)
    for budget in BUDGETS:
        monkeypatch.setattr(roi_align_module, "_MAX_PAIRS", budget)
        out = roi_align(x, ROIS, (3, 4), scale, sampling_ratio, aligned)
        assert out.shape == (len(ROIS), 3, 3, 4)
        torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_roi_align_list_of_boxes_equals_batch_index_form():
    torch.manual_seed(1)
    x = torch.randn(2, 4, 16, 16)
    per_image = [torch.tensor([[1.0, 2.0, 9.0, 7.0]]),
                 torch.tensor([[0.0, 0.0, 15.5, 15.5], [4.0, 3.0, 6.0, 12.0]])]
    rois = torch.tensor([[0, 1.0, 2.0, 9.0, 7.0], [1, 0.0, 0.0, 15.5, 15.5],
                         [1, 4.0, 3.0, 6.0, 12.0]])
    torch.testing.assert_close(roi_align(x, per_image, 5, 0.5, 2, True),
                               roi_align(x, rois, 5, 0.5, 2, True))


def test_roi_align_constant_map_and_known_value():
    # On a constant map every in-range sample equals the constant.
    x = torch.full((1, 1, 8, 8), 3.0)
    out = roi_align(x, torch.tensor([[0, 1.0, 1.0, 7.0, 7.0]]), 2, 1.0, 2, aligned=True)
    torch.testing.assert_close(out, torch.full((1, 1, 2, 2), 3.0))
    # A horizontal ramp f(y, x) = x: with aligned=True a 1x1 bin over pixel box [2, 4) x [0, 1)
    # samples x = 2.5 - 0.5 = 2.0 ... averaged over the bin: value = centre - 0.5 = 2.5.
    ramp = torch.arange(8.0).expand(1, 1, 8, 8).contiguous()
    out = roi_align(ramp, torch.tensor([[0, 2.0, 0.0, 4.0, 1.0]]), 1, 1.0, 2, aligned=True)
    assert out.item() == pytest.approx(2.5)


def test_roi_align_gradient_matches_reference_weights(monkeypatch):
    # d(sum of outputs)/d(input) is the total bilinear weight each pixel receives; the loop
    # reference gives it too (sum of its outputs is linear in the input).
    torch.manual_seed(2)
    rois = torch.tensor([[0, 0.4, 0.7, 5.3, 4.9], [0, -1.5, 2.0, 3.0, 7.5]], dtype=torch.float64)
    expected = torch.zeros(6, 7, dtype=torch.float64)
    for i in range(6):
        for j in range(7):
            e = torch.zeros(1, 1, 6, 7, dtype=torch.float64)
            e[0, 0, i, j] = 1.0
            expected[i, j] = roi_align_reference(e, rois, 2, 2, 1.0, -1, True).sum()
    for budget in BUDGETS:  # chunked: each chunk's pairs are recomputed in the backward pass
        monkeypatch.setattr(roi_align_module, "_MAX_PAIRS", budget)
        x = torch.randn(1, 1, 6, 7, dtype=torch.float64, requires_grad=True)
        roi_align(x, rois, 2, 1.0, -1, True).sum().backward()
        torch.testing.assert_close(x.grad[0, 0], expected)


def rois_of_all_sizes(n, H, W, seed):
    """RoIs from a fraction of a pixel to larger than the map (adaptive grids from 0 to ~W/2)."""
    g = torch.Generator().manual_seed(seed)
    side = torch.exp(torch.rand(n, 2, generator=g) * math.log(2.5 * W)) - 0.8
    corner = torch.rand(n, 2, generator=g) * torch.tensor([W, H]) - side / 2
    image = torch.randint(0, 2, (n, 1), generator=g).double()
    return torch.cat([image, corner, corner + side], dim=1)


@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_chunked_equals_one_chunk_forward_and_backward(monkeypatch, sampling_ratio,
                                                                  aligned):
    # The same bags of (pixel, weight) pairs in the same order, so the forward is bit-for-bit
    # the same; the gradient sums the chunks' contributions in another order (float rounding).
    torch.manual_seed(4)
    x = torch.randn(2, 3, 24, 30, dtype=torch.float64)
    rois = rois_of_all_sizes(40, 24, 30, seed=sampling_ratio)
    grad_out = torch.randn(40, 3, 4, 5, dtype=torch.float64)
    results = []
    for budget in [10**9, 1, 2000]:
        monkeypatch.setattr(roi_align_module, "_MAX_PAIRS", budget)
        xi = x.clone().requires_grad_()
        out = roi_align(xi, rois, (4, 5), 0.8, sampling_ratio, aligned)
        out.backward(grad_out)
        results.append((out.detach(), xi.grad))
    for out, grad in results[1:]:
        assert torch.equal(out, results[0][0])
        torch.testing.assert_close(grad, results[0][1], rtol=1e-12, atol=1e-12)
    # and the one-chunk answer is torchvision's, for a few of these RoIs (the loop is slow)
    ref = roi_align_reference(x, rois[::8], 4, 5, 0.8, sampling_ratio, aligned)
    torch.testing.assert_close(results[0][0][::8], ref)


def test_roi_align_memory_is_bounded_forward_and_backward(monkeypatch):
    # Mask targets in miniature: full-image masks, RoIs up to the whole image, adaptive
    # sampling. No embedding_bag call may gather more pairs than the budget (a single output
    # row larger than the budget would be alone in its chunk; here a row has at most
    # 4 * 14 * ceil(60 / 14) * ceil(80 / 14) = 1680), and the backward pass recomputes the
    # pairs instead of keeping them.
    budget = 20_000
    monkeypatch.setattr(roi_align_module, "_MAX_PAIRS", budget)
    calls, embedding_bag = [], roi_align_module.F.embedding_bag

    def counting(index, *args, **kwargs):
        calls.append(index.numel())
        return embedding_bag(index, *args, **kwargs)

    monkeypatch.setattr(roi_align_module.F, "embedding_bag", counting)
    x = torch.rand(2, 1, 60, 80, requires_grad=True)
    rois = rois_of_all_sizes(30, 60, 80, seed=5).float()
    rois[:, 1::2], rois[:, 2::2] = rois[:, 1::2].clamp(0, 80), rois[:, 2::2].clamp(0, 60)
    saved = {}  # storage -> bytes: a tensor saved by many nodes (the input) counts once

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = roi_align(x, rois, 14, 1.0, 0, aligned=True)
    forward_calls = len(calls)
    out.sum().backward()
    assert forward_calls > 10 and max(calls) <= budget
    assert len(calls) == 2 * forward_calls  # every chunk once more in the backward pass
    # Rows of similar grids share a chunk, so padding adds little to the pairs each RoI needs
    # (14 x 14 bins of ceil(h / 14) x ceil(w / 14) samples, 4 pixels each; at least one sample)
    h, w = rois[:, 4] - rois[:, 2], rois[:, 3] - rois[:, 1]
    needed = int((4 * 14 * 14 * (h / 14).ceil().clamp(min=1) * (w / 14).ceil().clamp(min=1)).sum())
    assert sum(calls[:forward_calls]) <= 1.2 * needed
    # What the graph keeps: the input and each output row's geometry (a couple of numbers per
    # value of a one-channel output), not the pairs (int64 index + float32 weight each).
    pair_bytes = 12 * sum(calls[:forward_calls])
    assert sum(saved.values()) < 4 * x.numel() + 2 * 4 * out.numel() < pair_bytes / 10


def test_roi_align_rejects_bad_input():
    x = torch.randn(1, 2, 8, 8)
    with pytest.raises(ValueError, match="Tensor\\[K, 5\\]"):
        roi_align(x, torch.zeros(3, 4), 2)
    with pytest.raises(ValueError, match="\\[B, C, H, W\\]"):
        roi_align(torch.randn(2, 8, 8), torch.zeros(1, 5), 2)
    assert roi_align(x, torch.zeros(0, 5), 2).shape == (0, 2, 2, 2)


def test_roi_align_in_half_precision_computes_in_float32():
    # Under autocast the features arrive in float16 / bfloat16; like torchvision, RoIAlign then
    # samples in float32 (box coordinates in half precision would be off by whole pixels).
    torch.manual_seed(3)
    x = torch.randn(1, 4, 32, 32)
    rois = torch.tensor([[0, 100.3, 60.7, 200.9, 120.2]])
    out = roi_align(x.bfloat16(), rois, 7, 1 / 8, 2, True)
    assert out.dtype == torch.bfloat16
    expected = roi_align(x.bfloat16().float(), rois, 7, 1 / 8, 2, True).bfloat16()
    torch.testing.assert_close(out, expected)
