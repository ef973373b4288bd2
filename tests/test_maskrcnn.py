"""Mask R-CNN: box geometry, anchors, matching and mask targets by hand; frozen BatchNorm against
nn.BatchNorm2d; the paper-size parameter count against torchvision's published number; forward
in train / eval mode on odd sizes; a training step that lowers the loss; the detection targets;
mask AP on a hand-computed example; clear errors."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from segcourse.data import InstanceTargets, ShapesDataset, target_from_mask, targets_from_samples
from segcourse.metrics import mask_average_precision
from segcourse.models.mask_rcnn import PAPER, MaskRCNN, mask_rcnn
from segcourse.models.roi_heads import paste_masks, project_masks_on_boxes
from segcourse.models.rpn import AnchorGenerator
from segcourse.ops import (
    FrozenBatchNorm2d,
    MultiScaleRoIAlign,
    box_iou,
    convert_frozen_batchnorm,
    decode_boxes,
    encode_boxes,
    match_boxes,
    roi_align,
    sample_balanced,
)

# --- the parts ---------------------------------------------------------------------------------

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
    deltas = encode_boxes(boxes, anchors, (10, 10, 5, 5))
    torch.testing.assert_close(decode_boxes(deltas, anchors, (10, 10, 5, 5))[:, 0], boxes)


def test_cell_anchors_match_torchvision_values():
    # torchvision AnchorGenerator(sizes=((32,),), aspect_ratios=((0.5, 1.0, 2.0),)): base anchors
    # round([-w, -h, w, h] / 2) with h = 32 sqrt(r), w = 32 / sqrt(r):
    # w = 45.25, 32, 22.63 and h = 22.63, 32, 45.25.
    expected = torch.tensor([[-23.0, -11.0, 23.0, 11.0], [-16.0, -16.0, 16.0, 16.0],
                             [-11.0, -23.0, 11.0, 23.0]])
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
    with pytest.raises(ValueError, match="low"):
        match_boxes(iou, 0.3, 0.7, False)


def test_balanced_sampling_counts():
    labels = torch.tensor([1] * 30 + [0] * 100 + [-1] * 50)
    torch.manual_seed(0)
    pos, neg = sample_balanced(labels, 64, 0.25)
    assert len(pos) == 16 and len(neg) == 48               # 25% of 64 positives, the rest
    assert (labels[pos] == 1).all() and (labels[neg] == 0).all()
    assert len(set(pos.tolist())) == 16 and len(set(neg.tolist())) == 48  # without repeats
    pos, neg = sample_balanced(labels, 256, 0.5)          # only 30 positives: filled with neg.
    assert len(pos) == 30 and len(neg) == 100             # ... up to the 100 there are


def test_fpn_level_assignment():
    pool = MultiScaleRoIAlign(7)
    boxes = torch.tensor([[0, 0, 224.0, 224.0], [0, 0, 112.0, 112.0], [0, 0, 448.0, 448.0],
                          [0, 0, 10.0, 10.0], [0, 0, 2000.0, 2000.0], [0, 0, 223.0, 225.0],
                          [0, 0, 224.0, 230.0]])
    # FPN Eq. 1: k = floor(4 + log2(sqrt(wh) / 224)), clamped to P2..P5 (indices 0..3)
    # (223 x 225 has sqrt(area) = 223.998 < 224: one level down)
    assert pool.levels(boxes).tolist() == [2, 1, 3, 0, 3, 1, 2]


@pytest.mark.parametrize("aligned", [True, False])
def test_multiscale_roi_align_reads_each_box_from_its_level(aligned):
    torch.manual_seed(0)
    features = [torch.randn(2, 3, 256 // s, 256 // s) for s in (4, 8, 16, 32)]
    boxes = [torch.tensor([[10.0, 20.0, 40.0, 50.0], [0.0, 0.0, 250.0, 240.0]]),
             torch.tensor([[30.0, 30.0, 150.0, 140.0]])]
    out = MultiScaleRoIAlign(7, aligned=aligned)(features, boxes)
    # 30 px -> P2 (stride 4); 245 px -> P4 (stride 16); 115 px -> P3 (stride 8)
    for k, (image, box, level, stride) in enumerate([(0, boxes[0][0], 0, 4),
                                                      (0, boxes[0][1], 2, 16),
                                                      (1, boxes[1][0], 1, 8)]):
        expected = roi_align(features[level], torch.cat([torch.tensor([float(image)]), box])[None],
                             7, 1 / stride, 2, aligned=aligned)
        torch.testing.assert_close(out[k:k + 1], expected)


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


def test_mask_targets_are_the_matched_objects_mask_in_the_roi_binarised():
    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[0, 4:12, 4:12] = True      # object 0: an 8 x 8 square
    masks[1, 0:16, 0:8] = True       # object 1: the left half of the image
    rois = torch.tensor([[4.0, 4.0, 12.0, 12.0],    # exactly object 0's box
                         [0.0, 0.0, 16.0, 16.0]])   # the whole image, object 1
    targets = project_masks_on_boxes(masks, rois, torch.tensor([0, 1]), 28)
    assert targets.dtype == torch.bool and targets.shape == (2, 28, 28)
    # Object 0: the first sample lies at 4 + 0.5 * 8/28 - 0.5 = 3.643 in pixel-centre
    # coordinates, 0.643 of the way into the object: an edge cell reads 0.643 (True), a corner
    # cell 0.643**2 = 0.413 (False, where torchvision's soft target would keep 0.41).
    corners = torch.zeros(28, 28, dtype=torch.bool)
    corners[[0, 0, -1, -1], [0, -1, 0, -1]] = True
    assert torch.equal(targets[0], ~corners)
    # Object 1: column j samples x = (j + 0.5) * 16/28 - 0.5; j = 13 reads 7.21 (0.79 inside),
    # j = 14 reads 7.79 (0.21 inside): exactly the left half
    assert targets[1, :, :14].all() and not targets[1, :, 14:].any()


# --- frozen BatchNorm ----------------------------------------------------------------------------

def _random_batchnorm(channels=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(channels, eps=1e-3)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(channels, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(channels, generator=g))
        bn.running_mean.copy_(torch.randn(channels, generator=g))
        bn.running_var.copy_(torch.rand(channels, generator=g) + 0.1)
    return bn


def test_frozen_batchnorm_equals_batchnorm_in_eval_mode_and_ignores_the_batch():
    bn = _random_batchnorm()
    frozen = convert_frozen_batchnorm(bn)
    assert isinstance(frozen, FrozenBatchNorm2d) and frozen.eps == 1e-3
    assert list(frozen.parameters()) == []  # statistics and affine are buffers
    x = torch.randn(4, 6, 5, 7) * 3 + 1
    torch.testing.assert_close(frozen(x), bn.eval()(x))
    # training mode: BatchNorm2d would use the batch's statistics; the frozen layer does not
    def per_channel(t):
        return t.detach()[:, None, None]
    by_hand = (x - per_channel(bn.running_mean)) / torch.sqrt(per_channel(bn.running_var) + 1e-3)
    by_hand = by_hand * per_channel(bn.weight) + per_channel(bn.bias)
    torch.testing.assert_close(frozen.train()(x), by_hand)
    torch.testing.assert_close(frozen(x[:1]), by_hand[:1])
    assert FrozenBatchNorm2d(4).eps == 1e-5  # torchvision's default


def test_convert_swaps_every_batchnorm_and_loads_batchnorm_checkpoints():
    net = nn.Sequential(nn.Conv2d(3, 6, 3), _random_batchnorm(6, 1), nn.ReLU(),
                        nn.Sequential(nn.Conv2d(6, 6, 1), _random_batchnorm(6, 2)))
    state = net.state_dict()                          # includes num_batches_tracked
    x = torch.randn(2, 3, 9, 9)
    expected = net.eval()(x)
    convert_frozen_batchnorm(net)
    assert [type(m).__name__ for m in net.modules()].count("FrozenBatchNorm2d") == 2
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    torch.testing.assert_close(net.train()(x), expected)
    net.load_state_dict(state, strict=True)           # a BatchNorm2d checkpoint loads as is
    with pytest.raises(ValueError, match="nn.Module"):
        convert_frozen_batchnorm("not a module")


# --- the paper configuration ---------------------------------------------------------------------

def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_paper_configuration_has_torchvisions_parameter_count():
    # torchvision's model table lists maskrcnn_resnet50_fpn (91 classes) with 44,401,393
    # parameters; its backbone's BatchNorm is FrozenBatchNorm2d (buffers), and so is ours.
    with torch.device("meta"):  # shapes only: costs no memory
        model = mask_rcnn(91, paper=True)
    assert _count(model) == 44_401_393
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in model.backbone.modules()) == 53
    # pieces, as derived from torchvision's source shapes
    assert _count(model.rpn) == 593_935
    assert _count(model.roi_heads.box_head) == 14_362_055
    assert _count(model.roi_heads.mask_head) == 2_646_107
    assert _count(model.fpn) == 3_344_384
    # trainable_backbone_layers=3 (torchvision's default with pre-trained weights): the stem
    # conv (3*64*49 = 9,408) and layer1's convs (73,728 + 2 * 69,632 = 212,992) stay fixed
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 44_401_393 - 9_408 - 212_992
    frozen = {n.split(".")[1] for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "layer1"}


def test_small_configuration_trains_batchnorm_and_every_layer():
    model = mask_rcnn(4)
    assert not model.config.frozen_batchnorm and model.config.trainable_layers == 5
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.backbone.modules())
    assert all(p.requires_grad for p in model.parameters())
    with torch.device("meta"):
        assert mask_rcnn(4, frozen_batchnorm=True, trainable_layers=0).backbone.layer4[0] \
            .conv1.weight.requires_grad is False
    with pytest.raises(ValueError, match="trainable_layers"):
        mask_rcnn(4, trainable_layers=6)
    with pytest.raises(ValueError, match="unknown MaskRCNNConfig field"):
        mask_rcnn(4, fpn_chanels=32)
    with pytest.raises(ValueError, match="num_classes"):
        mask_rcnn(1)
    assert isinstance(PAPER, type(model.config)) and MaskRCNN.returns_losses


# --- targets -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shapes_batch():
    data = InstanceTargets(ShapesDataset(num_samples=4, size=64, seed=3))
    return InstanceTargets.collate_fn([data[i] for i in range(4)])


def test_targets_from_samples():
    ds = ShapesDataset(num_samples=2, size=64, seed=0)
    s = ds.sample(0)
    (t,) = targets_from_samples([s], ds.thing_classes)
    n = len(s.instance_classes)
    assert t["boxes"].shape == (n, 4) and t["masks"].shape == (n, 64, 64)
    # classes 2..4 -> labels 1..3
    assert t["labels"].tolist() == [c - 1 for c in s.instance_classes.tolist()]
    for k in range(n):  # each mask's bounding box is the dataset's box
        ys, xs = torch.where(t["masks"][k])
        box = [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
        assert box == t["boxes"][k].tolist()
    assert torch.equal(t["semantic"], s.mask)
    with pytest.raises(ValueError, match="not in thing_classes"):
        targets_from_samples([s], [2])


def test_instance_targets_dataset_and_collate():
    ds = ShapesDataset(num_samples=3, size=48, seed=5)
    data = InstanceTargets(ds)
    assert len(data) == 3 and data.thing_classes == tuple(ds.thing_classes)
    image, target = data[1]
    assert torch.equal(image, ds.sample(1).image)
    assert torch.equal(target["masks"], targets_from_samples([ds.sample(1)], ds.thing_classes)[0]
                       ["masks"])
    images, targets = InstanceTargets.collate_fn([data[0], data[1], data[2]])
    assert images.shape == (3, 3, 48, 48) and len(targets) == 3
    assert [len(t["boxes"]) for t in targets] == [len(ds.sample(i).instance_classes)
                                                 for i in range(3)]
    with pytest.raises(ValueError, match="thing_classes"):
        InstanceTargets([(image, ds.sample(0).mask)])


def test_target_from_a_class_map_makes_one_object_per_thing_class():
    mask = torch.zeros(10, 12, dtype=torch.long)
    mask[2:5, 3:9] = 1          # a "pet"
    mask[1, 3:9] = 255          # its void border
    t = target_from_mask(mask, thing_classes=(1,))
    assert t["boxes"].tolist() == [[3.0, 2.0, 9.0, 5.0]] and t["labels"].tolist() == [1]
    assert torch.equal(t["masks"][0], mask == 1)
    empty = target_from_mask(torch.zeros(10, 12, dtype=torch.long), (1,))
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 10, 12)
    # a dataset of (image, mask) pairs through InstanceTargets
    image, target = InstanceTargets([(torch.rand(3, 10, 12), mask)], thing_classes=(1,))[0]
    assert torch.equal(target["boxes"], t["boxes"])


# --- the model -----------------------------------------------------------------------------------

def test_images_without_objects_give_a_zero_mask_loss_that_reaches_every_mask_parameter():
    """No positive RoI: the mask loss is 0 but still touches the whole mask head, so under DDP
    every parameter gets a (zero) gradient and the next all-reduce does not stall."""
    torch.manual_seed(0)
    model = mask_rcnn(4).train()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
             "masks": torch.zeros(0, 64, 64, dtype=torch.bool)}
    losses = model(torch.rand(2, 3, 64, 64), [empty, dict(empty)])
    assert losses["loss_mask"].item() == 0.0 and torch.isfinite(sum(losses.values()))
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.roi_heads.mask_head.parameters())


def test_train_mode_returns_finite_losses_and_gradients_reach_the_stem(shapes_batch):
    images, targets = shapes_batch
    torch.manual_seed(0)
    model = mask_rcnn(4).train()
    losses = model(images, targets)
    assert set(losses) == {"loss_rpn_objectness", "loss_rpn_box", "loss_classifier", "loss_box",
                           "loss_mask"}
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
    assert out["boxes"].shape == (n, 4) and out["scores"].shape == (n,)
    assert out["labels"].shape == (n,)
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
    targets = [{"boxes": torch.tensor([[4.0, 5.0, 30.0, 20.0]]), "labels": torch.tensor([2]),
                "masks": masks},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                "masks": torch.zeros(0, 33, 47, dtype=torch.bool)}]
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_paper_model_with_frozen_batchnorm_trains_a_step():
    # the paper's structure (frozen BN, stem and layer1 fixed) at a width a test can afford
    torch.manual_seed(0)
    model = mask_rcnn(3, paper=True, depth=18, width=8, fpn_channels=16, representation=32,
                      mask_channels=8, roi_batch_size=16, anchor_sizes=(8, 16, 32, 64, 128),
                      rpn_pre_nms_top_n=(50, 50), rpn_post_nms_top_n=(50, 50)).train()
    images = torch.rand(1, 3, 64, 64)
    masks = torch.zeros(1, 64, 64, dtype=torch.bool)
    masks[0, 10:40, 12:50] = True
    targets = [{"boxes": torch.tensor([[12.0, 10.0, 50.0, 40.0]]), "labels": torch.tensor([1]),
                "masks": masks}]
    stats = model.backbone.bn1.running_mean.clone()
    sum(model(images, targets).values()).backward()
    assert model.backbone.conv1.weight.grad is None          # frozen: no gradient computed
    assert model.backbone.layer2[0].conv1.weight.grad is not None
    assert torch.equal(model.backbone.bn1.running_mean, stats)  # statistics did not move


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
    bad[0]["boxes"] = torch.tensor([[5.0, 1.0, 5.0, 9.0]])
    with pytest.raises(ValueError, match="positive width and height"):
        model(torch.rand(1, 3, 64, 64), bad)
    bad[0]["boxes"] = torch.tensor([[1.0, 1.0, 9.0, 9.0]])
    bad[0]["masks"] = torch.ones(1, 32, 32, dtype=torch.bool)
    with pytest.raises(ValueError, match="masks \\[n, 64, 64\\]"):
        model(torch.rand(1, 3, 64, 64), bad)
    del bad[0]["masks"]
    with pytest.raises(ValueError, match="missing \\['masks'\\]"):
        model(torch.rand(1, 3, 64, 64), bad)


# --- mask AP -------------------------------------------------------------------------------------

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
    perfect = {"masks": gt["masks"].clone(), "scores": torch.tensor([0.9, 0.8]),
               "labels": torch.tensor([1, 2])}
    assert mask_average_precision([perfect], [gt])["ap"] == 1.0
    swapped = dict(perfect, labels=torch.tensor([2, 1]))  # right masks, wrong classes
    assert mask_average_precision([swapped], [gt])["ap"] == 0.0
    none = {"masks": torch.zeros(0, 16, 16, dtype=torch.bool), "scores": torch.zeros(0),
            "labels": torch.zeros(0, dtype=torch.int64)}
    result = mask_average_precision([none, perfect], [gt, gt])  # half the objects missed
    assert result["per_class"] == {1: pytest.approx(51 / 101), 2: pytest.approx(51 / 101)}


CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "panoptic_fpn_shapes.pt"


@pytest.mark.skipif(not CHECKPOINT.exists(), reason="the shipped checkpoint is not here")
def test_the_shipped_checkpoint_loads_strictly():
    # the module layout (names and shapes of every weight) is what the checkpoint was saved from
    from segcourse.models.panoptic_fpn import panoptic_fpn
    state = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
    model = panoptic_fpn(state["thing_classes"], state["stuff_classes"])
    model.load_state_dict(state["model"], strict=True)
