"""The contract of every registered semantic model, whichever family registered it.

Parametrised over ``list_models()``: a family that registers a model is tested here without
editing this file. Registry defaults are CPU-sized, so this runs in seconds per model.
"""

import pytest
import torch

from segcourse.models import build, list_models

NUM_CLASSES = 3
MODELS = list_models()


def test_registry_is_populated_and_rejects_unknown_names():
    assert {"fcn32s", "fcn8s", "unet", "attention_unet"} <= set(MODELS)
    with pytest.raises(ValueError, match="unknown model"):
        build("no-such-model", NUM_CLASSES)
    with pytest.raises(ValueError, match="num_classes"):
        build(MODELS[0], 0)


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    torch.manual_seed(0)
    return build(request.param, num_classes=NUM_CLASSES, in_channels=3)


@pytest.mark.parametrize("shape", [(2, 97, 131), (2, 33, 47), (1, 64, 64), (1, 32, 32)],
                         ids=["97x131", "33x47", "batch1-64", "batch1-32"])
def test_logits_have_the_input_size(model, shape):
    batch, h, w = shape
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(batch, 3, h, w))
    assert out.shape == (batch, NUM_CLASSES, h, w)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_backward_reaches_the_first_layer(model):
    model.train()
    model.zero_grad(set_to_none=True)
    x = torch.rand(2, 3, 48, 56)
    target = torch.randint(0, NUM_CLASSES, (2, 48, 56))
    loss = torch.nn.functional.cross_entropy(model(x), target)
    loss.backward()
    first = next(p for p in model.parameters() if p.requires_grad)
    assert first.grad is not None and first.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("bad, message", [
    (torch.rand(3, 64, 64), "shape"),                     # no batch dimension
    (torch.rand(1, 1, 3, 64, 64), "shape"),               # 5-D
    (torch.rand(1, 4, 64, 64), "channels"),               # wrong channel count
    (torch.randint(0, 255, (1, 3, 64, 64)), "floating"),  # integer images
], ids=["rank3", "rank5", "channels", "int-dtype"])
def test_bad_input_raises_value_error(model, bad, message):
    model.eval()
    with pytest.raises(ValueError, match=message):
        model(bad)


def test_eval_mode_is_deterministic(model):
    model.eval()
    x = torch.rand(2, 3, 40, 52)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)


def test_in_channels_is_respected():
    for name in MODELS:
        net = build(name, NUM_CLASSES, in_channels=1).eval()
        with torch.no_grad():
            assert net(torch.rand(1, 1, 40, 40)).shape == (1, NUM_CLASSES, 40, 40)
