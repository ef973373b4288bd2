"""segcourse.viz.attention: the cost curves and token maps of chapter 5."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from segcourse.viz import plot_attention_cost, plot_token_maps  # noqa: E402

SIDES = [128, 256, 512]


def test_attention_cost_draws_each_curve_on_log_axes():
    gflops = {"a": [1.0, 4.0, 16.0], "b": torch.tensor([2.0, 3.0, 5.0])}
    mib = {"weights": np.array([0.5, 8.0, 128.0])}
    fig = plot_attention_cost(SIDES, gflops, mib, memory_title="naive")
    left, right = fig.axes
    assert [line.get_label() for line in left.lines] == ["a", "b"]
    np.testing.assert_allclose(left.lines[1].get_ydata(), [2.0, 3.0, 5.0])
    np.testing.assert_allclose(right.lines[0].get_xdata(), SIDES)
    np.testing.assert_allclose(right.lines[0].get_ydata(), [0.5, 8.0, 128.0])
    assert left.get_yscale() == right.get_yscale() == "log"
    assert right.get_title() == "naive"
    plt.close(fig)


@pytest.mark.parametrize("gflops, mib, match", [
    ({"a": [1.0, 2.0]}, {"m": [1.0, 2.0, 3.0]}, r"gflops\['a'\] has 2 values for 3"),
    ({"a": [1.0, 2.0, 3.0]}, {}, "mib must be a non-empty dict"),
    ({"a": [1.0, 0.0, 3.0]}, {"m": [1.0, 2.0, 3.0]}, "must be positive"),
    ([1.0, 2.0, 3.0], {"m": [1.0, 2.0, 3.0]}, "gflops must be a non-empty dict"),
])
def test_attention_cost_rejects_bad_curves(gflops, mib, match):
    with pytest.raises(ValueError, match=match):
        plot_attention_cost(SIDES, gflops, mib)


def test_attention_cost_needs_two_positive_sides():
    with pytest.raises(ValueError, match="sides"):
        plot_attention_cost([256], {"a": [1.0]}, {"m": [1.0]})


def test_token_maps_one_panel_per_map_with_its_values():
    grid = torch.arange(12.0).reshape(3, 4)
    fig = plot_token_maps({"first": grid, "second": torch.ones(3, 4)})
    assert [ax.get_title() for ax in fig.axes] == ["first", "second"]
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), grid.numpy())
    assert not fig.axes[0].axison
    plt.close(fig)


@pytest.mark.parametrize("maps, match", [
    ({}, "non-empty dict"),
    ({"flat": torch.ones(5)}, r"maps\['flat'\] must be \[H, W\]"),
])
def test_token_maps_rejects_bad_maps(maps, match):
    with pytest.raises(ValueError, match=match):
        plot_token_maps(maps)
