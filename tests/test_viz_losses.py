"""segcourse.viz.losses: the figures of chapter 6."""

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from segcourse.viz import plot_boundary_errors, plot_focal_loss, plot_loss_comparison  # noqa: E402


def test_focal_loss_curves_match_the_formula():
    fig = plot_focal_loss(gammas=(0, 2))
    ce, focal = fig.axes[0].lines
    pt = ce.get_xdata()
    i = int(np.argmin(abs(pt - 0.5)))                    # a sample near p_t = 1/2
    assert ce.get_ydata()[i] == pytest.approx(-math.log(pt[i]))
    assert focal.get_ydata()[i] == pytest.approx(-(1 - pt[i]) ** 2 * math.log(pt[i]))
    assert ce.get_ydata()[-1] == pytest.approx(0) and pt[-1] == 1  # a sure pixel costs 0
    assert [line.get_label() for line in fig.axes[0].lines] == ["$\\gamma = 0$", "$\\gamma = 2$"]
    plt.close(fig)


@pytest.mark.parametrize("gammas", [(), (-1.0,), (float("nan"),)])
def test_focal_loss_rejects_bad_gammas(gammas):
    with pytest.raises(ValueError, match="gammas"):
        plot_focal_loss(gammas)


def test_loss_comparison_bars_are_the_scores():
    results = {"CE": {"miou": 0.5, "iou": torch.tensor([0.9, 0.0])},
               "Dice": {"miou": 0.7, "iou": torch.tensor([0.8, 0.6])}}
    fig = plot_loss_comparison(results, rare=1, rare_name="triangle")
    bars = fig.axes[0].patches
    assert [b.get_height() for b in bars] == pytest.approx([0.5, 0.7, 0.0, 0.6])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["CE", "Dice"]
    assert "triangle" in fig.axes[0].get_legend().get_texts()[1].get_text()
    plt.close(fig)


@pytest.mark.parametrize("results, rare, match", [
    ({}, 0, "non-empty dict"),
    ({"CE": {"miou": 0.5}}, 0, r"results\['CE'\] needs 'miou' and 'iou'"),
    ({"CE": {"miou": 0.5, "iou": [0.4, 0.6]}}, 2, "rare must index the 2 classes"),
])
def test_loss_comparison_rejects_bad_input(results, rare, match):
    with pytest.raises(ValueError, match=match):
        plot_loss_comparison(results, rare)


def test_boundary_errors_colours_right_and_wrong_band_pixels():
    masks = torch.tensor([[[0, 1], [0, 1]]])
    band = torch.tensor([[[True, True], [False, True]]])
    pred = torch.tensor([[[0, 0], [1, 1]]])           # band: right, wrong; off-band; right
    fig = plot_boundary_errors({"model": pred}, masks, band, count=5)   # count capped at N
    (ax,) = fig.axes
    canvas = ax.images[0].get_array()
    np.testing.assert_allclose(canvas[0, 0], (0.2, 0.6, 0.2))   # right: green
    np.testing.assert_allclose(canvas[0, 1], (0.85, 0.1, 0.1))  # wrong: red
    np.testing.assert_allclose(canvas[1, 0], (0.85, 0.85, 0.85))  # not in the band: grey
    assert ax.get_title() == "model: 67% right"
    plt.close(fig)


def test_boundary_errors_rejects_mismatched_shapes():
    masks = torch.zeros(2, 4, 4, dtype=torch.long)
    band = torch.zeros(2, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"preds\['a'\] has shape"):
        plot_boundary_errors({"a": torch.zeros(2, 4, 5, dtype=torch.long)}, masks, band)
    with pytest.raises(ValueError, match="masks and band"):
        plot_boundary_errors({"a": masks}, masks, band[:, :3])
    with pytest.raises(ValueError, match="non-empty dict"):
        plot_boundary_errors({}, masks, band)
