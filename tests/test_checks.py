"""segcourse._checks.check_number: the one bounds check for numeric arguments."""

import math

import numpy as np
import pytest

from segcourse._checks import check_number


@pytest.mark.parametrize("value, low, high", [
    (0, 0, 1), (1, 0, 1), (0.5, 0, 1), (np.float32(0.25), 0, 1), (math.inf, 0, None),
    (-3, None, 0), (7, None, None)])
def test_accepts_numbers_within_the_bounds_as_floats(value, low, high):
    out = check_number(value, "x", low, high)
    assert isinstance(out, float) and out == float(value)


@pytest.mark.parametrize("value, low, high, message", [
    (1.5, 0, 1, r"x must be a number in \[0, 1\], got 1.5"),
    (-0.1, 0, None, r"x must be a number >= 0, got -0.1"),
    (2, None, 1, r"x must be a number <= 1, got 2"),
    (math.nan, 0, 1, r"x must be a number in \[0, 1\], got nan"),
    (True, 0, 1, r"got True"), (np.bool_(True), None, None, r"x must be a number, got "),
    ("0.5", 0, 1, r"got '0.5'"), (None, None, None, r"x must be a number, got None"),
])
def test_refuses_with_the_argument_named(value, low, high, message):
    with pytest.raises(ValueError, match=message):
        check_number(value, "x", low, high)


def test_check_rgb_image():
    import torch

    from segcourse._checks import check_rgb_image
    check_rgb_image(torch.rand(3, 5, 7))
    check_rgb_image(torch.zeros(3, 0, 4))  # empty: no values to range-check
    for bad, match in [(torch.rand(1, 3, 5, 5), r"image must be a tensor \[3, H, W\]"),
                       (torch.rand(4, 5, 5), r"got \(4, 5, 5\)"),
                       ([[0.5]], "got list"),
                       (torch.ones(3, 5, 5, dtype=torch.uint8), "floating point"),
                       (torch.full((3, 2, 2), 2.0), r"lie in \[0, 1\], got \[2, 2\]")]:
        with pytest.raises(ValueError, match=match):
            check_rgb_image(bad)
    with pytest.raises(ValueError, match="photo must be"):
        check_rgb_image(torch.rand(2, 2), name="photo")
