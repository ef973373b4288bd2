"""segcourse.viz.upsampling: the transposed-convolution figure shows bilinear interpolation."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from segcourse.models.fcn import bilinear_kernel  # noqa: E402
from segcourse.viz import show_bilinear_upsampling  # noqa: E402
from segcourse.viz.upsampling import _tent  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_tent_by_hand_and_its_outer_product_is_fcns_kernel():
    torch.testing.assert_close(_tent(4), torch.tensor([0.25, 0.75, 0.75, 0.25]))
    torch.testing.assert_close(_tent(3), torch.tensor([0.5, 1.0, 0.5]))
    for size in (3, 4, 16, 64):
        t = _tent(size)
        torch.testing.assert_close(t[:, None] * t[None, :], bilinear_kernel(size))
    with pytest.raises(ValueError, match="size"):
        _tent(0)


def test_figure_kernels_and_the_summed_stamps_interpolate():
    signal = [0.3, 1.0, 0.2, 0.6]
    fig = show_bilinear_upsampling(signal, factor=2, large_factor=8)
    kernels = [ax.images[0].get_array() for ax in fig.axes[:2]]
    np.testing.assert_allclose(kernels[0], bilinear_kernel(4).numpy(), rtol=1e-6)
    np.testing.assert_allclose(kernels[1], bilinear_kernel(16).numpy(), rtol=1e-6)
    lines = fig.axes[2].get_lines()
    assert len(lines) == len(signal) + 1             # one stamp per input value, then the sum
    summed = lines[-1].get_ydata()
    assert len(summed) == (len(signal) - 1) * 2 + 4  # (n - 1) f + 2f
    # away from the ends, the sum is linear interpolation at the half-way points, by hand:
    # output 2 sits a quarter of the way from input 0 to input 1, output 3 three quarters.
    np.testing.assert_allclose(summed[2:4], [0.75 * 0.3 + 0.25 * 1.0, 0.25 * 0.3 + 0.75 * 1.0])
    stamps = np.array([line.get_ydata() for line in lines[:-1]])
    np.testing.assert_allclose(stamps[1], 1.0 * np.array([0.25, 0.75, 0.75, 0.25]))


def test_rejects_a_signal_that_is_not_1d():
    with pytest.raises(ValueError, match="signal"):
        show_bilinear_upsampling([[1.0, 2.0]])
