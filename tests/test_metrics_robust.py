"""Metrics on inputs users really pass: NumPy arrays, huge panoptic ids, mismatched lists."""

import numpy as np
import pytest
import torch

from segcourse.metrics import (
    boundary_accuracy,
    confusion_matrix,
    mask_average_precision,
    mean_iou,
    panoptic_quality,
)


def _panoptic_pair():
    """A 6 x 8 scene: stuff 0 (top) and 1 (bottom), two objects of thing class 2."""
    gt = torch.zeros(6, 8, 2, dtype=torch.long)
    gt[3:, :, 0] = 1
    gt[1:3, 1:3] = torch.tensor([2, 1])
    gt[3:5, 5:8] = torch.tensor([2, 2])
    pred = gt.clone()
    pred[1:3, 3] = torch.tensor([2, 1])  # the first object predicted a column too wide
    return pred, gt


def test_panoptic_quality_is_invariant_to_the_size_of_the_ids():
    """Relabelling categories and instances with ids near 2**40 changes nothing (the segment key
    used to overflow int64 and raise a KeyError)."""
    pred, gt = _panoptic_pair()
    small = panoptic_quality(pred, gt, things=[2], stuffs=[0, 1])
    big_cat = {0: 2**40, 1: 2**40 + 7, 2: 3 * 2**40}

    def relabel(x):
        y = x.clone()
        for old, new in big_cat.items():
            y[..., 0][x[..., 0] == old] = new
        y[..., 1] = x[..., 1] * 2**41 + 5
        return y

    big = panoptic_quality(relabel(pred), relabel(gt), things=[big_cat[2]],
                           stuffs=[big_cat[0], big_cat[1]])
    assert big["pq"] == pytest.approx(small["pq"]) and big["sq"] == pytest.approx(small["sq"])
    # By hand: every segment matches (RQ = 1). Stuff 0 has 20 px, loses 2 to the wider object:
    # IoU 18/20; stuff 1: 1; the wider object: 4/6, the other 1 -> class 2's PQ is 5/6.
    assert small["rq"] == 1.0
    assert small["pq"] == pytest.approx((0.9 + 1.0 + 5 / 6) / 3)


def test_numpy_inputs_are_accepted():
    pred = np.array([[[0, 1], [1, 1]]])
    target = np.array([[[0, 1], [0, 1]]])
    assert torch.equal(confusion_matrix(pred, target, 2), torch.tensor([[1, 1], [0, 2]]))
    assert mean_iou(pred, target, 2) == pytest.approx((1 / 2 + 2 / 3) / 2)
    p, g = _panoptic_pair()
    assert panoptic_quality(p.numpy(), g.numpy(), [2], [0, 1])["pq"] == pytest.approx(
        panoptic_quality(p, g, [2], [0, 1])["pq"])
    assert boundary_accuracy(target, target, radius=1) == 1.0


@pytest.mark.parametrize("bad", [[[0, 1]], "labels", 3])
def test_other_types_name_the_argument(bad):
    with pytest.raises(ValueError, match="pred must be a torch.Tensor or a numpy array"):
        confusion_matrix(bad, torch.zeros(1, 2, dtype=torch.long), 2)


def _detection(masks, labels, scores=None):
    d = {"masks": masks, "labels": torch.tensor(labels)}
    if scores is not None:
        d["scores"] = torch.tensor(scores)
    return d


def test_mask_ap_refuses_lists_of_different_lengths():
    """One prediction list for two target images used to be zipped, truncated and reported as
    AP 1.0; it must be an error."""
    m = torch.zeros(1, 4, 4, dtype=torch.bool)
    m[0, 1:3, 1:3] = True
    gt = _detection(m, [1])
    with pytest.raises(ValueError, match="one prediction per target image"):
        mask_average_precision([_detection(m, [1], [0.9])], [gt, gt])


@pytest.mark.parametrize("pred, match", [
    ({"masks": torch.zeros(1, 4, 4, dtype=torch.bool), "labels": torch.tensor([1])}, "scores"),
    (_detection(torch.zeros(2, 4, 4, dtype=torch.bool), [1], [0.5]), "must agree"),
    (_detection(torch.ones(1, 5, 4, dtype=torch.bool), [1], [0.5]), "predicted masks"),
])
def test_mask_ap_refuses_malformed_predictions(pred, match):
    gt = _detection(torch.ones(1, 4, 4, dtype=torch.bool), [1])
    with pytest.raises(ValueError, match=match):
        mask_average_precision([pred], [gt])
