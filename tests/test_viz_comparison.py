"""segcourse.viz.comparison: chapter 9's figures of models side by side."""

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from segcourse.viz import (
    plot_accuracy_vs_cost,
    plot_compute_split,
    plot_iou_per_class,
    show_model_predictions,
)

matplotlib.use("Agg")                  # figures only, no window

PALETTE = np.array([[255, 0, 0], [0, 255, 0]], dtype=np.uint8)
ROWS = [dict(model="a", params=2_000_000, gflops=4.0, latency_ms=30.0, miou=0.5, iou=[0.25, 0.75]),
        dict(model="b", params=500_000, gflops=1.0, latency_ms=10.0, miou=0.7, iou=[0.5, 0.9])]


def test_compute_split_stacks_decoder_after_encoder():
    fig = plot_compute_split({"a": (1.0, 3.0), "b": (2.5, 0.5)})
    ax = fig.axes[0]
    bars = ax.patches                                  # encoder bars first, then decoder bars
    assert [b.get_width() for b in bars] == [1.0, 2.5, 3.0, 0.5]
    assert [b.get_x() for b in bars] == [0.0, 0.0, 1.0, 2.5]   # each decoder starts where
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"]   # its encoder ends
    assert ax.get_xlabel() == "GFLOPs for one 256 x 256 image"
    plt.close(fig)


def test_accuracy_vs_cost_places_each_model_at_its_costs():
    fig = plot_accuracy_vs_cost(ROWS, below={"b"})
    params, flops, latency = fig.axes
    # parameters are plotted in millions; the other costs as they are
    for ax, xs in ((params, [2.0, 0.5]), (flops, [4.0, 1.0]), (latency, [30.0, 10.0])):
        points = np.concatenate([c.get_offsets() for c in ax.collections])
        np.testing.assert_allclose(points, [[xs[0], 0.5], [xs[1], 0.7]])
        assert ax.get_xscale() == "log"
        labels = {t.get_text(): t.xyann for t in ax.texts}
        assert labels == {"a": (5, 4), "b": (5, -11)}    # "b" is written below its dot
    plt.close(fig)


def test_iou_per_class_shows_and_writes_every_value():
    fig = plot_iou_per_class(ROWS, ["x", "y"])
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), [[0.25, 0.75], [0.5, 0.9]])
    assert [t.get_text() for t in ax.texts] == ["0.25", "0.75", "0.50", "0.90"]
    assert [t.get_color() for t in ax.texts][:2] == ["white", "black"]   # dark cell, light cell
    plt.close(fig)


def test_model_predictions_grid():
    images = torch.rand(2, 3, 3, 4)
    masks = torch.zeros(2, 3, 4, dtype=torch.long)
    preds = {"a": torch.ones(2, 3, 4, dtype=torch.long), "b": masks}
    fig = show_model_predictions(images, masks, preds, PALETTE, classes=["x", "y"])
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 2 * 4                                  # 2 images x (image, truth, a, b)
    assert [ax.get_title() for ax in panels[:4]] == ["image", "ground truth", "a", "b"]
    np.testing.assert_array_equal(panels[2].images[0].get_array(),
                                  np.broadcast_to(PALETTE[1], (3, 4, 3)))
    assert len(fig.legends) == 1
    plt.close(fig)


@pytest.mark.parametrize("call, message", [
    (lambda: plot_compute_split({"a": (1.0,)}), "split must map"),
    (lambda: plot_accuracy_vs_cost([]), "rows must be a non-empty"),
    (lambda: plot_accuracy_vs_cost([{"model": "a", "miou": 0.5}]), "'a' lacks"),
    (lambda: plot_iou_per_class(ROWS, ["only one"]), "2 IoUs per model"),
    (lambda: show_model_predictions(torch.rand(1, 3, 2, 2), torch.zeros(1, 2, 2),
                                    {"a": torch.zeros(2, 2)}, PALETTE), r"preds\['a'\]"),
])
def test_bad_inputs_name_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()
