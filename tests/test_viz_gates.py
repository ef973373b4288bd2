"""segcourse.viz.gates: each gate's coefficients drawn over the image they gate."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from segcourse.models.unet import AttentionUNet  # noqa: E402
from segcourse.viz import show_attention_gates  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_maps_of_every_resolution_cover_the_image_on_one_scale():
    images = torch.rand(2, 3, 20, 12)
    maps = [torch.full((2, 1, 20, 12), 0.25), torch.full((2, 1, 10, 6), 0.5),
            torch.full((2, 1, 5, 3), 0.75)]
    maps[1][1, 0, 0, 0] = 0.9  # image 1, level 1: one marked coefficient
    fig = show_attention_gates(images, maps, levels=(0, 1, 2))
    grid = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(grid) == 2 * 4
    assert [ax.get_title() for ax in grid[:4]] == [
        "image", "α, full-resolution skip", "α, 1/2-resolution skip", "α, 1/4-resolution skip"]
    np.testing.assert_allclose(grid[0].images[0].get_array(), images[0].permute(1, 2, 0))
    level1_of_image1 = grid[4 + 2].images[0]
    assert level1_of_image1.get_array().shape == (10, 6)
    assert level1_of_image1.get_array()[0, 0] == pytest.approx(0.9)
    for ax in grid[1:4]:
        image = ax.images[0]
        assert image.get_extent() == [-0.5, 11.5, 19.5, -0.5]  # the image's pixel grid
        assert image.get_clim() == (0, 1)


def test_outlines_drawn_from_masks_and_ignore_pixels_skipped():
    images = torch.rand(1, 3, 8, 8)
    maps = [torch.rand(1, 1, 8, 8)]
    masks = torch.zeros(1, 8, 8, dtype=torch.long)
    masks[0, 2:6, 2:6] = 2
    fig = show_attention_gates(images, maps, masks, levels=(0,))
    ax = fig.axes[1]
    assert len(ax.collections) > 0                   # the contour of the square
    void = torch.full((1, 8, 8), 255)
    fig = show_attention_gates(images, maps, void, levels=(0,))
    assert len(fig.axes[1].collections) == 0        # nothing but ignore: no outline


def test_with_a_real_attention_unet_and_bad_levels():
    model = AttentionUNet(3, base_channels=4).eval()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        model(images)
    fig = show_attention_gates(images, model.attention_maps, levels=(0, 1, 2, 3))
    assert len([ax for ax in fig.axes if ax.get_label() != "<colorbar>"]) == 2 * 5
    with pytest.raises(ValueError, match="levels"):
        show_attention_gates(images, model.attention_maps, levels=(4,))
    with pytest.raises(ValueError, match="images"):
        show_attention_gates(images[0], model.attention_maps)
    with pytest.raises(ValueError, match="holds 2 maps"):
        show_attention_gates(images[:1], model.attention_maps)
