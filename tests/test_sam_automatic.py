"""Automatic mask generation: hand cases, the reference's formulas, HF's filtering, mask AP."""

import pytest
import torch

from segcourse.metrics.instance import mask_average_precision
from segcourse.models.sam import postprocess_masks, sam
from segcourse.models.sam_automatic import (
    build_point_grid,
    connected_components,
    generate_masks,
    mask_boxes,
    remove_small_regions,
    stability_score,
)

LOW = 32  # low-res mask side of the tiny SAM (64-px input, 8 x 8 embedding)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = sam("tiny").eval()
    with torch.no_grad():  # off the init, so the masks and IoUs vary with the point
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def _square(r0, r1, c0, c1, inside=10.0):
    x = torch.full((LOW, LOW), -10.0)
    x[r0:r1, c0:c1] = inside
    return x


# low-res logits: A and B are sharp (+-10), C is soft (0.5 inside: unstable)
A, B, C = _square(4, 12, 4, 12), _square(16, 28, 10, 30), _square(4, 12, 20, 28, inside=0.5)


def _fake_decoder(model, monkeypatch, masks=(A, B, C), ious=(0.99, 0.95, 0.97)):
    """Every point prompt gets the same three masks and predicted IoUs."""
    def decode(embeddings, points, point_labels, boxes=None, mask_inputs=None,
               multimask_output=True):
        P = points.shape[1]
        return {"mask_logits": torch.stack(masks).expand(1, P, -1, -1, -1).clone(),
                "iou_scores": torch.tensor(ious).expand(1, P, -1).clone()}
    monkeypatch.setattr(model, "decode", decode)


def _up(low):  # where a +-10 low-res square lands at 64 px: twice the size
    return torch.nn.functional.interpolate(low[None, None], (64, 64), mode="bilinear",
                                           align_corners=False)[0, 0] > 0


def test_stability_score_by_hand_and_reference_formula():
    x = torch.tensor([[3.0, 0.5, -0.5], [2.0, -2.0, 0.2]])
    # > +1: {3, 2} = 2 pixels; > -1: {3, .5, -.5, 2, .2} = 5 pixels
    assert stability_score(x).item() == pytest.approx(2 / 5)
    assert stability_score(x, threshold=0.4, offset=0.2).item() == pytest.approx(2 / 3)
    logits = torch.randn(4, 3, 20, 24) * 3
    ref = (logits > 1).sum((-1, -2)) / (logits > -1).sum((-1, -2))  # calculate_stability_score
    torch.testing.assert_close(stability_score(logits), ref.float())
    assert stability_score(torch.full((1, 4, 4), -5.0)).isnan().all()  # 0 / 0, as the reference


def test_point_grid_cell_centres():
    torch.testing.assert_close(build_point_grid(2), torch.tensor(
        [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]))
    g = build_point_grid(4)
    assert g.shape == (16, 2) and g[1].tolist() == [0.375, 0.125]


def test_mask_boxes_and_components_by_hand():
    m = torch.zeros(2, 5, 6, dtype=torch.bool)
    m[0, 1:3, 2:5] = True
    assert mask_boxes(m).tolist() == [[2, 1, 4, 2], [0, 0, 0, 0]]  # inclusive; empty -> 0s
    mask = torch.tensor([[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 0, 1], [1, 1, 0, 1]]).bool()
    assert connected_components(mask).tolist() == [[1, 0, 0, 2], [0, 1, 0, 0],
                                                   [0, 0, 0, 3], [4, 4, 0, 3]]  # 8-connected
    ring = torch.ones(7, 7, dtype=torch.bool)
    ring[3, 3] = False  # a one-pixel hole
    ring[0, 6] = False
    big = ring.clone()
    filled, changed = remove_small_regions(ring, 2, "holes")
    assert changed and filled[3, 3] and filled[0, 6]
    same, changed = remove_small_regions(big, 1, "holes")  # nothing below 1 pixel
    assert not changed and torch.equal(same, big)
    islands = torch.zeros(8, 8, dtype=torch.bool)
    islands[0:3, 0:3] = True
    islands[6, 6] = True
    out, changed = remove_small_regions(islands, 4, "islands")
    assert changed and out.sum() == 9 and not out[6, 6]
    out, _ = remove_small_regions(islands, 100, "islands")  # all small: keep the largest
    assert out.sum() == 9


def test_candidates_before_nms_are_three_per_point(model):
    image = torch.rand(3, 48, 64)
    out = generate_masks(model, image, points_per_side=4, pred_iou_thresh=0.0,
                         stability_score_thresh=0.0, box_nms_thresh=1.0, points_per_batch=5)
    assert len(out["masks"]) == 3 * 4 ** 2
    assert out["masks"].shape == (48, 48, 64) and out["masks"].dtype == torch.bool
    assert out["boxes"].shape == (48, 4) and out["points"].shape == (48, 2)
    assert (out["labels"] == 1).all() and (out["scores"].diff() <= 0).all()
    # the same masks as prompting Sam.predict with each grid point
    grid = build_point_grid(4) * torch.tensor([64.0, 48.0])
    ref = model.predict(image[None], grid[None, :, None], torch.ones(1, 16, 1, dtype=torch.long))
    order = ref["iou_scores"].flatten().sort(descending=True, stable=True).indices
    torch.testing.assert_close(out["scores"], ref["iou_scores"].flatten()[order])
    torch.testing.assert_close(out["points"], grid.repeat_interleave(3, 0)[order])
    logits = postprocess_masks(ref["mask_logits"][0], (48, 64), 64).flatten(0, 1)[order]
    # batches of 5 and of 16 round differently: only pixels with a logit within 1e-4 of the
    # threshold may flip
    sure = logits.abs() > 1e-4
    assert torch.equal(out["masks"] & sure, ref["masks"].flatten(0, 2)[order] & sure)
    assert torch.equal(out["masks"] & sure, (logits > 0) & sure)
    torch.testing.assert_close(out["stability"], stability_score(logits), equal_nan=True,
                               atol=1e-2, rtol=0)


def test_filters_and_nms_on_known_masks(model, monkeypatch):
    _fake_decoder(model, monkeypatch)
    image = torch.rand(3, 64, 64)
    out = generate_masks(model, image, points_per_side=3)
    # C (unstable) is filtered, the 9 copies of A and of B collapse to one each by NMS
    assert out["scores"].tolist() == pytest.approx([0.99, 0.95])
    assert torch.equal(out["masks"], torch.stack([_up(A), _up(B)]))
    assert out["boxes"].tolist() == [[8, 8, 24, 24], [20, 32, 60, 56]]  # x2, y2 exclusive
    assert out["stability"].tolist() == [1.0, 1.0]
    # no filters: 27 candidates, NMS leaves A, C, B (C's box does not overlap A's)
    out = generate_masks(model, image, points_per_side=3, pred_iou_thresh=0.0,
                         stability_score_thresh=0.0, box_nms_thresh=1.0)
    assert len(out["masks"]) == 27
    out = generate_masks(model, image, points_per_side=3, pred_iou_thresh=0.0,
                         stability_score_thresh=0.0)
    assert out["scores"].tolist() == pytest.approx([0.99, 0.97, 0.95])
    assert out["stability"][1] == 0  # C: nothing above +1
    # predicted IoU below the threshold: B goes too
    out = generate_masks(model, image, points_per_side=2, pred_iou_thresh=0.96)
    assert out["scores"].tolist() == pytest.approx([0.99])
    out = generate_masks(model, image[:, :40], points_per_side=2, pred_iou_thresh=1.0,
                         min_mask_region_area=5)  # nothing left: empty, well-shaped
    assert out["masks"].shape == (0, 40, 64) and out["boxes"].shape == (0, 4)


def test_empty_masks_are_dropped(model, monkeypatch):
    """A candidate with no pixel (logits all below 0) is no object, whatever its score."""
    empty = torch.full_like(A, -0.5)  # above -1: the reference's stability would be 0 / n
    _fake_decoder(model, monkeypatch, masks=(A, empty, B), ious=(0.9, 0.99, 0.8))
    out = generate_masks(model, torch.rand(3, 64, 64), points_per_side=2, pred_iou_thresh=0.0,
                         stability_score_thresh=0.0)
    assert out["scores"].tolist() == pytest.approx([0.9, 0.8])
    assert out["masks"].flatten(1).any(1).all()


def test_small_regions_removed(model, monkeypatch):
    speck = A.clone()
    speck[28, 2] = 10.0  # a 4-pixel island at 64 px
    speck[7, 7] = -10.0  # a hole in A's corner (1 pixel at 64 px, touching A's edge)
    _fake_decoder(model, monkeypatch, masks=(speck, B, C))
    image = torch.rand(3, 64, 64)
    raw = generate_masks(model, image, points_per_side=2)
    assert raw["masks"][0].sum() > _up(A).sum() - 10 and raw["masks"][0][56:, 4:6].any()
    out = generate_masks(model, image, points_per_side=2, min_mask_region_area=10)
    assert not out["masks"][0][50:, :10].any()  # the island is gone
    hole = ~raw["masks"][0] & _up(A)
    assert hole.any() and out["masks"][0][hole].all()  # the hole is filled
    assert out["boxes"][0].tolist() == [8, 8, 24, 24]


def test_output_scored_by_mask_ap(model, monkeypatch):
    _fake_decoder(model, monkeypatch)
    out = generate_masks(model, torch.rand(3, 64, 64), points_per_side=2)
    targets = [{"masks": torch.stack([_up(B), _up(A)]), "labels": torch.ones(2, dtype=torch.long)}]
    assert mask_average_precision([out], targets)["ap"] == pytest.approx(1.0)
    half = [{"masks": torch.stack([_up(A), _up(C)]), "labels": torch.ones(2, dtype=torch.long)}]
    # A first (a hit), then B (a miss), C never found: precision 1 up to recall 0.5
    assert mask_average_precision([out], half)["ap"] == pytest.approx(51 / 101)


def test_against_hf_filtering(model, monkeypatch):
    pil = pytest.importorskip("transformers.models.sam.image_processing_pil_sam")
    logits = torch.randn(6, 3, 20, 24) * 3
    torch.testing.assert_close(stability_score(logits),
                               pil._compute_stability_score(logits, 0.0, 1.0).float())
    masks = logits > 0.5
    masks[0, 0] = False
    assert torch.equal(mask_boxes(masks), pil._batched_mask_to_box(masks))
    torch.testing.assert_close(build_point_grid(5), torch.as_tensor(
        pil._build_point_grid(5)).float())
    # filter_masks on the candidates at 64 px against ours without NMS (order aside)
    _fake_decoder(model, monkeypatch, ious=(0.99, 0.85, 0.97))
    candidates = torch.nn.functional.interpolate(torch.stack([A, B, C])[None], (64, 64),
                                                 mode="bilinear", align_corners=False)
    _, scores, boxes = pil.SamImageProcessorPil().filter_masks(
        candidates.expand(4, -1, -1, -1).reshape(1, 12, 64, 64),
        torch.tensor([[0.99, 0.85, 0.97] * 4]), (64, 64), [0, 0, 64, 64])
    out = generate_masks(model, torch.rand(3, 64, 64), points_per_side=2, box_nms_thresh=1.0)
    assert sorted(out["scores"].tolist()) == pytest.approx(sorted(scores.tolist()))
    ours = (out["boxes"] - torch.tensor([0, 0, 1, 1])).long()
    assert sorted(ours.tolist()) == sorted(boxes.long().tolist())


@pytest.mark.parametrize("kwargs, match", [
    (dict(image=torch.rand(1, 3, 64, 64)), "image must be a tensor"),
    (dict(image=torch.randint(0, 255, (3, 64, 64))), "floating point"),
    (dict(image=torch.rand(3, 64, 64) * 255), r"\[0, 1\]"),
    (dict(points_per_side=0), "points_per_side"),
    (dict(points_per_batch=2.5), "points_per_batch"),
    (dict(pred_iou_thresh=1.5), "pred_iou_thresh"),
    (dict(stability_score_thresh=-0.1), "stability_score_thresh"),
    (dict(box_nms_thresh=float("nan")), "box_nms_thresh"),
    (dict(min_mask_region_area=-1), "min_mask_region_area"),
    (dict(model=torch.nn.Linear(2, 2)), "model must be"),
])
def test_bad_inputs(model, kwargs, match):
    args = dict(model=model, image=torch.rand(3, 64, 64)) | kwargs
    with pytest.raises(ValueError, match=match):
        generate_masks(**args)
    with pytest.raises(ValueError, match="mask_logits"):
        stability_score(torch.ones(3, dtype=torch.long))
    with pytest.raises(ValueError, match="mode"):
        remove_small_regions(torch.ones(2, 2, dtype=torch.bool), 1, "blobs")
