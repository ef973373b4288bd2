"""Bad input to the detection stack (issue 12): operators, Mask R-CNN, Panoptic FPN, targets.

Every case is a call a new user or a typo could make. It must raise a ``ValueError`` whose
message names the argument (or the target key and image index), or -- where a clear answer
exists -- give the documented result without NaN: empty detections with correctly shaped empty
tensors when no proposal survives, a zero semantic loss with a gradient on an all-void map.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from segcourse.data import InstanceTargets, panoptic_target, target_from_mask, targets_from_samples
from segcourse.models.mask_rcnn import mask_rcnn
from segcourse.models.panoptic_fpn import panoptic_fpn
from segcourse.ops import MultiScaleRoIAlign, batched_nms, nms, roi_align

THINGS, STUFF = (2, 3, 4), (0, 1)
CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "panoptic_fpn_shapes.pt"


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {"mask_rcnn": mask_rcnn(4), "panoptic_fpn": panoptic_fpn(THINGS, STUFF)}


def _target(with_semantic=True, **changes):
    masks = torch.zeros(1, 64, 64, dtype=torch.bool)
    masks[0, 8:24, 8:24] = True
    t = {"boxes": torch.tensor([[8.0, 8.0, 24.0, 24.0]]), "labels": torch.tensor([1]),
         "masks": masks}
    if with_semantic:
        sem = torch.zeros(64, 64, dtype=torch.int64)
        sem[8:24, 8:24] = 2
        t["semantic"] = sem
    t.update(changes)
    return {k: v for k, v in t.items() if v is not None}


# --- operators --------------------------------------------------------------------------------

BOXES = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [20.0, 20.0, 30.0, 30.0]])
FEATURES = torch.rand(1, 2, 8, 8)
OPS = {
    "nms-scores-shorter": (lambda: nms(BOXES, torch.rand(2), 0.5), "scores"),
    "nms-scores-longer": (lambda: nms(BOXES, torch.rand(4), 0.5), "scores"),
    "nms-scores-2d": (lambda: nms(BOXES, torch.rand(3, 1), 0.5), "scores"),
    "nms-boxes-5-columns": (lambda: nms(torch.rand(3, 5), torch.rand(3), 0.5), "boxes"),
    "nms-boxes-list": (lambda: nms(BOXES.tolist(), torch.rand(3), 0.5), "boxes"),
    "batched-nms-idxs-shorter": (
        lambda: batched_nms(BOXES, torch.rand(3), torch.zeros(2, dtype=torch.long), 0.5), "idxs"),
    "batched-nms-scores-shorter": (
        lambda: batched_nms(BOXES, torch.rand(2), torch.zeros(3, dtype=torch.long), 0.5),
        "scores"),
    "nms-threshold-nan": (lambda: nms(BOXES, torch.rand(3), math.nan), "iou_threshold"),
    "nms-threshold-negative": (lambda: nms(BOXES, torch.rand(3), -0.1), "iou_threshold"),
    "nms-threshold-tensor-pair": (lambda: nms(BOXES, torch.rand(3), (0.5, 0.7)),
                                  "iou_threshold"),
    "batched-nms-threshold-above-1": (
        lambda: batched_nms(BOXES, torch.rand(3), torch.zeros(3, dtype=torch.long), 1.5),
        "iou_threshold"),
    "roi-align-batch-index-out-of-range": (
        lambda: roi_align(FEATURES, torch.tensor([[3.0, 0, 0, 4, 4]]), 2), r"boxes\[:, 0\]"),
    "roi-align-batch-index-negative": (
        lambda: roi_align(FEATURES, torch.tensor([[-1.0, 0, 0, 4, 4]]), 2), r"boxes\[:, 0\]"),
    "roi-align-batch-index-fractional": (
        lambda: roi_align(FEATURES, torch.tensor([[0.5, 0, 0, 4, 4]]), 2), r"boxes\[:, 0\]"),
    "roi-align-batch-index-nan": (
        lambda: roi_align(FEATURES, torch.tensor([[math.nan, 0, 0, 4, 4]]), 2), r"boxes\[:, 0\]"),
    "roi-align-list-longer-than-batch": (
        lambda: roi_align(FEATURES, [torch.zeros(1, 4), torch.zeros(1, 4)], 2), "boxes"),
    "roi-align-nan-box": (
        lambda: roi_align(FEATURES, torch.tensor([[0.0, 0, 0, math.nan, 4]]), 2), "boxes"),
    "roi-align-boxes-4-columns": (lambda: roi_align(FEATURES, torch.zeros(1, 4), 2), "boxes"),
    "roi-align-output-size-0": (
        lambda: roi_align(FEATURES, torch.tensor([[0.0, 0, 0, 4, 4]]), 0), "output_size"),
    "roi-align-output-size-triple": (
        lambda: roi_align(FEATURES, torch.tensor([[0.0, 0, 0, 4, 4]]), (2, 2, 2)), "output_size"),
    "roi-align-spatial-scale-0": (
        lambda: roi_align(FEATURES, torch.tensor([[0.0, 0, 0, 4, 4]]), 2, 0.0), "spatial_scale"),
    "roi-align-sampling-ratio-float": (
        lambda: roi_align(FEATURES, torch.tensor([[0.0, 0, 0, 4, 4]]), 2, 1.0, 2.5),
        "sampling_ratio"),
    "roi-align-input-3d": (
        lambda: roi_align(FEATURES[0], torch.tensor([[0.0, 0, 0, 4, 4]]), 2), "input"),
    "multiscale-list-longer-than-batch": (
        lambda: MultiScaleRoIAlign(2)([torch.rand(1, 2, 16 // s, 16 // s) for s in (1, 2, 4, 8)],
                                      [torch.tensor([[0.0, 0, 8, 8]])] * 2), r"boxes\[:, 0\]"),
}


@pytest.mark.parametrize("case", OPS)
def test_operators(case):
    call, match = OPS[case]
    with pytest.raises(ValueError, match=match):
        call()


def test_operators_neighbours_still_work():
    """Valid calls next to the refused ones: a batch index 1 of 2 images, a list per image,
    inverted boxes in NMS (no targets, no NaN) -- finite answers."""
    x = torch.rand(2, 2, 8, 8)
    out = roi_align(x, torch.tensor([[1.0, 0, 0, 4, 4]]), 2)
    assert torch.equal(out, roi_align(x[1:], torch.tensor([[0.0, 0, 0, 4, 4]]), 2))
    assert roi_align(x, [torch.zeros(0, 4), torch.tensor([[0.0, 0, 4, 4]])], (2, 3)).shape \
        == (1, 2, 2, 3)
    assert roi_align(x, torch.zeros(0, 5), 2).shape == (0, 2, 2, 2)
    inverted = torch.tensor([[10.0, 10.0, 0.0, 0.0], [0.0, 0.0, 10.0, 10.0]])
    assert nms(inverted, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0, 1]
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).shape == (0,)


# --- constructors -----------------------------------------------------------------------------

CONFIGS = {
    "mask-rcnn-0-classes": (lambda: mask_rcnn(0), "num_classes"),
    "mask-rcnn-1-class": (lambda: mask_rcnn(1), "num_classes"),
    "mask-rcnn-negative-classes": (lambda: mask_rcnn(-3), "num_classes"),
    "mask-rcnn-float-classes": (lambda: mask_rcnn(2.0), "num_classes"),
    "mask-rcnn-bool-classes": (lambda: mask_rcnn(True), "num_classes"),
    "mask-rcnn-in-channels-0": (lambda: mask_rcnn(4, in_channels=0), "in_channels"),
    "mask-rcnn-in-channels-negative": (lambda: mask_rcnn(4, in_channels=-1), "in_channels"),
    "mask-rcnn-in-channels-float": (lambda: mask_rcnn(4, in_channels=2.5), "in_channels"),
    "mask-rcnn-width-0": (lambda: mask_rcnn(4, width=0), "width"),
    "mask-rcnn-fpn-channels-0": (lambda: mask_rcnn(4, fpn_channels=0), "fpn_channels"),
    "mask-rcnn-representation-0": (lambda: mask_rcnn(4, representation=0), "representation"),
    "mask-rcnn-mask-channels-0": (lambda: mask_rcnn(4, mask_channels=0), "mask_channels"),
    "mask-rcnn-roi-batch-0": (lambda: mask_rcnn(4, roi_batch_size=0), "roi_batch_size"),
    "mask-rcnn-detections-0": (lambda: mask_rcnn(4, detections_per_image=0),
                               "detections_per_image"),
    "mask-rcnn-score-threshold-1.5": (lambda: mask_rcnn(4, score_threshold=1.5),
                                      "score_threshold"),
    "mask-rcnn-nms-threshold-negative": (lambda: mask_rcnn(4, nms_threshold=-0.1),
                                         "nms_threshold"),
    "mask-rcnn-rpn-nms-threshold-2": (lambda: mask_rcnn(4, rpn_nms_threshold=2),
                                      "rpn_nms_threshold"),
    "mask-rcnn-post-nms-single": (lambda: mask_rcnn(4, rpn_post_nms_top_n=(300,)),
                                  "rpn_post_nms_top_n"),
    "mask-rcnn-pre-nms-zero": (lambda: mask_rcnn(4, rpn_pre_nms_top_n=(300, 0)),
                               "rpn_pre_nms_top_n"),
    "mask-rcnn-two-anchor-sizes": (lambda: mask_rcnn(4, anchor_sizes=(8, 16)), "anchor_sizes"),
    "mask-rcnn-negative-anchor": (lambda: mask_rcnn(4, anchor_sizes=(8, 16, -32, 64, 128)),
                                  "anchor_sizes"),
    "mask-rcnn-no-aspect-ratios": (lambda: mask_rcnn(4, aspect_ratios=()), "aspect_ratios"),
    "mask-rcnn-trainable-layers-6": (lambda: mask_rcnn(4, trainable_layers=6),
                                     "trainable_layers"),
    "panoptic-thing-stuff-overlap": (lambda: panoptic_fpn((2, 3), (3, 1)), "share"),
    "panoptic-thing-repeated": (lambda: panoptic_fpn((2, 2), (0,)), "thing_classes"),
    "panoptic-stuff-repeated": (lambda: panoptic_fpn((2,), (0, 0)), "stuff_classes"),
    "panoptic-no-things": (lambda: panoptic_fpn((), (0, 1)), "thing_classes"),
    "panoptic-float-thing": (lambda: panoptic_fpn((2.5,), (0,)), "thing_classes"),
    "panoptic-string-things": (lambda: panoptic_fpn("23", (0,)), "thing_classes"),
    "panoptic-stuff-255": (lambda: panoptic_fpn((2,), (255,)), "stuff_classes"),
    "panoptic-negative-stuff": (lambda: panoptic_fpn((2,), (-1,)), "stuff_classes"),
    "panoptic-in-channels-0": (lambda: panoptic_fpn(THINGS, STUFF, in_channels=0),
                               "in_channels"),
    "panoptic-semantic-channels-0": (lambda: panoptic_fpn(THINGS, STUFF, semantic_channels=0),
                                     "semantic_channels"),
    "panoptic-stuff-area-negative": (lambda: panoptic_fpn(THINGS, STUFF, stuff_area_limit=-1),
                                     "stuff_area_limit"),
    "panoptic-loss-weight-nan": (lambda: panoptic_fpn(THINGS, STUFF,
                                                      semantic_loss_weight=math.nan),
                                 "semantic_loss_weight"),
    "panoptic-overlap-threshold-1.5": (lambda: panoptic_fpn(THINGS, STUFF,
                                                            overlap_threshold=1.5),
                                       "overlap_threshold"),
    "panoptic-instance-score-negative": (
        lambda: panoptic_fpn(THINGS, STUFF, instance_score_threshold=-0.1),
        "instance_score_threshold"),
}


@pytest.mark.parametrize("case", CONFIGS)
def test_constructors(case):
    call, match = CONFIGS[case]
    with pytest.raises(ValueError, match=match):
        call()


# --- images in eval mode ----------------------------------------------------------------------

def _nan_image():
    x = torch.rand(1, 3, 64, 64)
    x[0, 1, 5, 7] = math.nan
    return x


IMAGES = {
    "nan-image": (lambda: torch.full((1, 3, 64, 64), math.nan), "images"),
    "one-nan-pixel": (_nan_image, "images"),
    "inf-image": (lambda: torch.full((1, 3, 64, 64), math.inf), "images"),
    "float64-image": (lambda: torch.rand(1, 3, 64, 64, dtype=torch.float64), "images.*float64"),
    "float16-image": (lambda: torch.rand(1, 3, 64, 64).half(), "images.*float16"),
    "bfloat16-image": (lambda: torch.rand(1, 3, 64, 64).bfloat16(), "images.*bfloat16"),
    "uint8-image": (lambda: torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "images"),
    "3d-image": (lambda: torch.rand(3, 64, 64), "images"),
    "too-small": (lambda: torch.rand(1, 3, 16, 64), "images"),
    "empty-batch": (lambda: torch.rand(0, 3, 64, 64), "images"),
}


@pytest.mark.parametrize("name", ["mask_rcnn", "panoptic_fpn"])
@pytest.mark.parametrize("case", IMAGES)
def test_bad_images(models, name, case):
    make, match = IMAGES[case]
    model = models[name].eval()
    with pytest.raises(ValueError, match=match):
        model(make())


def _check_empty(det, H, W):
    expected = {"boxes": ((0, 4), torch.float32), "labels": ((0,), torch.int64),
                "scores": ((0,), torch.float32), "masks": ((0, H, W), torch.bool),
                "mask_probs": ((0, H, W), torch.float32)}
    for key, (shape, dtype) in expected.items():
        assert tuple(det[key].shape) == shape and det[key].dtype == dtype, key
    if "panoptic" in det:
        assert det["categories"].shape == (0,)
        assert det["panoptic"].shape == (H, W, 2) and det["panoptic"].dtype == torch.int64
        assert (det["panoptic"][..., 1] == 0).all()  # no thing
        assert torch.isfinite(det["semantic_logits"]).all()


@pytest.mark.parametrize("name", ["mask_rcnn", "panoptic_fpn"])
def test_no_surviving_proposal_gives_empty_detections(models, name):
    """Documented: when no proposal survives, empty detections with correctly shaped tensors
    (it was ``cannot reshape tensor of 0 elements``)."""
    model = models[name].eval()
    rpn = model.rpn if name == "mask_rcnn" else model.mask_rcnn.rpn
    saved = rpn.post_nms_top_n
    rpn.post_nms_top_n = (saved[0], 0)  # nothing survives the proposal stage
    try:
        detections = model(torch.rand(2, 3, 64, 96))
    finally:
        rpn.post_nms_top_n = saved
    assert len(detections) == 2
    for det in detections:
        _check_empty(det, 64, 96)


@pytest.mark.parametrize("name", ["mask_rcnn", "panoptic_fpn"])
def test_no_surviving_detection_gives_empty_detections(models, name):
    model = models[name].eval()
    heads = model.roi_heads if name == "mask_rcnn" else model.mask_rcnn.roi_heads
    saved = heads.score_threshold
    heads.score_threshold = 1.0  # softmax scores never exceed 1
    try:
        det = model(torch.zeros(1, 3, 64, 64))[0]
    finally:
        heads.score_threshold = saved
    _check_empty(det, 64, 64)


@pytest.mark.skipif(not CHECKPOINT.exists(), reason="shipped checkpoint not present")
def test_blank_image_with_shipped_checkpoint():
    """The trained chapter-7 model on a blank image: no object, empty detections, a valid map
    of stuff or void."""
    from segcourse.checkpoints import load_checkpoint

    model = panoptic_fpn(THINGS, STUFF)
    load_checkpoint(CHECKPOINT, model)
    det = model.eval()(torch.zeros(1, 3, 64, 64))[0]
    _check_empty(det, 64, 64)
    assert set(det["panoptic"][..., 0].unique().tolist()) <= {*STUFF, -1}


# --- training targets -------------------------------------------------------------------------

def _second_image_bad():
    return [_target(), _target(labels=torch.tensor([1.0]))]


TARGETS = {
    "targets-none": (lambda: None, "targets"),
    "targets-too-few": (lambda: [], "targets"),
    "targets-too-many": (lambda: [_target(), _target()], "targets"),
    "target-not-dict": (lambda: [[1, 2, 3]], r"targets\[0\]"),
    "missing-masks": (lambda: [_target(masks=None)], "masks"),
    "missing-boxes": (lambda: [_target(boxes=None)], "boxes"),
    "missing-labels": (lambda: [_target(labels=None)], "labels"),
    "list-boxes": (lambda: [_target(boxes=[[8.0, 8.0, 24.0, 24.0]])], r"\['boxes'\]"),
    "list-labels": (lambda: [_target(labels=[1])], r"\['labels'\]"),
    "int-boxes": (lambda: [_target(boxes=torch.tensor([[8, 8, 24, 24]]))], r"\['boxes'\]"),
    "boxes-5-columns": (lambda: [_target(boxes=torch.tensor([[8.0, 8, 24, 24, 1]]))],
                        r"\['boxes'\]"),
    "float-labels": (lambda: [_target(labels=torch.tensor([1.0]))], r"\['labels'\]"),
    "float-labels-fractional": (lambda: [_target(labels=torch.tensor([1.5]))], r"\['labels'\]"),
    "bool-labels": (lambda: [_target(labels=torch.tensor([True]))], r"\['labels'\]"),
    "labels-0-background": (lambda: [_target(labels=torch.tensor([0]))], r"\['labels'\]"),
    "labels-too-large": (lambda: [_target(labels=torch.tensor([4]))], r"\['labels'\]"),
    "labels-two-for-one-box": (lambda: [_target(labels=torch.tensor([1, 2]))], r"\['labels'\]"),
    "masks-wrong-size": (lambda: [_target(masks=torch.zeros(1, 32, 32, dtype=torch.bool))],
                         r"\['masks'\]"),
    "masks-wrong-count": (lambda: [_target(masks=torch.zeros(2, 64, 64, dtype=torch.bool))],
                          r"\['masks'\]"),
    "masks-not-binary": (lambda: [_target(masks=torch.full((1, 64, 64), 2, dtype=torch.uint8))],
                         r"\['masks'\]"),
    "box-x2-before-x1": (lambda: [_target(boxes=torch.tensor([[24.0, 8.0, 8.0, 24.0]]))],
                         r"targets\[0\]\['boxes'\]\[0\] = \[24.0, 8.0, 8.0, 24.0\]"),
    "box-y2-before-y1": (lambda: [_target(boxes=torch.tensor([[8.0, 24.0, 24.0, 8.0]]))],
                         r"targets\[0\]\['boxes'\]\[0\]"),
    "box-zero-width": (lambda: [_target(boxes=torch.tensor([[8.0, 8.0, 8.0, 24.0]]))],
                       r"targets\[0\]\['boxes'\]\[0\]"),
    "box-nan": (lambda: [_target(boxes=torch.tensor([[math.nan, 8.0, 24.0, 24.0]]))],
                r"targets\[0\]\['boxes'\]\[0\]"),
    "box-inf": (lambda: [_target(boxes=torch.tensor([[8.0, 8.0, math.inf, 24.0]]))],
                r"targets\[0\]\['boxes'\]\[0\]"),
    "second-image-bad": (_second_image_bad, r"targets\[1\]\['labels'\]"),
}


@pytest.mark.parametrize("name", ["mask_rcnn", "panoptic_fpn"])
@pytest.mark.parametrize("case", TARGETS)
def test_bad_targets(models, name, case):
    make, match = TARGETS[case]
    targets = make()
    images = torch.rand(2 if case == "second-image-bad" else 1, 3, 64, 64)
    with pytest.raises(ValueError, match=match):
        models[name].train()(images, targets)


SEMANTIC = {
    "missing": (None, "semantic"),
    "label-outside-classes": (torch.full((64, 64), 7), r"\['semantic'\].*7"),
    "one-pixel-outside-classes": ("one-7", r"\['semantic'\].*7"),
    "negative-label": (torch.full((64, 64), -3), r"\['semantic'\].*-3"),
    "label-above-255": (torch.full((64, 64), 300), r"\['semantic'\].*300"),
    "float": (torch.zeros(64, 64), r"\['semantic'\]"),
    "wrong-size": (torch.zeros(32, 32, dtype=torch.int64), r"\['semantic'\]"),
    "batched": (torch.zeros(1, 64, 64, dtype=torch.int64), r"\['semantic'\]"),
    "list": ([[0] * 64] * 64, r"\['semantic'\]"),
}


@pytest.mark.parametrize("case", SEMANTIC)
def test_bad_semantic_targets(models, case):
    value, match = SEMANTIC[case]
    target = _target()
    if isinstance(value, str):  # one stray id in an otherwise valid map
        target["semantic"][40, 40] = 7
    elif value is None:
        del target["semantic"]
    else:
        target["semantic"] = value
    with pytest.raises(ValueError, match=match):
        models["panoptic_fpn"].train()(torch.rand(1, 3, 64, 64), [target])


@pytest.mark.parametrize("objects", [True, False])
def test_all_void_semantic_map_gives_zero_loss_with_gradient(models, objects):
    """A valid all-void map (255 everywhere): loss_semantic is 0, not NaN, every loss is finite
    and the semantic head still gets a (zero) gradient."""
    model = models["panoptic_fpn"].train()
    model.zero_grad()
    semantic = torch.full((64, 64), 255, dtype=torch.int64)
    target = _target(semantic=semantic) if objects else {
        "boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
        "masks": torch.zeros(0, 64, 64, dtype=torch.bool), "semantic": semantic}
    losses = model(torch.rand(1, 3, 64, 64), [target])
    assert all(torch.isfinite(v) for v in losses.values()), losses
    assert losses["loss_semantic"].item() == 0.0
    sum(losses.values()).backward()
    grad = model.semantic_head.predictor.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and (grad == 0).all()


@pytest.mark.parametrize("name", ["mask_rcnn", "panoptic_fpn"])
def test_valid_targets_neighbours_train(models, name):
    """Next to the refused targets: uint8 0/1 masks, a 255 border, an image without objects --
    accepted, finite losses."""
    masks = torch.zeros(1, 64, 64, dtype=torch.uint8)
    masks[0, 8:24, 8:24] = 1
    t1 = _target(masks=masks)
    t1["semantic"][0] = 255
    t2 = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
          "masks": torch.zeros(0, 64, 64, dtype=torch.bool),
          "semantic": torch.ones(64, 64, dtype=torch.int64)}
    losses = models[name].train()(torch.rand(2, 3, 64, 64), [t1, t2])
    assert all(torch.isfinite(v) for v in losses.values()), losses


# --- data/targets.py --------------------------------------------------------------------------

class _Pairs(torch.utils.data.Dataset):
    """A plain (image, mask) dataset."""

    def __len__(self):
        return 1

    def __getitem__(self, i):
        return torch.rand(3, 8, 8), torch.ones(8, 8, dtype=torch.int64)


MASK = torch.ones(8, 8, dtype=torch.int64)
DATA = {
    "instance-targets-no-things": (lambda: InstanceTargets(_Pairs(), thing_classes=()),
                                   "thing_classes"),
    "instance-targets-string": (lambda: InstanceTargets(_Pairs(), thing_classes="ab"),
                                "thing_classes"),
    "instance-targets-int": (lambda: InstanceTargets(_Pairs(), thing_classes=3),
                             "thing_classes"),
    "instance-targets-repeated": (lambda: InstanceTargets(_Pairs(), thing_classes=(1, 1)),
                                  "thing_classes"),
    "instance-targets-fractional": (lambda: InstanceTargets(_Pairs(), thing_classes=(1.5,)),
                                    "thing_classes"),
    "instance-targets-negative": (lambda: InstanceTargets(_Pairs(), thing_classes=(-1,)),
                                  "thing_classes"),
    "instance-targets-255": (lambda: InstanceTargets(_Pairs(), thing_classes=(255,)),
                             "thing_classes"),
    "instance-targets-no-default": (lambda: InstanceTargets(_Pairs()), "thing_classes"),
    "target-from-mask-3d": (lambda: target_from_mask(MASK[None], (1,)), "mask"),
    "target-from-mask-float": (lambda: target_from_mask(MASK.float(), (1,)), "mask"),
    "target-from-mask-list": (lambda: target_from_mask(MASK.tolist(), (1,)), "mask"),
    "target-from-mask-int-classes": (lambda: target_from_mask(MASK, 1), "thing_classes"),
    "target-from-mask-repeated": (lambda: target_from_mask(MASK, (1, 1)), "thing_classes"),
    "targets-from-samples-bad-classes": (lambda: targets_from_samples([], (2, 2)),
                                         "thing_classes"),
    "panoptic-target-no-semantic": (lambda: panoptic_target({"masks": torch.zeros(0, 8, 8)}),
                                    "target"),
    "panoptic-target-size-mismatch": (
        lambda: panoptic_target({"semantic": MASK, "masks": torch.zeros(1, 4, 4)}), "target"),
}


@pytest.mark.parametrize("case", DATA)
def test_targets_data(case):
    call, match = DATA[case]
    with pytest.raises(ValueError, match=match):
        call()


def test_targets_data_neighbours():
    """Valid: numpy class maps, numpy int class ids, a class absent from the map."""
    np = pytest.importorskip("numpy")
    t = target_from_mask(MASK.numpy(), np.array([1, 5]))
    assert t["boxes"].tolist() == [[0.0, 0.0, 8.0, 8.0]] and t["labels"].tolist() == [1]
    data = InstanceTargets(_Pairs(), thing_classes=[np.int64(1)])
    assert data.thing_classes == (1,) and data[0][1]["masks"].shape == (1, 8, 8)
