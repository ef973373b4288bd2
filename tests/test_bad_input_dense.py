"""Bad input to the dense side of the public API: models, data and transforms, viz (issue 12).

Every case is a call a new user or a typo makes; each must raise a ``ValueError`` whose message
names the argument (or behave as documented), never crash deep inside torch or answer wrongly
in silence. Parametrised over ``list_models()`` and the public functions of ``segcourse.data``
and ``segcourse.viz``; valid neighbours of the bad cases are checked to still work.
"""

import numpy as np
import pytest
import torch

from segcourse.models import build, list_models

MODELS = list_models()


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: build(name, num_classes=2) for name in MODELS}


# --- models ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_model_refuses_images_of_another_dtype(models, name, dtype):
    model = models[name].eval()
    x = torch.rand(1, 3, 32, 32, dtype=dtype)
    with pytest.raises(ValueError, match=rf"input is {str(dtype)[6:]} but the model's parameters "
                                         r"are float32: pass input\.float\(\)"):
        model(x)


@pytest.mark.parametrize("name", MODELS)
def test_model_follows_its_own_dtype(models, name):
    model = build(name, num_classes=2).double().eval()  # model.double() is the other fix
    with torch.no_grad():
        out = model(torch.rand(1, 3, 32, 32, dtype=torch.float64))
    assert out.dtype == torch.float64 and torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("size", [16, 31])
def test_model_refuses_images_below_32_px(models, name, size):
    with pytest.raises(ValueError, match="input height and width must be at least 32"):
        models[name].train()(torch.rand(1, 3, size, 40))


@pytest.mark.parametrize("name", MODELS)
def test_model_trains_at_32_px_batch_one(models, name):
    model = models[name].train()
    out = model(torch.rand(1, 3, 32, 32))
    out.sum().backward()
    assert out.shape == (1, 2, 32, 32) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("argument, value", [
    ("num_classes", True), ("num_classes", 0), ("num_classes", 2.0), ("num_classes", "2"),
    ("num_classes", None), ("in_channels", 0), ("in_channels", False), ("in_channels", 3.0)])
def test_build_refuses_bad_counts(name, argument, value):
    kwargs = {"num_classes": 2, argument: value}
    with pytest.raises(ValueError, match=argument):
        build(name, **kwargs)


@pytest.mark.parametrize("name", MODELS)
def test_build_refuses_a_bool_in_place_of_num_classes(name):
    with pytest.raises(ValueError, match=r"num_classes must be an int >= 1, got True"):
        build(name, True)  # positional misuse: build(name, paper) meant


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("argument, value", [("num_classes", True), ("in_channels", 0)])
def test_builder_and_class_refuse_bad_counts(name, argument, value):
    from segcourse.models import _REGISTRY
    kwargs = {"num_classes": 2, argument: value}
    with pytest.raises(ValueError, match=argument):
        _REGISTRY[name](**kwargs)  # the builder called directly, as the chapters do


@pytest.mark.parametrize("name", MODELS)
def test_build_accepts_numpy_ints(name):
    model = build(name, num_classes=np.int64(2), in_channels=np.int64(1)).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 1, 32, 32)).shape == (1, 2, 32, 32)


def test_resnet_refuses_images_of_another_dtype():
    from segcourse.models.resnet import resnet
    with pytest.raises(ValueError, match="input is float64"):
        resnet(18)(torch.rand(1, 3, 32, 32, dtype=torch.float64))
    with pytest.raises(ValueError, match="in_channels"):
        resnet(18, in_channels=0)
