"""RoIAlign and NMS against independent, literal re-statements of torchvision's semantics.

The references below are per-sample Python loops written from torchvision's C++ CPU kernel
(``torchvision/csrc/ops/cpu/roi_align_kernel.cpp``, ``roi_align_common.h``) and from the greedy
definition of NMS -- nothing vectorised is shared with the implementation under test.
"""

import math

import pytest
import torch

from segcourse.ops import batched_nms, box_iou, nms, roi_align


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


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 2, 3])
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_roi_align_matches_reference(aligned, sampling_ratio, scale):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 11)
    out = roi_align(x, ROIS, (3, 4), scale, sampling_ratio, aligned)
    ref = roi_align_reference(x, ROIS, 3, 4, scale, sampling_ratio, aligned)
    assert out.shape == (len(ROIS), 3, 3, 4)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_roi_align_list_of_boxes_equals_batch_index_form():
    torch.manual_seed(1)
    x = torch.randn(2, 4, 16, 16)
    per_image = [torch.tensor([[1.0, 2.0, 9.0, 7.0]]), torch.tensor([[0.0, 0.0, 15.5, 15.5], [4.0, 3.0, 6.0, 12.0]])]
    rois = torch.tensor([[0, 1.0, 2.0, 9.0, 7.0], [1, 0.0, 0.0, 15.5, 15.5], [1, 4.0, 3.0, 6.0, 12.0]])
    torch.testing.assert_close(roi_align(x, per_image, 5, 0.5, 2, True), roi_align(x, rois, 5, 0.5, 2, True))


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


def test_roi_align_gradient_matches_reference_weights():
    # d(sum of outputs)/d(input) is the total bilinear weight each pixel receives; the loop
    # reference gives it too (sum of its outputs is linear in the input).
    torch.manual_seed(2)
    x = torch.randn(1, 1, 6, 7, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 0.4, 0.7, 5.3, 4.9], [0, -1.5, 2.0, 3.0, 7.5]], dtype=torch.float64)
    roi_align(x, rois, 2, 1.0, -1, True).sum().backward()
    expected = torch.zeros(6, 7, dtype=torch.float64)
    for i in range(6):
        for j in range(7):
            e = torch.zeros(1, 1, 6, 7, dtype=torch.float64)
            e[0, 0, i, j] = 1.0
            expected[i, j] = roi_align_reference(e, rois, 2, 2, 1.0, -1, True).sum()
    torch.testing.assert_close(x.grad[0, 0], expected)


def test_roi_align_rejects_bad_input():
    x = torch.randn(1, 2, 8, 8)
    with pytest.raises(ValueError, match="Tensor\\[K, 5\\]"):
        roi_align(x, torch.zeros(3, 4), 2)
    with pytest.raises(ValueError, match="\\[B, C, H, W\\]"):
        roi_align(torch.randn(2, 8, 8), torch.zeros(1, 5), 2)
    assert roi_align(x, torch.zeros(0, 5), 2).shape == (0, 2, 2, 2)


# --- NMS --------------------------------------------------------------------------------------

def nms_reference(boxes, scores, threshold):
    """The textbook loop: repeatedly take the best remaining box, drop what overlaps it."""
    remaining = sorted(range(len(boxes)), key=lambda i: -float(scores[i]))
    keep = []
    while remaining:
        best = remaining.pop(0)
        keep.append(best)
        remaining = [i for i in remaining
                     if float(box_iou(boxes[best:best + 1], boxes[i:i + 1])) <= threshold]
    return keep


def random_boxes(n, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 50
    wh = torch.rand(n, 2, generator=g) * 20 + 1
    scores = torch.randperm(n * 10, generator=g)[:n].float() / (n * 10)  # distinct scores
    return torch.cat([xy, xy + wh], dim=1), scores


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nms_matches_brute_force(threshold, seed):
    boxes, scores = random_boxes(60, seed)
    assert nms(boxes, scores, threshold).tolist() == nms_reference(boxes, scores, threshold)


def test_nms_hand_example():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 5.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    # IoU(0,1) = 81/119 = 0.68; IoU(3,0) = 50/100 = 0.5; IoU(3,1) = 36/(50+100-36) = 0.32
    assert nms(boxes, scores, 0.6).tolist() == [3, 0, 2]   # 1 goes (0.68 > 0.6 with box 0)
    assert nms(boxes, scores, 0.45).tolist() == [3, 1, 2]  # 0 goes (0.5 with 3), so 1 survives
    assert nms(boxes[:0], scores[:0], 0.5).tolist() == []


@pytest.mark.parametrize("seed", [0, 3])
def test_batched_nms_is_nms_per_group(seed):
    boxes, scores = random_boxes(80, seed)
    groups = torch.randint(0, 3, (80,), generator=torch.Generator().manual_seed(seed))
    expected = []
    for g in range(3):
        idx = torch.where(groups == g)[0]
        expected += idx[nms_reference(boxes[idx], scores[idx], 0.5)].tolist()
    expected.sort(key=lambda i: -float(scores[i]))
    assert batched_nms(boxes, scores, groups, 0.5).tolist() == expected


def test_roi_align_in_half_precision_computes_in_float32():
    # Under autocast the features arrive in float16 / bfloat16; like torchvision, RoIAlign then
    # samples in float32 (box coordinates in half precision would be off by whole pixels).
    torch.manual_seed(3)
    x = torch.randn(1, 4, 32, 32)
    rois = torch.tensor([[0, 100.3, 60.7, 200.9, 120.2]])
    out = roi_align(x.bfloat16(), rois, 7, 1 / 8, 2, True)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, roi_align(x.bfloat16().float(), rois, 7, 1 / 8, 2, True).bfloat16())
