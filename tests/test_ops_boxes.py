"""ops.masks_to_boxes: tight boxes of masks in the package's continuous convention."""

import pytest
import torch

from segcourse.ops import masks_to_boxes


def test_masks_to_boxes_by_hand():
    m = torch.zeros(3, 5, 7, dtype=torch.bool)
    m[0, 1:3, 2:5] = True          # rows 1-2, columns 2-4 -> (2, 1, 5, 3)
    m[1, 4, 6] = True              # one pixel in the corner -> (6, 4, 7, 5)
    # m[2] empty -> 0s
    assert masks_to_boxes(m).tolist() == [[2, 1, 5, 3], [6, 4, 7, 5], [0, 0, 0, 0]]
    assert masks_to_boxes(m).dtype == torch.float32
    assert masks_to_boxes(m.view(1, 3, 5, 7)).shape == (1, 3, 4)      # any leading dims
    assert masks_to_boxes(torch.zeros(0, 5, 7, dtype=torch.bool)).shape == (0, 4)


def test_masks_to_boxes_equals_a_loop_over_pixels():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(6, 9, 11, generator=g) > 0.9
    for mask, box in zip(masks, masks_to_boxes(masks)):
        ys, xs = torch.where(mask)
        want = [0, 0, 0, 0] if not len(xs) else [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert box.tolist() == [float(v) for v in want]


def test_masks_to_boxes_refuses_a_vector():
    with pytest.raises(ValueError, match="masks must be a tensor"):
        masks_to_boxes(torch.zeros(5, dtype=torch.bool))
