import numpy as np
import pytest
import torch

from segcourse.data import InstanceTargets, ShapesDataset
from segcourse.evaluate import evaluate_clicks
from segcourse.metrics import clicks_to_reach, next_click, noc
from segcourse.models.sam import sam, scale_prompts


def square(size, rows, cols):
    m = torch.zeros(size, dtype=torch.bool)
    m[rows[0]:rows[1], cols[0]:cols[1]] = True
    return m


# --- next_click on hand-drawn masks ---------------------------------------------------------------

def test_square_false_negative_clicked_at_its_centre():
    target = square((9, 9), (2, 7), (2, 7))  # 5 x 5, centre pixel (row 4, col 4)
    point, label = next_click(torch.zeros_like(target), target)
    assert point.tolist() == [4.0, 4.0] and label.item() == 1
    assert point.dtype == torch.float32 and label.dtype == torch.long and label.dim() == 0


def test_larger_false_positive_gives_a_negative_click_in_it():
    target = square((12, 12), (0, 3), (0, 3))       # FN 3 x 3: depth 2 (from the edge too)
    pred = square((12, 12), (5, 10), (6, 11))        # FP 5 x 5, centre (row 7, col 8): depth 3
    point, label = next_click(pred, target)
    assert point.tolist() == [8.0, 7.0] and label.item() == 0


def test_tie_between_errors_is_a_negative_click_as_ritm():
    # RITM: is_positive = fn_max_dist > fp_max_dist, so equal depths click the false positive
    target = square((10, 10), (1, 4), (1, 4))
    pred = square((10, 10), (6, 9), (6, 9))
    point, label = next_click(pred, target)
    assert point.tolist() == [7.0, 7.0] and label.item() == 0


def test_image_edge_is_boundary():
    # a 5 x 5 object in the top-left corner: with the edge as boundary its centre (2, 2) is the
    # deepest pixel (depth 3); without it the corner (0, 0) would be (depth 5)
    target = square((9, 9), (0, 5), (0, 5))
    point, label = next_click(torch.zeros_like(target), target)
    assert point.tolist() == [2.0, 2.0] and label.item() == 1


def test_equal_depths_take_the_first_pixel_in_row_major_order():
    target = square((6, 8), (1, 3), (1, 7))  # 2 x 6: every pixel has depth 1
    point, label = next_click(torch.zeros_like(target), target)
    assert point.tolist() == [1.0, 1.0] and label.item() == 1


def test_no_error_is_a_padding_point():
    target = square((7, 7), (1, 4), (2, 6))
    point, label = next_click(target.clone(), target)
    assert point.tolist() == [0.0, 0.0] and label.item() == -1
    points, labels = next_click(torch.zeros(2, 5, 5, dtype=torch.bool),
                                torch.zeros(2, 5, 5, dtype=torch.bool))
    assert points.shape == (2, 2) and labels.tolist() == [-1, -1]


def test_ignore_excludes_pixels():
    target = square((12, 12), (0, 5), (0, 5))        # FN 5 x 5 (depth 3) ...
    pred = square((12, 12), (8, 11), (8, 11))  # ... and FP 3 x 3 (depth 2)
    assert next_click(pred, target)[1].item() == 1
    point, label = next_click(pred, target, ignore=target)  # FN ignored: the FP's centre
    assert point.tolist() == [9.0, 9.0] and label.item() == 0
    # every error ignored: nothing to click
    assert next_click(pred, target, ignore=target | pred)[1].item() == -1
    # ignored pixels are boundary: without its middle row the square is two strips of depth 1,
    # so the click is the first pixel, not the centre (2, 2)
    middle = square((12, 12), (2, 3), (0, 12))
    point, label = next_click(torch.zeros_like(target), target, ignore=middle)
    assert point.tolist() == [0.0, 0.0] and label.item() == 1


def test_batched_equals_per_item_and_ignore_broadcasts():
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(4, 11, 7, generator=g) > 0.6
    target = torch.rand(4, 11, 7, generator=g) > 0.4
    ignore = torch.rand(11, 7, generator=g) > 0.8
    points, labels = next_click(pred, target, ignore)
    assert points.shape == (4, 2) and labels.shape == (4,)
    for i in range(4):
        p, lab = next_click(pred[i], target[i], ignore)
        assert torch.equal(points[i], p) and labels[i] == lab


def brute_depth(error: np.ndarray) -> np.ndarray:
    """Distance of each error pixel to the nearest non-error pixel or to the ring of pixels just
    outside the image, by comparing every pair."""
    H, W = error.shape
    rr, cc = np.mgrid[-1:H + 1, -1:W + 1]
    inside = (rr >= 0) & (rr < H) & (cc >= 0) & (cc < W)
    padded = np.zeros((H + 2, W + 2), bool)
    padded[1:-1, 1:-1] = error
    free = np.stack([rr[~padded], cc[~padded]], -1)  # (F, 2): border and non-error pixels
    pix = np.stack([rr[inside], cc[inside]], -1)  # (H*W, 2) in row-major order
    d = np.sqrt(((pix[:, None] - free[None]) ** 2).sum(-1)).min(1)
    return np.where(error.ravel(), d, 0).reshape(H, W)


@pytest.mark.parametrize("seed", range(6))
def test_click_is_the_brute_force_deepest_error_pixel(seed):
    rng = np.random.default_rng(seed)
    H, W = rng.integers(3, 12, size=2)
    pred = rng.random((H, W)) < rng.uniform(0.2, 0.8)
    target = rng.random((H, W)) < rng.uniform(0.2, 0.8)
    point, label = next_click(torch.from_numpy(pred), torch.from_numpy(target))
    fn, fp = brute_depth(target & ~pred), brute_depth(pred & ~target)
    if fn.max() == 0 and fp.max() == 0:
        assert label.item() == -1
        return
    expected_label = int(fn.max() > fp.max() + 1e-9)
    depth = fn if expected_label else fp
    first = int(np.flatnonzero(depth.ravel() >= depth.max() - 1e-9)[0])
    assert label.item() == expected_label
    assert point.tolist() == [first % W, first // W]


def test_next_click_validation():
    m = torch.zeros(5, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match="pred must be a bool"):
        next_click(m.float(), m)
    with pytest.raises(ValueError, match="target must be a bool mask \\[H, W\\]"):
        next_click(m, m[None, None])
    with pytest.raises(ValueError, match="same shape"):
        next_click(m, m[:4])
    with pytest.raises(ValueError, match="ignore"):
        next_click(m, m, ignore=m[:3])


# --- clicks_to_reach and noc ----------------------------------------------------------------------

IOUS = torch.tensor([[0.90, 0.95, 0.95],
                     [0.50, 0.86, 0.91],
                     [0.20, 0.30, 0.40],
                     [0.85, 0.10, 0.10]])


def test_clicks_to_reach_by_hand():
    assert clicks_to_reach(IOUS, 0.85).tolist() == [1, 2, 3, 1]  # never reached: K = 3
    assert clicks_to_reach(IOUS, 0.90).tolist() == [1, 3, 3, 3]
    assert clicks_to_reach(torch.tensor([[1.0]]), 1.0).tolist() == [1]


def test_noc_and_failures_by_hand():
    assert noc(IOUS, 0.85) == (pytest.approx(7 / 4), 1)
    # reached exactly at the last click (object 2) counts K clicks but is no failure
    assert noc(IOUS, 0.90) == (pytest.approx(10 / 4), 2)
    assert noc(np.array([[0.0, 0.0]]), 0.5) == (2.0, 1)


def test_noc_validation():
    for bad in (0, 1.5, -0.1, True):
        with pytest.raises(ValueError, match="threshold"):
            noc(IOUS, bad)
    for ious in (IOUS[0], torch.zeros(0, 3), torch.zeros(2, 0)):
        with pytest.raises(ValueError, match="ious must be \\[N, K\\]"):
            clicks_to_reach(ious, 0.85)
    with pytest.raises(ValueError, match="floating point"):
        noc(torch.ones(2, 2, dtype=torch.long), 0.85)
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        noc(IOUS + 0.5, 0.85)


# --- evaluate_clicks with a random tiny SAM -------------------------------------------------------

@pytest.fixture(scope="module")
def scenes():
    return InstanceTargets(ShapesDataset(num_samples=2, size=64, num_things=3, max_instances=5,
                                         seed=1))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return sam("tiny")


def objects(data):
    return [t["masks"][k] for _, t in data for k in range(len(t["masks"])) if t["masks"][k].any()]


def test_evaluate_clicks_shapes_and_ranges(model, scenes):
    model.train()
    out = evaluate_clicks(model, scenes, max_clicks=3)
    assert model.training  # mode restored
    n = len(objects(scenes))
    assert n >= 2 and out["iou"].shape == (n, 3) and out["miou"].shape == (3,)
    assert ((out["iou"] >= 0) & (out["iou"] <= 1)).all()
    torch.testing.assert_close(out["miou"], out["iou"].mean(0))
    assert set(out) == {"iou", "miou", "noc85", "noc90", "nof85", "nof90"}
    assert 1 <= out["noc85"] <= out["noc90"] <= 3 and 0 <= out["nof85"] <= out["nof90"] <= n
    assert isinstance(out["nof90"], int) and isinstance(out["noc90"], float)
    assert evaluate_clicks(model, scenes, max_clicks=2, max_objects=1)["iou"].shape == (2, 2)


def test_objects_are_independent_prompts(model, scenes):
    together = evaluate_clicks(model, scenes, max_clicks=3)["iou"]
    alone = []
    for image, t in scenes:
        for k in range(len(t["masks"])):
            if t["masks"][k].any():
                one = {"masks": t["masks"][k:k + 1], "boxes": t["boxes"][k:k + 1]}
                alone.append(evaluate_clicks(model, [(image, one)], max_clicks=3)["iou"])
    torch.testing.assert_close(together, torch.cat(alone), atol=1e-6, rtol=0)


def spy(model, monkeypatch):
    calls = []
    decode = model.decode

    def recording(emb, points=None, point_labels=None, boxes=None, mask_inputs=None,
                  multimask_output=True):
        out = decode(emb, points, point_labels, boxes, mask_inputs, multimask_output)
        calls.append({"points": points, "labels": point_labels, "boxes": boxes,
                      "mask_inputs": mask_inputs, "multimask": multimask_output, "out": out})
        return out

    monkeypatch.setattr(model, "decode", recording)
    return calls


def test_first_click_at_the_centre_then_logits_fed_back(model, monkeypatch):
    # a non-square image, so the prompts are scaled into the encoder's frame
    data = InstanceTargets(ShapesDataset(num_samples=1, size=(40, 56), num_things=3,
                                         max_instances=4, seed=2))
    image, t = data[0]
    masks = t["masks"][t["masks"].flatten(1).any(1)]
    P = len(masks)
    calls = spy(model, monkeypatch)
    evaluate_clicks(model, data, max_clicks=2)
    assert len(calls) == 2
    first, second = calls
    # click 1: the deepest pixel of each object (brute force), scaled like Sam.predict's prompts
    deepest = []
    for m in masks:
        depth = brute_depth(m.numpy())
        index = int(np.flatnonzero(depth.ravel() >= depth.max() - 1e-9)[0])
        deepest.append([index % 56, index // 56])
    expected, _ = scale_prompts((40, 56), 64, points=torch.tensor(deepest)[None, :, None])
    torch.testing.assert_close(first["points"], expected)
    assert first["labels"].tolist() == [[[1]] * P]
    assert first["boxes"] is None and first["mask_inputs"] is None and first["multimask"]
    # click 2: two points, one mask, and the logits of the mask of highest predicted IoU
    assert second["points"].shape == (1, P, 2, 2) and not second["multimask"]
    torch.testing.assert_close(second["points"][:, :, 0], first["points"][:, :, 0])
    best = first["out"]["iou_scores"][0].argmax(-1)
    chosen = first["out"]["mask_logits"][0][torch.arange(P), best]
    torch.testing.assert_close(second["mask_inputs"], chosen[None])


def test_box_first_then_points_with_the_box(model, scenes, monkeypatch):
    image, t = scenes[0]
    keep = t["masks"].flatten(1).any(1)
    calls = spy(model, monkeypatch)
    evaluate_clicks(model, [scenes[0]], max_clicks=2, first="box")
    first, second = calls
    assert first["points"] is None and not first["multimask"]
    torch.testing.assert_close(first["boxes"], t["boxes"][keep][None])  # 64 px: scale 1
    # the box is the tight box of the mask, x2 / y2 exclusive
    m = t["masks"][keep][0]
    ys, xs = torch.where(m)
    box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
    assert first["boxes"][0, 0].tolist() == box
    assert second["points"].shape[2] == 1 and torch.equal(second["boxes"], first["boxes"])
    # without target boxes, the box comes from the mask
    calls.clear()
    evaluate_clicks(model, [(image, {"masks": t["masks"]})], max_clicks=1, first="box")
    torch.testing.assert_close(calls[0]["boxes"], first["boxes"])


def test_evaluate_clicks_validation(model, scenes):
    image, t = scenes[0]
    bad = [({"model": torch.nn.Linear(2, 2)}, "model must be a segcourse Sam"),
           ({"first": "scribble"}, "first must be"), ({"max_clicks": 0}, "max_clicks"),
           ({"thresholds": (0.0,)}, "thresholds"), ({"thresholds": (0.85, 0.851)}, "distinct"),
           ({"thresholds": ()}, "thresholds"), ({"max_objects": 0}, "max_objects"),
           ({"data": []}, "non-empty"),
           ({"data": [(image, {"masks": t["masks"][:, :5]})]}, "target\\['masks'\\]"),
           ({"data": [(image, {"masks": t["masks"][:0]})]}, "no object")]
    for kwargs, message in bad:
        args = {"model": model, "data": scenes} | kwargs
        with pytest.raises(ValueError, match=message):
            evaluate_clicks(args.pop("model"), args.pop("data"), **args)


def test_ignored_pixels_count_in_no_iou_and_get_no_click(model, monkeypatch):
    """A fixed prediction (rows 0-9, cols 0-9) against a target (rows 0-9, cols 5-14) with the
    columns 0-2 of the trimap-like ``semantic`` map ignored: by hand, IoU = 50 / (100 + 20)
    instead of 50 / 150."""
    import segcourse.evaluate as ev

    H = W = 32
    target = torch.zeros(1, H, W, dtype=torch.bool)
    target[0, :10, 5:15] = True
    fixed = torch.full((1, H, W), -1.0)
    fixed[0, :10, :10] = 1.0
    import segcourse.models.sam as sam_module  # Sam.decode_image brings logits to the image
    monkeypatch.setattr(sam_module, "postprocess_masks",
                        lambda low, size, S: fixed.expand(*low.shape[:-2], -1, -1))
    semantic = torch.zeros(H, W, dtype=torch.long)
    semantic[:, :3] = 255
    item = (torch.rand(3, H, W), {"masks": target, "semantic": semantic})
    seen = ev.evaluate_clicks(model, [item], max_clicks=2)["iou"][0]
    torch.testing.assert_close(seen, torch.tensor([50 / 120, 50 / 120]))
    plain = ev.evaluate_clicks(model, [item], max_clicks=2, ignore_index=None)["iou"][0]
    torch.testing.assert_close(plain, torch.tensor([50 / 150, 50 / 150]))
    with pytest.raises(ValueError, match="semantic"):
        ev.evaluate_clicks(model, [(item[0], {"masks": target, "semantic": semantic[:5]})])
