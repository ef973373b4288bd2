"""segcourse.viz.panels: rows of an image and maps beside it (chapter 8's figures)."""

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from segcourse.viz import show_labels, show_maps

matplotlib.use("Agg")                  # figures only, no window

PALETTE = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)


def test_show_maps_draws_each_map_and_marks_the_point():
    image = torch.rand(3, 4, 5)
    maps = {"a": torch.arange(20.0).reshape(4, 5), "b": torch.ones(4, 5)}
    fig = show_maps(image, maps, point=(1, 3))
    assert [ax.get_title() for ax in fig.axes] == ["image", "a", "b"]
    np.testing.assert_allclose(fig.axes[1].images[0].get_array(), maps["a"].numpy())
    for ax in fig.axes:                               # the cross is at column 3, row 1 everywhere
        (line,) = ax.lines
        assert list(line.get_xdata()) == [3] and list(line.get_ydata()) == [1]
    plt.close(fig)


def test_show_maps_without_point_draws_no_marker():
    fig = show_maps(torch.rand(3, 4, 5), {"a": torch.rand(4, 5)})
    assert all(not ax.lines for ax in fig.axes)
    plt.close(fig)


def test_show_labels_colours_and_hand_computed_miou():
    image = torch.rand(3, 2, 2)
    target = torch.tensor([[0, 0], [1, 1]])
    pred = torch.tensor([[0, 0], [0, 1]])
    fig = show_labels(image, {"truth": target, "pred": pred}, PALETTE, target=target)
    # class 0: 2 right of 3 predicted -> 2/3; class 1: 1 of 2 -> 1/2; class 2 absent -> not counted
    assert [ax.get_title() for ax in fig.axes] == ["image", "truth\nmIoU 1.000", "pred\nmIoU 0.583"]
    shown = fig.axes[2].images[0].get_array()
    np.testing.assert_array_equal(shown, PALETTE[pred.numpy()])
    plt.close(fig)


def test_show_labels_without_target_keeps_plain_titles():
    fig = show_labels(torch.rand(3, 2, 2), {"pred": torch.zeros(2, 2, dtype=torch.long)}, PALETTE)
    assert [ax.get_title() for ax in fig.axes] == ["image", "pred"]
    plt.close(fig)


@pytest.mark.parametrize("call, message", [
    (lambda: show_maps(torch.rand(4, 5), {"a": torch.rand(4, 5)}), "image must be"),
    (lambda: show_maps(torch.rand(3, 4, 5), {}), "maps must be a non-empty dict"),
    (lambda: show_maps(torch.rand(3, 4, 5), {"a": torch.rand(5, 4)}), r"maps\['a'\]"),
    (lambda: show_labels(torch.rand(3, 2, 2), {"p": torch.zeros(2, 2, dtype=torch.long)},
                         PALETTE, target=torch.zeros(3, 3, dtype=torch.long)), "target"),
])
def test_bad_inputs_name_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()
