"""Blocked NMS: the greedy definition on many random cases, ties, block boundaries, groups.

The references are independent of the blocked sweep under test: a literal transcription of
torchvision's CPU kernel (``csrc/ops/cpu/nms_kernel.cpp``: one Python step per box, its own IoU
arithmetic) and the unblocked formulation, the Cluster-NMS fixed point over one N x N matrix
(with a stable sort, so that ties are comparable).
"""

import importlib

import pytest
import torch

from segcourse.ops import batched_nms, box_iou, nms

nms_module = importlib.import_module("segcourse.ops.nms")


def greedy_reference(boxes, scores, threshold):
    """torchvision's CPU kernel, line by line: visit by score (ties: index order), drop every
    later box whose IoU with the visited kept box is > threshold. (The test boxes have integer
    coordinates: areas and intersections are exact in float32 and in Python's floats, and a
    correctly rounded division then decides against the threshold as the kernel does.)"""
    b = boxes.tolist()
    order = sorted(range(len(b)), key=lambda i: -float(scores[i]))  # stable
    area = [(x2 - x1) * (y2 - y1) for x1, y1, x2, y2 in b]
    suppressed, keep = set(), []
    for n, i in enumerate(order):
        if i in suppressed:
            continue
        keep.append(i)
        for j in order[n + 1:]:
            if j in suppressed:
                continue
            w = max(0.0, min(b[i][2], b[j][2]) - max(b[i][0], b[j][0]))
            h = max(0.0, min(b[i][3], b[j][3]) - max(b[i][1], b[j][1]))
            inter = w * h
            if inter / (area[i] + area[j] - inter) > threshold:
                suppressed.add(j)
    return keep


def full_matrix_nms(boxes, scores, threshold):
    """Unblocked: the whole N x N suppression matrix, fixed point over it."""
    order = scores.sort(descending=True, stable=True).indices
    suppresses = (box_iou(boxes[order], boxes[order]) > threshold).triu(diagonal=1)
    keep = torch.ones(len(order), dtype=torch.bool)
    while True:
        new_keep = ~(suppresses & keep[:, None]).any(dim=0)
        if torch.equal(new_keep, keep):
            return order[keep].tolist()
        keep = new_keep


def crowded_boxes(n, seed, ties=False):
    """Boxes crowding around a few objects (long suppression chains), with integer coordinates
    (so that IoUs exactly at a threshold occur); with ``ties``, scores take 5 values."""
    g = torch.Generator().manual_seed(seed)
    centre = (torch.rand(4, 2, generator=g) * 40)[torch.randint(0, 4, (n,), generator=g)]
    xy = (centre + torch.randn(n, 2, generator=g) * 4).round()
    wh = (torch.rand(n, 2, generator=g) * 16 + 2).round()
    scores = torch.randint(0, 5 if ties else 10**6, (n,), generator=g).float()
    return torch.cat([xy, xy + wh], dim=1), scores


@pytest.fixture(params=[3, 8, 256], ids=lambda b: f"block{b}")
def block(request, monkeypatch):
    """Small blocks so that a few dozen boxes cross many block boundaries."""
    monkeypatch.setattr(nms_module, "_BLOCK", request.param)
    return request.param


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
def test_nms_equals_greedy_kernel_and_full_matrix(block, ties):
    for seed in range(25):
        boxes, scores = crowded_boxes(1 + 7 * seed % 60, seed, ties)  # 1 to 60 boxes
        for threshold in (0.0, 0.3, 0.5, 0.7):
            expected = greedy_reference(boxes, scores, threshold)
            assert nms(boxes, scores, threshold).tolist() == expected
            assert full_matrix_nms(boxes, scores, threshold) == expected


def test_nms_hand_example():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 5.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    # IoU(0,1) = 81/119 = 0.68; IoU(3,0) = 50/100 = 0.5; IoU(3,1) = 36/(50+100-36) = 0.32
    assert nms(boxes, scores, 0.6).tolist() == [3, 0, 2]   # 1 goes (0.68 > 0.6 with box 0)
    assert nms(boxes, scores, 0.45).tolist() == [3, 1, 2]  # 0 goes (0.5 with 3), so 1 survives


@pytest.mark.parametrize("n", [7, 8, 9, 16, 17])
def test_nms_at_block_boundaries(monkeypatch, n):
    # N = block - 1, block, block + 1, 2 blocks, 2 blocks + 1, with block = 8.
    monkeypatch.setattr(nms_module, "_BLOCK", 8)
    boxes, scores = crowded_boxes(n, n)
    for threshold in (0.2, 0.5):
        assert nms(boxes, scores, threshold).tolist() == greedy_reference(boxes, scores, threshold)


def test_nms_chain_across_blocks(monkeypatch):
    # Boxes shifted by 1 px in score order: IoU(k, k+1) = 9/11 > 0.7, IoU(k, k+2) = 8/12 < 0.7.
    # Greedy keeps 0, 2, 4, ... (each kept box removes the next, which then removes nothing) --
    # every decision depends on the one before, across every block boundary.
    monkeypatch.setattr(nms_module, "_BLOCK", 3)
    x = torch.arange(10.0)
    boxes = torch.stack([x, torch.zeros(10), x + 10, torch.full((10,), 10.0)], dim=1)
    scores = 1 - x / 10
    assert nms(boxes, scores, 0.7).tolist() == [0, 2, 4, 6, 8]


def test_nms_empty_single_and_identical_boxes():
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).tolist() == []
    assert nms(torch.tensor([[1.0, 2, 3, 4]]), torch.tensor([0.3]), 0.5).tolist() == [0]
    # Equal boxes with equal scores: the lowest index survives (stable order), at any block size.
    boxes = torch.tensor([[0.0, 0, 4, 4]]).repeat(5, 1)
    assert nms(boxes, torch.ones(5), 0.5).tolist() == [0]
    groups = torch.tensor([1, 0, 1, 0, 2])
    assert batched_nms(boxes, torch.ones(5), groups, 0.5).tolist() == [0, 1, 4]


def test_nms_rejects_bad_input():
    with pytest.raises(ValueError, match="boxes must be a Tensor\\[N, 4\\]"):
        nms(torch.zeros(3, 5), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="scores must be a Tensor\\[N\\] with N = 3"):
        nms(torch.zeros(3, 4), torch.zeros(2), 0.5)
    with pytest.raises(ValueError, match="idxs must be a Tensor\\[N\\]"):
        batched_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(3, 1), 0.5)


def test_batched_nms_is_greedy_per_group(block):
    for seed in range(15):
        boxes, scores = crowded_boxes(50, seed, ties=seed % 2 == 1)
        groups = torch.randint(0, 4, (50,), generator=torch.Generator().manual_seed(seed))
        groups = groups * 3 - 2  # not 0..G-1: negative, with gaps
        expected = []
        for g in groups.unique():
            idx = torch.where(groups == g)[0]
            expected += idx[greedy_reference(boxes[idx], scores[idx], 0.5)].tolist()
        expected.sort(key=lambda i: (-float(scores[i]), i))
        assert batched_nms(boxes, scores, groups, 0.5).tolist() == expected


def test_batched_nms_does_not_round_coordinates():
    # Boxes 0 and 1 of class 80: IoU = 9.997 / 10.003 = 0.9994 <= 0.9995, both kept. The
    # offset trick (torchvision's ``_batched_nms_coordinate_trick``) adds 80 * 1334 = 106,720 to
    # their coordinates, where float32's spacing is 0.0078: both become the same box (IoU 1).
    boxes = torch.tensor([[0, 0, 10, 10], [0.003, 0, 10.003, 10], [1300, 1300, 1333, 1333]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    labels = torch.tensor([80, 80, 0])
    assert batched_nms(boxes, scores, labels, 0.9995).tolist() == [0, 1, 2]
    offsets = labels.float() * (boxes.max() - boxes.min() + 1)
    assert nms(boxes + offsets[:, None], scores, 0.9995).tolist() == [0, 2]  # the trick's answer
