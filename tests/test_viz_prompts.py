"""segcourse.viz.prompts: the figures of promptable segmentation (chapter 11)."""

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from segcourse.models.sam_training import sample_points
from segcourse.viz import (
    amg_figure,
    click_sequence_figure,
    draw_prompts,
    multimask_figure,
    plot_click_curves,
    prompt_figure,
)

matplotlib.use("Agg")

H, W = 32, 40  # not square: a swapped x / y shows


@pytest.fixture
def image():
    return torch.rand(3, H, W, generator=torch.Generator().manual_seed(0))


def _mask(rows, cols):
    m = torch.zeros(H, W, dtype=torch.bool)
    m[rows, cols] = True
    return m


def _pixel_of(ax, x, y):
    """(row, col) of the imshow pixel that contains data point (x, y), from the image extent."""
    left, right, bottom, top = ax.images[0].get_extent()
    rows, cols = ax.images[0].get_array().shape[:2]
    col = int(np.floor((x - left) / (right - left) * cols))
    row = int(np.floor((y - top) / (bottom - top) * rows))
    return row, col


def test_a_sampled_click_is_drawn_on_its_pixel(image):
    # sample_points gives SAM's convention: the (x, y) pixel index of a pixel of the region
    (x, y), = sample_points(_mask(5, 33)[None])[0].tolist()
    fig, ax = plt.subplots()
    ax.imshow(image.permute(1, 2, 0).numpy())
    draw_prompts(ax, torch.tensor([[x, y], [2.0, 30.0]]), torch.tensor([1, 0]))
    (px, py), = ax.collections[0].get_offsets()  # the positive one
    assert _pixel_of(ax, px, py) == (5, 33)
    (nx, ny), = ax.collections[1].get_offsets()  # the negative one
    assert _pixel_of(ax, nx, ny) == (30, 2)
    plt.close(fig)


def test_a_one_pixel_box_frames_that_pixel(image):
    fig, ax = plt.subplots()
    ax.imshow(image.permute(1, 2, 0).numpy())
    draw_prompts(ax, boxes=torch.tensor([33.0, 5.0, 34.0, 6.0]))  # x2 = last column + 1
    (x0, y0), (x1, y1) = ax.patches[0].get_bbox().get_points()
    assert (x0, y0, x1, y1) == (32.5, 4.5, 33.5, 5.5)  # imshow's edges of pixel (5, 33)
    plt.close(fig)


def test_padding_points_are_not_drawn():
    fig, ax = plt.subplots()
    draw_prompts(ax, [[1, 2], [3, 4], [0, 0]], [1, 1, -1])
    assert len(ax.collections) == 1 and len(ax.collections[0].get_offsets()) == 2
    plt.close(fig)


@pytest.mark.parametrize("kwargs, match", [
    (dict(points=[[1, 2, 3]]), "points must be"),
    (dict(points=[[1, 2]], labels=[1, 1]), "one label per point"),
    (dict(points=[[1, 2]], labels=[2]), "labels must be"),
    (dict(labels=[1]), "labels given without points"),
    (dict(boxes=[1, 2, 3]), "boxes must be"),
])
def test_draw_prompts_refuses_bad_prompts(kwargs, match):
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match=match):
        draw_prompts(ax, **kwargs)
    plt.close(fig)


def test_prompt_figure_one_panel_per_prompt_set(image):
    a, b = _mask(slice(2, 9), slice(3, 12)), _mask(slice(10, 20), slice(20, 38))
    fig = prompt_figure(image, [
        ("one click", a, [[5, 4]], [1], None, 0.931),
        dict(title="box + negative", mask=b, points=[[25, 15]], labels=[0],
             boxes=[20, 10, 38, 20], score=torch.tensor(0.5)),
    ])
    assert len(fig.axes) == 2
    assert fig.axes[0].get_title() == "one click\nIoU 0.93"
    assert fig.axes[1].get_title() == "box + negative\nIoU 0.50"
    assert len(fig.axes[1].patches) == 1 and len(fig.axes[1].collections) == 1
    plt.close(prompt_figure(image, [("no score", a, None, None, None)]))  # 5 fields: no score
    # the mask is overlaid: its pixels changed, the others kept the image
    shown = fig.axes[0].images[0].get_array()
    assert np.allclose(shown[~a.numpy()], image.permute(1, 2, 0).numpy()[~a.numpy()])
    assert not np.allclose(shown[a.numpy()], image.permute(1, 2, 0).numpy()[a.numpy()])
    plt.close(fig)


@pytest.mark.parametrize("panels, match", [
    ([], "non-empty"),
    ([("t", torch.zeros(W, H), None, None, None)], r"panels\[0\] mask"),
    ([("t", torch.zeros(H, W), None, None)], r"panels\[0\] must be"),
    ([dict(title="t")], r"panels\[0\] must have a 'mask'"),
    ([("t", torch.zeros(H, W), None, None, None, "high")], r"panels\[0\] score"),
])
def test_prompt_figure_refuses_bad_panels(image, panels, match):
    with pytest.raises(ValueError, match=match):
        prompt_figure(image, panels)


def test_multimask_figure_frames_the_highest_scoring_mask(image):
    masks = torch.stack([_mask(slice(0, 4), slice(0, 4)), _mask(slice(0, 8), slice(0, 8)),
                         _mask(slice(0, 16), slice(0, 16))])
    target = _mask(slice(0, 8), slice(0, 4))  # 32 px: mask 1 has 16 of them, mask 2 all of 64
    fig = multimask_figure(image, [1, 1], masks, torch.tensor([0.2, 0.9, 0.4]), target)
    assert len(fig.axes) == 3
    assert fig.axes[0].get_title() == "mask 1: predicted IoU 0.20\ntrue IoU 0.50"
    assert fig.axes[1].get_title() == "mask 2: predicted IoU 0.90\ntrue IoU 0.50"
    assert fig.axes[2].get_title().endswith("true IoU 0.12")  # 32 / 256
    widths = [ax.spines["left"].get_linewidth() for ax in fig.axes]
    assert widths[1] == 3 and widths[0] != 3 and widths[2] != 3
    plt.close(fig)


@pytest.mark.parametrize("args, match", [
    (dict(masks=torch.zeros(3, H, W + 1)), "masks must be"),
    (dict(iou_scores=torch.ones(2)), "iou_scores must hold"),
    (dict(point=[[1, 1], [2, 2]]), "point must be one"),
    (dict(target=torch.zeros(H)), "target must be"),
])
def test_multimask_figure_refuses_bad_inputs(image, args, match):
    kwargs = dict(point=[1, 1], masks=torch.zeros(3, H, W), iou_scores=torch.ones(3))
    kwargs.update(args)
    with pytest.raises(ValueError, match=match):
        multimask_figure(image, **kwargs)


def test_click_curves_one_line_per_setting_and_threshold():
    fig = plot_click_curves({"first: point": [0.5, 0.7, 0.8, 0.86, 0.9],
                             "first: box": [0.8, 0.85, 0.9]},
                            thresholds=(0.85, 0.9), references={"Mask R-CNN": 0.75})
    ax = fig.axes[0]
    assert len(ax.lines) == 2 + 1 + 2  # curves, reference, thresholds
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(ax.get_xticks(), [1, 2, 3, 4, 5])
    dashed = [line.get_ydata()[0] for line in ax.lines if line.get_linestyle() == "--"]
    assert dashed == [0.85, 0.9]
    plt.close(fig)


@pytest.mark.parametrize("curves, refs, match", [
    ({}, None, "curves must be"),
    ({"a": [0.5, 1.2]}, None, r"curves\['a'\]"),
    ({"a": []}, None, r"curves\['a'\]"),
    ({"a": [0.5]}, {"b": float("nan")}, r"references\['b'\]"),
    ({"a": [0.5]}, [0.7], "references must be a dict"),
])
def test_click_curves_refuse_bad_values(curves, refs, match):
    with pytest.raises(ValueError, match=match):
        plot_click_curves(curves, references=refs)


def test_click_sequence_rings_the_newest_click(image):
    target = _mask(slice(4, 20), slice(6, 30))
    steps = [(_mask(slice(4, 12), slice(6, 20)), [[10, 8]], [1], 0.3),
             (target, [[10, 8], [25, 17], [0, 0]], [1, 1, -1], 1.0)]
    fig = click_sequence_figure(image, target, steps)
    assert len(fig.axes) == 3
    assert [ax.get_title() for ax in fig.axes] == ["target", "click 1: IoU 0.30",
                                                    "click 2: IoU 1.00"]
    ring = fig.axes[2].collections[-1]  # drawn last: the ring around the newest real click
    np.testing.assert_array_equal(ring.get_offsets(), [[25, 17]])
    plt.close(fig)


def test_click_sequence_refuses_bad_steps(image):
    with pytest.raises(ValueError, match="steps must be"):
        click_sequence_figure(image, None, [])
    with pytest.raises(ValueError, match=r"steps\[0\] must be"):
        click_sequence_figure(image, None, [(torch.zeros(H, W), [[1, 1]], [1])])
    with pytest.raises(ValueError, match=r"steps\[0\] mask"):
        click_sequence_figure(image, None, [(torch.zeros(H, H), [[1, 1]], [1], 0.5)])


def test_amg_figure_paints_every_mask_and_its_points(image):
    small, large = _mask(slice(2, 4), slice(2, 4)), _mask(slice(0, 16), slice(0, 20))
    fig = amg_figure(image, torch.stack([small, large]), torch.tensor([0.95, 0.9]),
                     points=torch.tensor([[2.5, 2.5], [10.0, 8.0]]))
    assert len(fig.axes) == 2 and fig.axes[1].get_title() == "2 masks, predicted IoU >= 0.90"
    np.testing.assert_array_equal(fig.axes[1].collections[0].get_offsets(),
                                  [[2.5, 2.5], [10.0, 8.0]])
    shown = fig.axes[1].images[0].get_array()
    # the small mask sits inside the large one and is painted after it, in its own colour
    assert not np.allclose(shown[3, 3], shown[10, 10])
    plt.close(fig)


def test_amg_figure_with_no_masks_and_bad_inputs(image):
    fig = amg_figure(image, torch.zeros(0, H, W, dtype=torch.bool))
    assert fig.axes[1].get_title() == "0 masks"
    plt.close(fig)
    with pytest.raises(ValueError, match="masks must be"):
        amg_figure(image, torch.zeros(H, W))
    with pytest.raises(ValueError, match="scores must hold"):
        amg_figure(image, torch.zeros(2, H, W), scores=[0.9])


def test_click_curves_without_thresholds():
    fig = plot_click_curves({"a": [0.5, 0.6]}, thresholds=())
    assert len(fig.axes[0].lines) == 1
    plt.close(fig)
