"""The boundary band and the scores restricted to it, against a brute-force loop and by hand."""

import pytest
import torch

from segcourse.metrics import boundary_accuracy, boundary_mask, boundary_miou, mean_iou


def _boundary_brute_force(target, radius, ignore=255):
    B, H, W = target.shape
    out = torch.zeros(B, H, W, dtype=torch.bool)
    for b in range(B):
        for y in range(H):
            for x in range(W):
                if target[b, y, x] == ignore:
                    continue
                for yy in range(max(0, y - radius), min(H, y + radius + 1)):
                    for xx in range(max(0, x - radius), min(W, x + radius + 1)):
                        if target[b, yy, xx] not in (ignore, target[b, y, x]):
                            out[b, y, x] = True
    return out


@pytest.mark.parametrize("radius", [0, 1, 2])
def test_boundary_mask_matches_brute_force(radius):
    target = torch.zeros(2, 9, 11, dtype=torch.long)
    target[0, 2:6, 3:8] = 2
    target[0, 4, 4] = 255
    target[1, :, 6:] = 1
    target[1, 0:3, 0:2] = 255
    assert torch.equal(boundary_mask(target, radius), _boundary_brute_force(target, radius))


def test_boundary_weights_only_near_boundaries():
    target = torch.zeros(1, 12, 12, dtype=torch.long)
    target[0, 4:8, 4:8] = 1  # a 4 x 4 square
    near = boundary_mask(target, radius=1)[0]
    # Non-zero exactly on the two-pixel ring around the square's edge (inside and outside).
    rows, cols = near.nonzero().T
    assert rows.min() == 3 and rows.max() == 8 and cols.min() == 3 and cols.max() == 8
    assert not near[5:7, 5:7].any() and near.sum() == 6 * 6 - 2 * 2
    assert not boundary_mask(torch.ones(1, 5, 5, dtype=torch.long)).any()


def _square_one_pixel_too_wide():
    """A 4 x 4 square in an 8 x 8 image, predicted one column too wide on the right."""
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, 2:6, 2:6] = 1
    pred = torch.zeros(1, 8, 8, dtype=torch.long)
    pred[0, 2:6, 2:7] = 1
    return pred, target


def test_boundary_miou_by_hand():
    pred, target = _square_one_pixel_too_wide()
    band = boundary_mask(target, radius=1)
    # The band is the 6 x 6 ring around the square's edge minus its 2 x 2 core: 32 pixels, of
    # which 12 inside the square (class 1) and 20 outside (class 0). The 4 wrong pixels are the
    # column x = 6, rows 2..5, all outside and all in the band.
    assert int(band.sum()) == 32
    # class 1: TP 12, FP 4, FN 0 -> 12/16; class 0: TP 16, FP 0, FN 4 -> 16/20
    assert boundary_miou(pred, target, 2, radius=1) == pytest.approx((12 / 16 + 16 / 20) / 2)
    assert boundary_accuracy(pred, target, radius=1) == pytest.approx(28 / 32)


def test_boundary_scores_equal_plain_scores_on_the_band():
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 16, 20))
    target[0, :3] = 255
    pred = torch.randint(0, 3, (2, 16, 20))
    band = boundary_mask(target, radius=2)
    masked = torch.where(band, target, 255)
    assert boundary_miou(pred, target, 3) == pytest.approx(mean_iou(pred, masked, 3))
    assert boundary_accuracy(pred, target) == pytest.approx(
        float((pred == target)[band].float().mean()))


def test_ignored_pixels_never_count():
    pred, target = _square_one_pixel_too_wide()
    target[0, :, 6:] = 255  # the wrong column is now void: the band holds no error
    assert boundary_accuracy(pred, target, radius=1) == 1.0
    assert boundary_miou(pred, target, 2, radius=1) == 1.0


def test_no_boundary_gives_nan_not_a_crash():
    flat = torch.zeros(1, 8, 8, dtype=torch.long)
    assert not boundary_mask(flat).any()
    assert boundary_accuracy(flat, flat) != boundary_accuracy(flat, flat)  # NaN
    assert boundary_miou(flat, flat, 2) != boundary_miou(flat, flat, 2)


@pytest.mark.parametrize("bad, match", [
    (torch.rand(1, 8, 8), "integer"),
    (torch.zeros(8, 8, dtype=torch.long), "integer tensor \\[B, H, W\\]"),
])
def test_bad_targets_raise(bad, match):
    with pytest.raises(ValueError, match=match):
        boundary_mask(bad)


def test_bad_radius_and_mismatched_pred_raise():
    _, target = _square_one_pixel_too_wide()
    with pytest.raises(ValueError, match="radius"):
        boundary_mask(target, radius=-1)
    with pytest.raises(ValueError, match="pred"):
        boundary_accuracy(target[0], target)


def test_a_void_border_empties_the_band_unless_void_is_boundary():
    """Pet trimaps: pet | 2-pixel void border | background. Across the border no class change is
    within radius 2, so the band is empty; with void_is_boundary the pixels beside the border
    (2 on each side, radius 2) form it."""
    target = torch.zeros(1, 6, 10, dtype=torch.long)
    target[0, :, 6:] = 1
    target[0, :, 4:6] = 255
    assert not boundary_mask(target, radius=2).any()
    band = boundary_mask(target, radius=2, void_is_boundary=True)[0]
    assert torch.equal(band.any(0), torch.tensor([0, 0, 1, 1, 0, 0, 1, 1, 0, 0]).bool())
    assert band.all(0)[[2, 3, 6, 7]].all()
    pred = torch.zeros_like(target)  # everything background
    assert boundary_accuracy(pred, target, radius=2) != boundary_accuracy(pred, target, radius=2)
    assert boundary_accuracy(pred, target, radius=2, void_is_boundary=True) == 0.5
    assert boundary_miou(pred, target, 2, radius=2, void_is_boundary=True) == pytest.approx(0.25)


def test_void_is_boundary_changes_nothing_without_void():
    torch.manual_seed(1)
    target = torch.randint(0, 4, (2, 12, 9))
    assert torch.equal(boundary_mask(target, 2), boundary_mask(target, 2, void_is_boundary=True))
