"""Semantic metrics against hand-computed cases and a brute-force pixel loop."""

import math

import pytest
import torch

from segcourse.metrics import (
    SegmentationMetric,
    class_accuracy,
    confusion_matrix,
    iou_per_class,
    mean_iou,
    pixel_accuracy,
)

# A 2x4 worked example (the same one chapter 1 walks through by hand).
TARGET = torch.tensor([[0, 0, 1, 255],
                       [2, 2, 1, 1]])
PRED = torch.tensor([[0, 1, 1, 3],
                     [2, 0, 1, 1]])
# Counted by hand, ignoring the 255 pixel (whatever was predicted there, class 3 here):
#   class 0: target pixels (0,0),(0,1); predicted 0 at (0,0),(1,1) -> TP 1, FN 1, FP 1 -> IoU 1/3
#   class 1: target (0,2),(1,2),(1,3); predicted 1 at (0,1),(0,2),(1,2),(1,3) -> TP 3, FP 1 -> 3/4
#   class 2: target (1,0),(1,1); predicted 2 at (1,0) -> TP 1, FN 1 -> 1/2
#   class 3: nowhere (its one prediction sits on an ignored pixel) -> NaN
EXPECTED_CM = torch.tensor([[1, 1, 0, 0],
                            [0, 3, 0, 0],
                            [1, 0, 1, 0],
                            [0, 0, 0, 0]])


def test_confusion_matrix_hand_computed():
    cm = confusion_matrix(PRED, TARGET, num_classes=4)
    assert cm.dtype == torch.int64
    assert torch.equal(cm, EXPECTED_CM)


def test_iou_hand_computed_with_absent_class_nan():
    iou = iou_per_class(EXPECTED_CM)
    torch.testing.assert_close(iou[:3], torch.tensor([1 / 3, 3 / 4, 1 / 2], dtype=torch.float64))
    assert math.isnan(iou[3])
    assert mean_iou(PRED, TARGET, 4) == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)


def test_pixel_and_class_accuracy_hand_computed():
    assert pixel_accuracy(PRED, TARGET, 4) == pytest.approx(5 / 7)
    acc = class_accuracy(EXPECTED_CM)
    torch.testing.assert_close(acc[:3], torch.tensor([1 / 2, 1.0, 1 / 2], dtype=torch.float64))
    assert math.isnan(acc[3])


def test_class_only_predicted_has_iou_zero_not_nan():
    target = torch.zeros(1, 4, dtype=torch.long)
    pred = torch.tensor([[0, 0, 0, 2]])
    iou = iou_per_class(confusion_matrix(pred, target, 3))
    assert iou[0] == pytest.approx(3 / 4) and iou[2] == 0.0 and math.isnan(iou[1])


def test_logits_are_reduced_by_argmax():
    logits = torch.nn.functional.one_hot(PRED.clamp(max=3), 4).permute(2, 0, 1).float()[None]
    assert torch.equal(confusion_matrix(logits, TARGET[None], 4), EXPECTED_CM)


def _brute_force_cm(pred, target, k, ignore):
    cm = [[0] * k for _ in range(k)]
    for p, t in zip(pred.flatten().tolist(), target.flatten().tolist()):
        if t != ignore:
            cm[t][p] += 1
    return torch.tensor(cm)


def test_random_maps_match_a_pixel_loop():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 6, (3, 17, 13), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.2] = 255
    pred = torch.randint(0, 6, (3, 17, 13), generator=g)
    assert torch.equal(confusion_matrix(pred, target, 6), _brute_force_cm(pred, target, 6, 255))


def test_streaming_metric_equals_one_matrix_over_everything():
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, 4, (6, 9, 9), generator=g)
    pred = torch.randint(0, 4, (6, 9, 9), generator=g)
    metric = SegmentationMetric(4)
    for start in (0, 1, 4):  # uneven batches, including batch size 1
        stop = {0: 1, 1: 4, 4: 6}[start]
        metric.update(pred[start:stop], target[start:stop])
    scores = metric.compute()
    assert torch.equal(scores["confusion_matrix"], confusion_matrix(pred, target, 4))
    assert scores["miou"] == pytest.approx(mean_iou(pred, target, 4))
    metric.reset()
    assert metric.cm.sum() == 0


def test_all_ignored_gives_nan_not_crash():
    target = torch.full((2, 3), 255)
    pred = torch.zeros(2, 3, dtype=torch.long)
    assert math.isnan(mean_iou(pred, target, 3)) and math.isnan(pixel_accuracy(pred, target, 3))


@pytest.mark.parametrize("pred, target, match", [
    (torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long), "same shape"),
    (torch.zeros(2, 3, dtype=torch.long), torch.full((2, 3), 7),
     r"target labels must be in \[0, 3\] or 255"),
    (torch.full((2, 3), 5), torch.zeros(2, 3, dtype=torch.long),
     r"pred labels must be in \[0, 3\]"),
    (torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3), "integer class labels"),
    (torch.zeros(2, 3, dtype=torch.long), torch.full((2, 3), -1), "found -1"),
])
def test_bad_input_raises_clear_value_error(pred, target, match):
    with pytest.raises(ValueError, match=match):
        confusion_matrix(pred, target, 4)
