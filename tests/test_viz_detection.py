"""segcourse.viz.detection: chapter 7's figures draw what they are given, where they say."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from segcourse.data import ShapesDataset  # noqa: E402
from segcourse.viz import (  # noqa: E402
    colorize,
    counting_figure,
    detections_figure,
    draw_boxes,
    paint_instances,
    paint_panoptic,
    panoptic_figure,
    pipeline_figure,
    pq_example_figure,
    roi_sampling_figure,
    shift_response_figure,
)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def data():
    return ShapesDataset(num_samples=3, size=32, seed=4)


def _rects(ax):
    return [p for p in ax.patches if isinstance(p, plt.Rectangle)]


def _detections(sample, scores):
    """The ground truth of ``sample`` as Panoptic FPN output, with the given scores."""
    n = len(sample.instance_classes)
    masks = sample.instances[None] == torch.arange(1, n + 1)[:, None, None]
    logits = torch.zeros(3, *sample.mask.shape)
    logits[0] = 1.0  # the semantic head says "sky" everywhere
    return {"boxes": sample.boxes, "scores": torch.tensor(scores[:n]), "masks": masks,
            "categories": sample.instance_classes, "semantic_logits": logits,
            "panoptic": torch.stack([sample.mask, sample.instances], dim=-1)}


def test_draw_boxes_at_pixel_edges_with_labels():
    fig, ax = plt.subplots()
    draw_boxes(ax, torch.tensor([[2.0, 3.0, 10.0, 7.0], [0.0, 0.0, 1.0, 1.0]]), ["r", "b"],
               labels=["a", "b"])
    rects = _rects(ax)
    assert [r.get_xy() for r in rects] == [(1.5, 2.5), (-0.5, -0.5)]
    assert [(r.get_width(), r.get_height()) for r in rects] == [(8.0, 4.0), (1.0, 1.0)]
    assert [t.get_text() for t in ax.texts] == ["a", "b"]


def test_paint_instances_and_panoptic_colours():
    image = torch.full((3, 4, 4), 0.8)
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, :2, :2] = True
    picture, colours = paint_instances(image, mask)
    np.testing.assert_allclose(picture[3, 3], [0.8 * 0.45] * 3, rtol=1e-6)
    np.testing.assert_allclose(picture[0, 0], 0.35 * 0.8 * 0.45 + 0.65 * np.array(colours[0]),
                               rtol=1e-6)
    palette = np.array([[10, 20, 30], [200, 100, 0]], dtype=np.uint8)
    category = torch.tensor([[0, 0, 0], [0, 1, 1], [-1, 1, 1]])
    instance = torch.tensor([[0, 0, 0], [0, 1, 1], [0, 1, 1]])
    rgb = paint_panoptic(category, instance, palette)
    np.testing.assert_allclose(rgb[0, 0], palette[0] / 255)     # inside a segment: its class
    np.testing.assert_allclose(rgb[2, 2], palette[1] / 255)
    np.testing.assert_allclose(rgb[1, 1], [1.0, 1.0, 1.0])      # segment changes: white edge
    np.testing.assert_allclose(rgb[2, 0], [1.0, 1.0, 1.0])      # void next to a thing: edge


def test_counting_figure_numbers_regions_class_after_class(data):
    sample = data.sample(0)

    def one_region(mask):  # a stand-in labelling: the whole class is one region
        return mask.long()

    fig = counting_figure(sample, data, one_region)
    assert [ax.get_title() for ax in fig.axes] == ["image", "semantic mask",
                                                   "its connected regions", "true instances"]
    np.testing.assert_array_equal(fig.axes[1].images[0].get_array(),
                                  colorize(sample.mask, data.palette))
    regions = fig.axes[2].images[1].get_array()  # drawn over the darkened image
    present = [c for c in data.thing_classes if (sample.mask == c).any()]
    assert regions.max() == len(present)


def test_roi_sampling_figure_draws_every_bin_and_checks_its_input():
    cells = {(0, 0): (1, 3, 2, 4), (0, 1): (1, 3, 3, 5), (1, 0): (2, 4, 2, 4), (1, 1): (2, 4, 3, 5)}
    fig = roi_sampling_figure((1.6, 1.3, 4.7, 3.6), cells)
    left, right = fig.axes
    assert len(_rects(left)) == 1 + 4    # the box and one shaded rectangle per bin
    assert len(_rects(right)) == 1 + 4   # the box and the four exact bins
    points = [line for line in right.lines if line.get_marker() == "o"]
    assert len(points) == 4 * 4          # 2 x 2 samples in each of the 2 x 2 bins
    with pytest.raises(ValueError, match="2x2 bins"):
        roi_sampling_figure((1.6, 1.3, 4.7, 3.6), {(0, 0): (1, 3, 2, 4)})


def test_shift_response_figure_one_line_per_curve():
    fig = shift_response_figure([0, 1, 2], {"RoIPool": [0, 0, 1], "RoIAlign": [0, 0.5, 1]})
    (ax,) = fig.axes
    assert [line.get_label() for line in ax.lines] == ["RoIPool", "RoIAlign"]
    assert ax.lines[0].get_drawstyle() == "steps-post" and ax.lines[1].get_drawstyle() == "default"
    with pytest.raises(ValueError, match="2 values for 3 shifts"):
        shift_response_figure([0, 1, 2], {"RoIAlign": [0, 1]})


def test_pipeline_and_detections_figures_draw_only_confident_detections(data):
    sample = data.sample(1)
    n = len(sample.instance_classes)
    out = _detections(sample, [0.9, 0.3, 0.8, 0.7, 0.6][:n])
    anchors = torch.tensor([[0.0, 0.0, 8.0, 8.0]]).repeat(12, 1)
    proposals = torch.tensor([[1.0, 1.0, 9.0, 9.0]]).repeat(40, 1)
    fig = pipeline_figure(sample.image, anchors, proposals, out, data)
    kept = int((out["scores"] >= 0.5).sum())
    assert [len(_rects(ax)) for ax in fig.axes] == [12, 30, kept]
    assert fig.axes[0].get_title().startswith("anchors at one location, P2..P5")
    predictions = {1: out}
    fig = detections_figure(data, predictions, [1])
    assert [len(_rects(ax)) for ax in fig.axes] == [kept, n]
    with pytest.raises(ValueError, match="missing \\['categories'\\]"):
        pipeline_figure(sample.image, anchors, proposals, {k: out[k] for k in
                                                           ("boxes", "scores", "masks")}, data)


def test_panoptic_figure_shows_the_fused_map(data):
    sample = data.sample(2)
    out = _detections(sample, [0.9, 0.8, 0.7, 0.6, 0.5])
    fig = panoptic_figure(sample, out, data)
    assert len(fig.axes) == 5
    fused = fig.axes[3].images[0].get_array()
    np.testing.assert_allclose(fused, paint_panoptic(sample.mask, sample.instances, data.palette))
    semantic = fig.axes[2].images[0].get_array()
    assert (semantic == data.palette[data.stuff_classes[0]]).all()  # "sky" everywhere


def test_pq_example_figure_writes_every_pixel():
    gt = torch.zeros(3, 4, 2, dtype=torch.long)
    gt[0, 0] = torch.tensor([2, 1])
    fig = pq_example_figure(gt, gt)
    assert [len(ax.texts) for ax in fig.axes] == [12, 12]
    assert fig.axes[0].texts[0].get_text() == "2,1"
    with pytest.raises(ValueError, match="H, W, 2"):
        pq_example_figure(gt[..., 0], gt)
