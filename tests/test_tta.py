"""Test-time augmentation: identity views, hand-computed flips, view-by-view loop, mode handling."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from segcourse.tta import tta_predict


def small_net(num_classes=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, num_classes, 3, padding=2, dilation=2))


class ColumnModel(nn.Module):
    """Ignores the image: logits (col, 0) at column ``col`` -- not flip-equivariant."""

    def forward(self, x):
        B, _, H, W = x.shape
        col = torch.arange(W, dtype=x.dtype).expand(B, 1, H, W)
        return torch.cat([col, torch.zeros_like(col)], dim=1)


def test_identity_views_equal_plain_prediction():
    net = small_net().eval()
    x = torch.rand(2, 3, 33, 47)
    torch.testing.assert_close(tta_predict(net, x, scales=(1.0,), flip=False), net(x).softmax(1))


def test_flip_is_undone_hand_computed():
    # Plain view: p(class 0) = sigmoid(col). Flipped view, flipped back: sigmoid(W - 1 - col).
    x = torch.rand(1, 3, 2, 5)
    col = torch.arange(5.0)
    expected = (torch.sigmoid(col) + torch.sigmoid(4 - col)) / 2
    probs = tta_predict(ColumnModel(), x, scales=(1.0,), flip=True)
    torch.testing.assert_close(probs[0, 0], expected.expand(2, 5))


def test_flip_equivariant_model_is_unchanged_by_flip():
    torch.manual_seed(1)
    net = nn.Conv2d(3, 4, 1).eval()  # per-pixel, so flipping commutes with it
    x = torch.rand(3, 3, 32, 40)
    torch.testing.assert_close(tta_predict(net, x, scales=(1.0,), flip=True), net(x).softmax(1))


def test_matches_view_by_view_loop():
    net = small_net(seed=2).eval()
    x = torch.rand(2, 3, 37, 45)
    views = []
    for scale in (0.75, 1.0, 1.5):
        size = (round(37 * scale), round(45 * scale))
        for flipped in (False, True):
            for b in range(2):  # one image at a time, one view at a time
                image = F.interpolate(x[b:b + 1], size=size, mode="bilinear", align_corners=False)
                image = image.flip(-1) if flipped else image
                probs = net(image).softmax(1)
                probs = probs.flip(-1) if flipped else probs
                views.append((b, F.interpolate(probs, size=(37, 45), mode="bilinear",
                                               align_corners=False)))
    expected = torch.cat([sum(p for b, p in views if b == i) / 6 for i in range(2)])
    torch.testing.assert_close(tta_predict(net, x, scales=(0.75, 1.0, 1.5)), expected)


def test_batch_aware_and_probabilities():
    net = small_net(seed=3)
    x = torch.rand(5, 3, 33, 47)
    probs = tta_predict(net, x)
    assert probs.shape == (5, 3, 33, 47) and probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(1), torch.ones(5, 33, 47))
    torch.testing.assert_close(tta_predict(net, x, batch_size=2), probs)
    torch.testing.assert_close(tta_predict(net, x[3:4]), probs[3:4])


def test_no_grad_and_mode_restored():
    net = small_net(seed=4).train()
    running_mean = net[1].running_mean.clone()
    probs = tta_predict(net, torch.rand(2, 3, 32, 32))
    assert net.training and not probs.requires_grad
    # eval mode: BatchNorm statistics untouched
    assert torch.equal(net[1].running_mean, running_mean)
    net.eval()
    tta_predict(net, torch.rand(1, 3, 32, 32))
    assert not net.training


def test_mode_restored_after_error():
    net = small_net().train()
    with pytest.raises(RuntimeError):
        tta_predict(net, torch.rand(1, 4, 32, 32))  # 4 channels: the model's conv fails
    assert net.training


def test_bad_input_raises():
    net = small_net()
    with pytest.raises(ValueError, match="shape"):
        tta_predict(net, torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="floating"):
        tta_predict(net, torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="scales"):
        tta_predict(net, torch.rand(1, 3, 32, 32), scales=())
    with pytest.raises(ValueError, match="scales"):
        tta_predict(net, torch.rand(1, 3, 32, 32), scales=(1.0, -0.5))
    with pytest.raises(ValueError, match=r"scales must be a sequence .* e\.g\. \(0\.5,\)"):
        tta_predict(net, torch.rand(1, 3, 32, 32), scales=0.5)
    with pytest.raises(ValueError, match="batch_size"):
        tta_predict(net, torch.rand(1, 3, 32, 32), batch_size=0)


def test_float64_images_follow_the_model_dtype():
    net = small_net()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(tta_predict(net, x), tta_predict(net, x.float()))


def test_tta_figure_and_explorer():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from segcourse.viz import tta_figure
    from segcourse.widgets import tta_explorer

    net = nn.Conv2d(3, 2, 1).eval()  # per-pixel: every view agrees with the plain one
    image = torch.rand(3, 32, 36)
    mask = net(image[None]).argmax(1)[0]
    palette = np.array([[0, 0, 0], [255, 255, 255]], dtype=np.uint8)
    fig = tta_figure(net, image, mask, palette, scales=(1.0,), flip=True)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[2] == "plain, mIoU 1.000" and titles[3] == "TTA 1 scale x 2 flips, mIoU 1.000"
    plt.close(fig)
    assert len(tta_explorer(net, image[None], mask[None], palette).children) == 3
    plt.close("all")
