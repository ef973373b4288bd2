"""Point sampling (PointRend / Mask2Former): bilinear reads against hand-computed values and
HF transformers' ``sample_point``; importance sampling against a sort of the same random
candidates and against HF's ``Mask2FormerLoss.sample_points_using_uncertainty`` (same seed).
"""

import pytest
import torch

from segcourse.ops.point_sampling import point_sample, uncertain_points


def hf():
    """HF transformers' Mask2Former modelling module; a test using it is skipped without it."""
    return pytest.importorskip("transformers.models.mask2former.modeling_mask2former")


def pixel_centres(h, w):
    ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w,
                            indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], -1)  # [h * w, 2] (x, y)


def test_point_sample_hand_values():
    x = torch.arange(6.0).reshape(1, 1, 2, 3)  # [[0, 1, 2], [3, 4, 5]]
    coords = torch.tensor([[[0.5 / 3, 0.5 / 2],     # centre of pixel (0, 0) -> 0
                            [2.5 / 3, 1.5 / 2],     # centre of pixel (1, 2) -> 5
                            [1.0 / 3, 0.5 / 2],     # halfway between (0, 0) and (0, 1) -> 0.5
                            [1.5 / 3, 0.5],         # centre of the block 1, 4 -> 2.5
                            [0.0, 0.0]]])           # corner: 1/4 of pixel (0, 0), zero padding
    out = point_sample(x, coords)
    assert out.shape == (1, 1, 5)
    torch.testing.assert_close(out[0, 0], torch.tensor([0.0, 5.0, 0.5, 2.5, 0.0]))
    # nearest: the value of the pixel each point falls in (points nudged off the boundaries)
    nearest = point_sample(x, coords + 0.01, mode="nearest")[0, 0]
    assert nearest.tolist() == [0.0, 5.0, 1.0, 4.0, 0.0]


def test_point_sample_shapes_and_equals_hf():
    g = torch.Generator().manual_seed(0)
    x, coords = torch.randn(2, 3, 7, 9, generator=g), torch.rand(2, 11, 2, generator=g)
    out = point_sample(x, coords)
    assert out.shape == (2, 3, 11)
    torch.testing.assert_close(out, hf().sample_point(x, coords, align_corners=False))
    # pixel centres read the pixels themselves, whatever the channel
    centres = pixel_centres(7, 9)[None].expand(2, -1, -1)
    torch.testing.assert_close(point_sample(x, centres), x.flatten(2))


def test_uncertain_points_are_the_most_uncertain_candidates():
    logits = 4 * torch.randn(3, 1, 6, 8, generator=torch.Generator().manual_seed(1))
    P, ratio, importance = 20, 3.0, 0.75
    coords = uncertain_points(logits, P, ratio, importance, torch.Generator().manual_seed(5))
    assert coords.shape == (3, P, 2)
    g = torch.Generator().manual_seed(5)  # the same draws, by hand
    candidates = torch.rand(3, 60, 2, generator=g)
    rest = torch.rand(3, 5, 2, generator=g)
    for b in range(3):
        values = point_sample(logits[b: b + 1], candidates[b: b + 1])[0, 0]
        order = sorted(range(60), key=lambda i: abs(float(values[i])))[:15]  # closest to 0
        assert sorted(map(tuple, coords[b, :15].tolist())) == \
            sorted(map(tuple, candidates[b, order].tolist()))
        torch.testing.assert_close(coords[b, 15:], rest[b])


def test_uncertain_points_equal_hf_when_seeded():
    logits = torch.randn(4, 1, 5, 7, generator=torch.Generator().manual_seed(2))
    loss = hf().Mask2FormerLoss(hf().Mask2FormerConfig(num_labels=3), {})
    torch.manual_seed(3)
    expected = loss.sample_points_using_uncertainty(logits, loss.calculate_uncertainty, 30,
                                                    3.0, 0.75)
    torch.manual_seed(3)
    torch.testing.assert_close(uncertain_points(logits, 30, 3.0, 0.75), expected)
    assert uncertain_points(logits, 8, 1.0, 1.0).shape == (4, 8, 2)  # all by uncertainty
    assert uncertain_points(logits, 8, 2.0, 0.0).shape == (4, 8, 2)  # all uniform


@pytest.mark.parametrize("call, match", [
    (lambda: point_sample(torch.zeros(1, 2, 3), torch.zeros(1, 4, 2)), "inputs"),
    (lambda: point_sample(torch.zeros(1, 1, 2, 3, dtype=torch.bool), torch.zeros(1, 4, 2)),
     "floating"),
    (lambda: point_sample(torch.zeros(2, 1, 2, 3), torch.zeros(1, 4, 2)), "coords"),
    (lambda: point_sample(torch.zeros(1, 1, 2, 3), torch.zeros(1, 4, 3)), "coords"),
    (lambda: point_sample(torch.zeros(1, 1, 2, 3), torch.zeros(1, 4, 2), "bicubic"), "mode"),
    (lambda: uncertain_points(torch.zeros(2, 3, 4, 4), 4), "logits"),
    (lambda: uncertain_points(torch.zeros(2, 1, 4, 4), 0), "num_points"),
    (lambda: uncertain_points(torch.zeros(2, 1, 4, 4), 4, 0.5), "oversample_ratio"),
    (lambda: uncertain_points(torch.zeros(2, 1, 4, 4), 4, 3.0, 1.5), "importance_sample_ratio"),
])
def test_point_sampling_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
