"""segcourse.viz.queries: the figures of mask classification (chapter 10)."""

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from segcourse.viz import (
    matching_figure,
    plot_cost_matrix,
    plot_layer_maps,
    plot_query_gallery,
    three_tasks_figure,
)

matplotlib.use("Agg")


def test_cost_matrix_circles_the_matched_cells():
    cost = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.5, 0.5]])
    fig = plot_cost_matrix(cost, [0, 1], [0, 1], col_names=["circle", "square"])
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), cost.numpy())
    # offsets are (x, y) = (col, row)
    np.testing.assert_array_equal(ax.collections[0].get_offsets(), [[0, 0], [1, 1]])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["circle", "square"]
    plt.close(fig)


@pytest.mark.parametrize("rows, cols", [([0], [0, 1]), ([3], [0]), ([0], [2])])
def test_cost_matrix_refuses_pairs_outside(rows, cols):
    with pytest.raises(ValueError, match="rows and cols|index"):
        plot_cost_matrix(torch.zeros(3, 2), rows, cols)


def test_matching_figure_puts_each_object_over_its_query():
    image = torch.rand(3, 6, 7)
    targets = torch.zeros(2, 6, 7)
    targets[0, :3], targets[1, 3:] = 1, 1
    preds = torch.rand(4, 6, 7)
    # query 3 took object 1, query 0 took object 0: columns in object order
    fig = matching_figure(image, targets, ["a", "b"], preds, rows=[3, 0], cols=[1, 0],
                          pred_names=[f"q{i}" for i in range(4)])
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["object 0\na", "object 1\nb", "query 0\nq0", "query 3\nq3"]
    np.testing.assert_allclose(fig.axes[3].images[1].get_array(), preds[3].numpy())
    plt.close(fig)


def test_matching_figure_checks_sizes_and_names():
    image = torch.rand(3, 6, 7)
    with pytest.raises(ValueError, match="target_masks"):
        matching_figure(image, torch.zeros(1, 5, 7), ["a"], torch.zeros(1, 6, 7), [0], [0])
    with pytest.raises(ValueError, match="names"):
        matching_figure(image, torch.zeros(1, 6, 7), [], torch.zeros(1, 6, 7), [0], [0])
    with pytest.raises(ValueError, match="empty"):
        matching_figure(image, torch.zeros(1, 6, 7), ["a"], torch.zeros(1, 6, 7), [], [])


def test_layer_maps_grid_upsamples_each_map_to_the_image():
    image = torch.rand(3, 8, 8)
    attention = torch.zeros(3, 2, 2)
    attention[1, 0, 1] = 1.0                     # layer 1: the top-right quarter
    fig = plot_layer_maps(image, {"attention": attention, "mask": torch.rand(3, 4, 4)},
                          titles=["0", "1", "2"])
    assert len(fig.axes) == 6
    shown = fig.axes[1].images[1].get_array()
    assert shown.shape == (8, 8) and shown[:4, 4:].min() == 1 and shown[4:].max() == 0
    assert fig.axes[0].get_ylabel() == "attention" and fig.axes[3].get_ylabel() == "mask"
    plt.close(fig)


def test_layer_maps_take_maps_of_different_sizes():
    fig = plot_layer_maps(torch.rand(3, 8, 8), {"a": [torch.ones(2, 2), torch.ones(4, 4)]})
    assert [ax.images[1].get_array().shape for ax in fig.axes] == [(8, 8), (8, 8)]
    plt.close(fig)


def test_layer_maps_need_equal_layers():
    with pytest.raises(ValueError, match="same number of layers"):
        plot_layer_maps(torch.rand(3, 8, 8), {"a": torch.rand(2, 4, 4), "b": torch.rand(3, 4, 4)})
    with pytest.raises(ValueError, match="titles"):
        plot_layer_maps(torch.rand(3, 8, 8), {"a": torch.rand(2, 4, 4)}, titles=["x"])


def test_query_gallery_one_panel_per_query_rest_hidden():
    fig = plot_query_gallery(torch.rand(5, 4, 4), [f"q{i}" for i in range(5)], columns=3)
    visible = [ax for ax in fig.axes if ax.axison]
    assert [ax.get_title() for ax in visible] == ["q0", "q1", "q2", "q3", "q4"]
    assert len(fig.axes) == 6
    with pytest.raises(ValueError, match="titles"):
        plot_query_gallery(torch.rand(5, 4, 4), ["a"])
    plt.close("all")


PALETTE = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)


def test_three_tasks_figure_draws_each_answer():
    images = torch.rand(2, 3, 4, 4)
    masks = torch.zeros(2, 4, 4, dtype=torch.long)
    semantic = masks.clone()
    semantic[:, :, 2:] = 2
    object_mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    object_mask[:, :, 2:] = True
    panoptic = torch.stack([semantic[0], object_mask[0].long()], -1)
    segment = {"masks": torch.cat([object_mask, object_mask]), "scores": torch.tensor([0.9, 0.2]),
               "panoptic": panoptic}
    fig = three_tasks_figure(images, masks, semantic, [segment, segment], PALETTE)
    assert len(fig.axes) == 10
    assert [ax.get_title() for ax in fig.axes[:5]] == [
        "image", "truth", "semantic", "instances (score ≥ 0.5)", "panoptic"]
    shown = fig.axes[2].images[0].get_array()
    np.testing.assert_array_equal(shown[0, 3], [0, 0, 255])            # class 2 is blue
    plt.close(fig)


def test_three_tasks_figure_checks_inputs():
    images = torch.rand(1, 3, 4, 4)
    masks = torch.zeros(1, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="semantic"):
        three_tasks_figure(images, masks, masks[:, :3], [{}], PALETTE)
    with pytest.raises(ValueError, match="segments"):
        three_tasks_figure(images, masks, masks, [{"masks": 1}], PALETTE)
