"""segcourse.viz.tasks: chapter 1's figures draw what they are given, where they say."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from segcourse.data import ShapesDataset  # noqa: E402
from segcourse.viz import colorize, show_augmented, show_panels, show_tasks  # noqa: E402

PALETTE = np.array([[0, 0, 0], [255, 0, 0], [0, 0, 255]], dtype=np.uint8)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_show_tasks_five_panels_boxes_and_masks():
    data = ShapesDataset(num_samples=2, size=48, seed=7)
    sample = data.sample(1)
    fig = show_tasks(sample, data.classes, data.palette)
    axes = fig.axes
    assert len(axes) == 5
    titles = [ax.get_title().split("\n")[0] for ax in axes]
    assert titles == ["classification", "detection", "semantic", "instance", "panoptic"]
    present = sorted(set(sample.mask.unique().tolist()))
    assert axes[0].get_title().split("\n")[1] == ", ".join(data.classes[c] for c in present)
    # one rectangle per instance, at its box (pixel edges are at -0.5)
    rects = [p for p in axes[1].patches if isinstance(p, plt.Rectangle)]
    assert len(rects) == len(sample.boxes)
    for rect, (x1, y1, x2, y2) in zip(rects, sample.boxes.tolist()):
        assert rect.get_xy() == (x1 - 0.5, y1 - 0.5)
        assert (rect.get_width(), rect.get_height()) == (x2 - x1, y2 - y1)
    # the semantic panel is exactly the coloured mask
    np.testing.assert_array_equal(axes[2].images[0].get_array(),
                                  colorize(sample.mask, data.palette))
    # panoptic: stuff keeps its class colour, things are shaded by the parity of their id
    panoptic = np.asarray(axes[4].images[0].get_array())
    stuff = sample.instances.numpy() == 0
    np.testing.assert_array_equal(panoptic[stuff], colorize(sample.mask, data.palette)[stuff])
    assert len(fig.legends[0].get_texts()) == len(data.classes)


def test_show_tasks_rejects_mismatched_palette():
    data = ShapesDataset(num_samples=1, size=32, seed=0)
    with pytest.raises(ValueError, match="palette"):
        show_tasks(data.sample(0), data.classes, data.palette[:2])


def test_show_panels_one_row_in_order_channel_first_images_transposed():
    image = torch.rand(3, 5, 4)
    mask = torch.tensor([[0, 1], [2, 255]])
    fig = show_panels({"image": image, "mask": colorize(mask, PALETTE)}, suptitle="two")
    assert [ax.get_title() for ax in fig.axes] == ["image", "mask"]
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), image.permute(1, 2, 0))
    np.testing.assert_array_equal(fig.axes[1].images[0].get_array()[1, 1], [255, 255, 255])
    assert fig._suptitle.get_text() == "two"
    with pytest.raises(ValueError, match="panels"):
        show_panels({})


def test_show_augmented_images_on_top_masks_below():
    pairs = [(torch.full((3, 4, 4), v), torch.full((4, 4), k)) for v, k in ((0.2, 1), (0.9, 2))]
    fig = show_augmented(pairs, PALETTE)
    assert len(fig.axes) == 4
    top, bottom = fig.axes[:2], fig.axes[2:]
    np.testing.assert_allclose(top[1].images[0].get_array(), np.full((4, 4, 3), 0.9))
    np.testing.assert_array_equal(bottom[0].images[0].get_array()[0, 0], PALETTE[1])
    np.testing.assert_array_equal(bottom[1].images[0].get_array()[0, 0], PALETTE[2])
    with pytest.raises(ValueError, match="pairs"):
        show_augmented([], PALETTE)
