"""Mask R-CNN: box geometry and anchors by hand, the paper-size parameter count against
torchvision's published number, forward in train / eval mode on odd sizes, a training step that
lowers the loss, mask pasting, mask AP on a hand-computed example, clear errors."""

import math

import pytest
import torch

from segcourse.metrics import mask_average_precision
from segcourse.models.maskrcnn import (AnchorGenerator, MultiScaleRoIAlign, mask_rcnn, match_boxes,
                                       paste_masks, targets_from_samples)
from segcourse.ops import box_iou, decode_boxes, encode_boxes


def test_box_iou_and_delta_encoding_by_hand():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 5.0, 15.0, 15.0], [0.0, 0.0, 10.0, 5.0], [20.0, 20.0, 30.0, 30.0]])
    # overlaps 25 / (100 + 100 - 25); 50 / 100; 0
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[25 / 175, 0.5, 0.0]]))
    # (5,5,15,15) from anchor (0,0,10,10): centre moves by half a width, same size
    torch.testing.assert_close(encode_boxes(b[:1], a), torch.tensor([[0.5, 0.5, 0.0, 0.0]]))
    # box-head weights (10, 10, 5, 5) scale the deltas; (0,0,10,5): dy = -2.5/10, dh = log(0.5)
    torch.testing.assert_close(encode_boxes(b[1:2], a, (10, 10, 5, 5)),
                               torch.tensor([[0.0, -2.5, 0.0, 5 * math.log(0.5)]]))
    boxes = torch.tensor([[3.0, 4.0, 20.0, 9.0], [0.5, 0.5, 1.5, 30.0]])
    anchors = torch.tensor([[0.0, 0.0, 16.0, 16.0], [2.0, 2.0, 10.0, 12.0]])
    torch.testing.assert_close(decode_boxes(encode_boxes(boxes, anchors, (10, 10, 5, 5)), anchors,
                                            (10, 10, 5, 5))[:, 0], boxes)


def test_cell_anchors_match_torchvision_values():
    # torchvision AnchorGenerator(sizes=((32,),), aspect_ratios=((0.5, 1.0, 2.0),)): base anchors
    # round([-w, -h, w, h] / 2) with h = 32 sqrt(r), w = 32 / sqrt(r):
    # w = 45.25, 32, 22.63 and h = 22.63, 32, 45.25.
    expected = torch.tensor([[-23.0, -11.0, 23.0, 11.0], [-16.0, -16.0, 16.0, 16.0], [-11.0, -23.0, 11.0, 23.0]])
    generator = AnchorGenerator(sizes=(32,), strides=(4,))
    torch.testing.assert_close(generator.cell_anchors(32), expected)
    anchors = generator([(2, 3)])[0]
    assert anchors.shape == (2 * 3 * 3, 4)
    # location-major: anchors 3..5 sit at x = 4 (second column), row 0
    torch.testing.assert_close(anchors[3:6], expected + torch.tensor([4.0, 0.0, 4.0, 0.0]))
    torch.testing.assert_close(anchors[9:12], expected + torch.tensor([0.0, 4.0, 0.0, 4.0]))


def test_matcher_thresholds_and_low_quality_matches():
    iou = torch.tensor([[0.9, 0.5, 0.2, 0.1, 0.0],
                        [0.1, 0.6, 0.1, 0.05, 0.0]])
    # >= 0.7 matched, < 0.3 background (-1), between ignored (-2)
    assert match_boxes(iou, 0.7, 0.3, False).tolist() == [0, -2, -1, -1, -1]
    # gt 1's best candidate (0.6, column 1) is kept as a low-quality match
    assert match_boxes(iou, 0.7, 0.3, True).tolist() == [0, 1, -1, -1, -1]
    assert match_boxes(torch.zeros(0, 3), 0.7, 0.3, True).tolist() == [-1, -1, -1]


def test_fpn_level_assignment():
    pool = MultiScaleRoIAlign(7)
    boxes = torch.tensor([[0, 0, 224.0, 224.0], [0, 0, 112.0, 112.0], [0, 0, 448.0, 448.0],
                          [0, 0, 10.0, 10.0], [0, 0, 2000.0, 2000.0], [0, 0, 223.0, 225.0], [0, 0, 224.0, 230.0]])
    # FPN Eq. 1: k = floor(4 + log2(sqrt(wh) / 224)), clamped to P2..P5 (indices 0..3)
    # (223 x 225 has sqrt(area) = 223.998 < 224: one level down)
    assert pool.levels(boxes).tolist() == [2, 1, 3, 0, 3, 1, 2]


def test_paste_masks_puts_a_full_mask_exactly_on_its_box():
    masks = torch.ones(1, 28, 28)
    pasted = paste_masks(masks, torch.tensor([[2.0, 3.0, 10.0, 7.0]]), (12, 14))
    expected = torch.zeros(12, 14)
    expected[3:7, 2:10] = 1
    torch.testing.assert_close(pasted[0], expected)
    # left half of the mask on -> left half of the box
    masks[:, :, 14:] = 0
    pasted = paste_masks(masks, torch.tensor([[2.0, 3.0, 10.0, 7.0]]), (12, 14))
    assert (pasted[0, 3:7, 2:6] > 0.99).all() and (pasted[0, 3:7, 7:10] < 0.01).all()


def _count(module, skip_batchnorm=False):
    total = 0
    for name, m in module.named_modules():
        if skip_batchnorm and isinstance(m, torch.nn.BatchNorm2d):
            continue
        total += sum(p.numel() for p in m.parameters(recurse=False))
    return total


def test_paper_configuration_matches_torchvision_parameter_count():
    # torchvision's model table lists maskrcnn_resnet50_fpn (91 classes) with 44,401,393
    # parameters. Its backbone uses FrozenBatchNorm2d, whose affine weight and bias are buffers;
    # ours uses BatchNorm2d, so its 2 x 26,560 BN parameters are left out of the comparison.
    model = mask_rcnn(91, paper=True)
    bn = sum(p.numel() for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)
             for p in m.parameters())
    assert bn == 53_120
    assert sum(p.numel() for p in model.parameters()) - bn == 44_401_393
    # pieces, as derived from torchvision's source shapes (RPN head 593,935; box head + predictor
    # 14,362,055; mask head + predictor 2,646,107; FPN 3,344,384)
    assert _count(model.rpn) == 593_935
    assert _count(model.roi_heads.box_head) == 14_362_055
    assert _count(model.roi_heads.mask_head) == 2_646_107
    assert _count(model.fpn) == 3_344_384


@pytest.fixture(scope="module")
def shapes_batch():
    from segcourse.data import ShapesDataset
    ds = ShapesDataset(num_samples=4, size=64, seed=3)
    samples = [ds.sample(i) for i in range(4)]
    return torch.stack([s.image for s in samples]), targets_from_samples(samples, ds.thing_classes)


def test_targets_from_samples():
    from segcourse.data import ShapesDataset
    ds = ShapesDataset(num_samples=2, size=64, seed=0)
    s = ds.sample(0)
    (t,) = targets_from_samples([s], ds.thing_classes)
    n = len(s.instance_classes)
    assert t["boxes"].shape == (n, 4) and t["masks"].shape == (n, 64, 64)
    assert t["labels"].tolist() == [c - 1 for c in s.instance_classes.tolist()]  # classes 2..4 -> 1..3
    for k in range(n):  # each mask's bounding box is the dataset's box
        ys, xs = torch.where(t["masks"][k])
        assert [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1] == t["boxes"][k].tolist()


def test_train_mode_returns_finite_losses_and_gradients_reach_the_stem(shapes_batch):
    images, targets = shapes_batch
    torch.manual_seed(0)
    model = mask_rcnn(4).train()
    losses = model(images, targets)
    assert set(losses) == {"loss_rpn_objectness", "loss_rpn_box", "loss_classifier", "loss_box", "loss_mask"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    losses["loss_mask"].backward()  # the mask loss alone reaches the first conv through RoIAlign
    assert model.backbone.conv1.weight.grad.abs().sum() > 0


def test_one_training_step_lowers_the_loss(shapes_batch):
    images, targets = shapes_batch
    torch.manual_seed(0)
    model = mask_rcnn(4).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.0)

    def total_loss():
        torch.manual_seed(1)  # the same anchors and RoIs are sampled both times
        return sum(model(images, targets).values())

    before = total_loss()
    optimizer.zero_grad()
    before.backward()
    optimizer.step()
    after = total_loss()
    assert after.item() < before.item() - 1e-3


@pytest.mark.parametrize("size", [(97, 131), (33, 47), (64, 64)])
def test_eval_mode_outputs_at_input_size(size):
    torch.manual_seed(0)
    model = mask_rcnn(4).eval()
    with torch.no_grad():
        (out,) = model(torch.rand(1, 3, *size))
    n = len(out["boxes"])
    assert out["boxes"].shape == (n, 4) and out["scores"].shape == (n,) and out["labels"].shape == (n,)
    assert out["masks"].shape == (n, *size) and out["masks"].dtype == torch.bool
    assert n <= model.config.detections_per_image
    if n:
        assert out["labels"].min() >= 1 and out["labels"].max() <= 3
        assert (out["boxes"][:, 2] <= size[1]).all() and (out["boxes"][:, 3] <= size[0]).all()
        assert (out["scores"][:-1] >= out["scores"][1:]).all()


def test_train_mode_on_odd_size_with_an_empty_image():
    torch.manual_seed(0)
    model = mask_rcnn(3).train()
    images = torch.rand(2, 3, 33, 47)
    masks = torch.zeros(1, 33, 47, dtype=torch.bool)
    masks[0, 5:20, 4:30] = True
    targets = [{"boxes": torch.tensor([[4.0, 5.0, 30.0, 20.0]]), "labels": torch.tensor([2]), "masks": masks},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                "masks": torch.zeros(0, 33, 47, dtype=torch.bool)}]
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_bad_input_raises_value_error():
    model = mask_rcnn(4)
    with pytest.raises(ValueError, match="B, C, H, W"):
        model.eval()(torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match="3 channels"):
        model.eval()(torch.rand(1, 1, 64, 64))
    with pytest.raises(ValueError, match="floating"):
        model.eval()(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="at least 32"):
        model.eval()(torch.rand(1, 3, 16, 64))
    model.train()
    with pytest.raises(ValueError, match="one target dict per image"):
        model(torch.rand(1, 3, 64, 64))
    bad = [{"boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0]]), "labels": torch.tensor([4]),
            "masks": torch.ones(1, 64, 64, dtype=torch.bool)}]
    with pytest.raises(ValueError, match="labels must be in 1..3"):
        model(torch.rand(1, 3, 64, 64), bad)
    bad[0]["labels"] = torch.tensor([1])
    bad[0]["masks"] = torch.ones(1, 32, 32, dtype=torch.bool)
    with pytest.raises(ValueError, match="masks \\[n, 64, 64\\]"):
        model(torch.rand(1, 3, 64, 64), bad)


# --- mask AP ----------------------------------------------------------------------------------

def _square(y, x, size=4, shape=(16, 16)):
    m = torch.zeros(shape, dtype=torch.bool)
    m[y:y + size, x:x + size] = True
    return m


def test_mask_ap_hand_example():
    gt = {"masks": torch.stack([_square(0, 0), _square(8, 8)]), "labels": torch.tensor([1, 1])}
    shifted = _square(0, 1)  # IoU with the first square: 12 / 20 = 0.6
    wrong = _square(0, 8)    # overlaps nothing
    pred = {"masks": torch.stack([shifted, wrong, _square(8, 8)]),
            "scores": torch.tensor([0.9, 0.8, 0.7]), "labels": torch.tensor([1, 1, 1])}
    # by score: TP, FP, TP -> recall 0.5, 0.5, 1; precision 1, 0.5, 2/3.
    # Interpolated precision is 1 for recall <= 0.5 (51 of the 101 points), 2/3 above (50 points).
    result = mask_average_precision([pred], [gt], 0.5)
    assert result["ap"] == pytest.approx((51 * 1 + 50 * 2 / 3) / 101)
    # at IoU 0.7 the shifted mask no longer counts: TP only at rank 3 -> precision 1/3 for
    # recall <= 0.5 ... recall never exceeds 0.5, so AP = 51/101 * 1/3
    assert mask_average_precision([pred], [gt], 0.7)["ap"] == pytest.approx(51 / 101 / 3)


def test_mask_ap_perfect_missing_and_per_class():
    gt = {"masks": torch.stack([_square(0, 0), _square(8, 8)]), "labels": torch.tensor([1, 2])}
    perfect = {"masks": gt["masks"].clone(), "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([1, 2])}
    assert mask_average_precision([perfect], [gt])["ap"] == 1.0
    swapped = dict(perfect, labels=torch.tensor([2, 1]))  # right masks, wrong classes
    assert mask_average_precision([swapped], [gt])["ap"] == 0.0
    none = {"masks": torch.zeros(0, 16, 16, dtype=torch.bool), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    result = mask_average_precision([none, perfect], [gt, gt])  # half the objects missed
    assert result["per_class"] == {1: pytest.approx(51 / 101), 2: pytest.approx(51 / 101)}
