"""Bad input to the dense side of the public API: models, data and transforms, viz (issue 12).

Every case is a call a new user or a typo makes; each must raise a ``ValueError`` whose message
names the argument (or behave as documented), never crash deep inside torch or answer wrongly
in silence. Parametrised over ``list_models()`` and the public functions of ``segcourse.data``
and ``segcourse.viz``; valid neighbours of the bad cases are checked to still work.
"""

import numpy as np
import pytest
import torch

from segcourse.models import CLASSIFIERS, build, list_models

MODELS = list_models(CLASSIFIERS)  # SAM (promptable): tests/test_sam*.py
SET_MODELS = set(list_models("mask_classification"))  # per-pixel scores via .semantic


def per_pixel(model, name, x):
    """Logits of a per-pixel model, the semantic scores of a mask classifier."""
    return model.semantic(x) if name in SET_MODELS else model(x)


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
        out = per_pixel(model, name, torch.rand(1, 3, 32, 32, dtype=torch.float64))
    assert out.dtype == torch.float64 and torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("size", [16, 31])
def test_model_refuses_images_below_32_px(models, name, size):
    with pytest.raises(ValueError, match="input height and width must be at least 32"):
        models[name].train()(torch.rand(1, 3, size, 40))


@pytest.mark.parametrize("name", MODELS)
def test_model_trains_at_32_px_batch_one(models, name):
    model = models[name].train()
    x = torch.rand(1, 3, 32, 32)
    if name in SET_MODELS:  # the model's own losses, on a semantic map
        if hasattr(model, "plan_training"):
            model.plan_training(1)
        if name == "mask2former":  # BatchNorm at a 1 x 1 map: a clear error, and batch 2 trains
            with pytest.raises(ValueError, match="2 or more images"):
                model(x, torch.zeros(1, 32, 32, dtype=torch.long))
            x = torch.rand(2, 3, 32, 32)
        losses = model(x, torch.zeros(len(x), 32, 32, dtype=torch.long))
        sum(losses.values()).backward()
        assert all(torch.isfinite(v) for v in losses.values())
        return
    out = model(x)
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
@pytest.mark.parametrize("paper", ["yes", 1, None])
def test_build_refuses_a_paper_flag_that_is_not_a_bool(name, paper):
    with pytest.raises(ValueError, match="paper must be True or False"):
        build(name, 2, paper=paper)


@pytest.mark.parametrize("model", ["unet", "attention_unet"])
@pytest.mark.parametrize("field, value", [("depth", 0), ("depth", 2.5), ("base_channels", 0),
                                          ("base_channels", 4.0), ("depth", True)])
def test_unet_refuses_bad_sizes(model, field, value):
    with pytest.raises(ValueError, match=field):
        build(model, 2, **{field: value})


@pytest.mark.parametrize("name", MODELS)
def test_build_accepts_numpy_ints(name):
    model = build(name, num_classes=np.int64(2), in_channels=np.int64(1)).eval()
    with torch.no_grad():
        assert per_pixel(model, name, torch.rand(1, 1, 32, 32)).shape == (1, 2, 32, 32)


def test_resnet_refuses_images_of_another_dtype():
    from segcourse.models.resnet import resnet
    with pytest.raises(ValueError, match="input is float64"):
        resnet(18)(torch.rand(1, 3, 32, 32, dtype=torch.float64))
    with pytest.raises(ValueError, match="in_channels"):
        resnet(18, in_channels=0)


# --- data and transforms -----------------------------------------------------------------------

from segcourse.data import (  # noqa: E402
    Normalize,
    OxfordPets,
    RandomHorizontalFlip,
    RandomScaleCrop,
    Resize,
    ShapesDataset,
    resize_pair,
)

PAIR_TRANSFORMS = {
    "resize_pair": lambda i, m: resize_pair(i, m, (24, 24)),
    "Resize": Resize(24),
    "RandomHorizontalFlip": RandomHorizontalFlip(1.0),
    "RandomScaleCrop": RandomScaleCrop(24),
    "Normalize": Normalize(),
}


@pytest.mark.parametrize("name", PAIR_TRANSFORMS)
@pytest.mark.parametrize("mask_shape", [(16, 16), (32, 31), (1, 32, 32)])
def test_transform_refuses_a_mask_of_another_size(name, mask_shape):
    image, mask = torch.rand(3, 32, 32), torch.zeros(mask_shape, dtype=torch.long)
    with pytest.raises(ValueError, match="mask"):
        PAIR_TRANSFORMS[name](image, mask)


@pytest.mark.parametrize("name", PAIR_TRANSFORMS)
def test_transform_refuses_a_batched_image(name):
    with pytest.raises(ValueError, match="image"):
        PAIR_TRANSFORMS[name](torch.rand(1, 3, 32, 32), torch.zeros(32, 32, dtype=torch.long))


@pytest.mark.parametrize("name", PAIR_TRANSFORMS)
def test_transform_keeps_valid_pairs_aligned(name):
    torch.manual_seed(0)
    image, mask = torch.rand(3, 32, 32), torch.randint(0, 3, (32, 32))
    out_image, out_mask = PAIR_TRANSFORMS[name](image, mask)
    assert out_image.shape[-2:] == out_mask.shape and torch.isfinite(out_image).all()


def test_normalize_refuses_a_channel_count_it_was_not_given():
    with pytest.raises(ValueError, match="image has 1 channel.*mean and std have 3"):
        Normalize()(torch.rand(1, 32, 32), torch.zeros(32, 32, dtype=torch.long))
    out, _ = Normalize(mean=(0.5,), std=(0.5,))(torch.rand(1, 8, 8), torch.zeros(8, 8).long())
    assert out.shape == (1, 8, 8)  # one entry serves every channel (documented)


@pytest.mark.parametrize("kwargs, argument", [
    (dict(mean=(0.5, 0.5), std=(0.2, 0.2, 0.2)), "mean and std"),
    (dict(std=(0.2, 0.0, 0.2)), "std"), (dict(mean=()), "mean"), (dict(mean="rgb"), "mean"),
    (dict(std=((0.2,),)), "std"), (dict(mean=(float("nan"),) * 3), "mean")])
def test_normalize_refuses_bad_statistics(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        Normalize(**kwargs)


@pytest.mark.parametrize("make, argument", [
    (lambda: Resize(0), "size"), (lambda: Resize(2.5), "size"), (lambda: Resize((8,)), "size"),
    (lambda: RandomScaleCrop(-4), "size"), (lambda: RandomScaleCrop(8, (2.0, 0.5)), "scale"),
    (lambda: RandomScaleCrop(8, (0.0, 1.0)), "scale"), (lambda: RandomScaleCrop(8, 1.0), "scale"),
    (lambda: RandomHorizontalFlip(1.5), "p"), (lambda: RandomHorizontalFlip("yes"), "p"),
    (lambda: resize_pair(torch.rand(3, 8, 8), torch.zeros(8, 8).long(), (0, 4)), "size"),
    (lambda: resize_pair(torch.rand(3, 8, 8), torch.zeros(8, 8).long(), (4.5, 4)), "size")])
def test_transform_constructors_refuse_nonsense(make, argument):
    with pytest.raises(ValueError, match=argument):
        make()


@pytest.mark.parametrize("kwargs, argument", [
    (dict(num_samples=-1), "num_samples"), (dict(num_samples=2.7), "num_samples"),
    (dict(num_samples=0), "num_samples"), (dict(num_samples=True), "num_samples"),
    (dict(num_samples="10"), "num_samples"), (dict(size=4), "size"), (dict(size=32.5), "size"),
    (dict(size=(32, 32, 3)), "size"), (dict(size="64"), "size"), (dict(num_things=0), "num_things"),
    (dict(num_things=6), "num_things"), (dict(num_things=2.0), "num_things"),
    (dict(max_instances=0), "max_instances"), (dict(max_instances=1.5), "max_instances"),
    (dict(seed=-1), "seed"), (dict(seed=0.5), "seed"), (dict(noise=-0.1), "noise"),
    (dict(noise=float("nan")), "noise"), (dict(void_border=-1), "void_border"),
    (dict(void_border=1.5), "void_border")])
def test_shapes_dataset_refuses_nonsense(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        ShapesDataset(**{"num_samples": 2, "size": 32, **kwargs})


def test_shapes_dataset_accepts_numpy_counts():
    ds = ShapesDataset(np.int64(2), size=(np.int64(32), 40), num_things=np.int64(2))
    image, mask = ds[1]
    assert len(ds) == 2 and image.shape == (3, 32, 40) and mask.shape == (32, 40)


def _fake_pets(root, trimap_size):
    from PIL import Image
    (root / "images").mkdir()
    (root / "annotations" / "trimaps").mkdir(parents=True)
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(root / "images" / "cat_1.jpg")
    Image.fromarray(np.full(trimap_size, 2, np.uint8)).save(
        root / "annotations" / "trimaps" / "cat_1.png")
    (root / "annotations" / "trainval.txt").write_text("cat_1 1 1 1\n")
    return root


@pytest.mark.parametrize("size", [None, 16])
def test_pets_refuses_a_trimap_of_another_size(tmp_path, size):
    ds = OxfordPets(_fake_pets(tmp_path, (20, 40)), size=size)
    with pytest.raises(ValueError, match=r"cat_1\.png is 40 x 20"):
        ds[0]


@pytest.mark.parametrize("size", [0, 2.5, (16,), "big"])
def test_pets_refuses_a_bad_size(tmp_path, size):
    with pytest.raises(ValueError, match="size"):
        OxfordPets(_fake_pets(tmp_path, (30, 40)), size=size)


def test_pets_reads_a_matching_pair(tmp_path):
    image, mask = OxfordPets(_fake_pets(tmp_path, (30, 40)), size=None)[0]
    assert image.shape == (3, 30, 40) and mask.shape == (30, 40) and (mask == 0).all()


# --- viz ---------------------------------------------------------------------------------------

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from segcourse import viz  # noqa: E402

PALETTE = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]], dtype=np.uint8)
IMAGES = torch.rand(2, 3, 16, 16)
MASKS = torch.randint(0, 3, (2, 16, 16))

VIZ_MISMATCHES = {
    "show_predictions: masks N": (lambda: viz.show_predictions(IMAGES, MASKS[:1], palette=PALETTE),
                                  "masks holds 1 label maps but images holds 2"),
    "show_predictions: masks size": (
        lambda: viz.show_predictions(IMAGES, MASKS[..., :8], palette=PALETTE), r"masks\[0\]"),
    "show_predictions: preds N": (
        lambda: viz.show_predictions(IMAGES, MASKS, MASKS[:1], palette=PALETTE), "preds holds 1"),
    "show_predictions: preds size": (
        lambda: viz.show_predictions(IMAGES, MASKS, {"net": MASKS[..., :8]}, palette=PALETTE),
        r"preds\['net'\]\[0\]"),
    "show_predictions: palette short": (
        lambda: viz.show_predictions(IMAGES, MASKS, palette=PALETTE[:2]), "palette"),
    "show_predictions: palette shape": (
        lambda: viz.show_predictions(IMAGES, MASKS, palette=[1, 2, 3]), "palette"),
    "colorize: palette short": (lambda: viz.colorize(MASKS[0], PALETTE[:1]), "palette"),
    "colorize: palette values": (lambda: viz.colorize(MASKS[0], [[0, 0, 300]] * 3), "palette"),
    "colorize: negative label": (lambda: viz.colorize(MASKS[0] - 1, PALETTE), "mask"),
    "overlay: mask size": (lambda: viz.overlay(IMAGES[0], MASKS[0, :8], PALETTE), "mask"),
    "overlay: palette short": (lambda: viz.overlay(IMAGES[0], MASKS[0], PALETTE[:2]), "palette"),
    "show_model_predictions: masks N": (
        lambda: viz.show_model_predictions(IMAGES, MASKS[:1], {"a": MASKS[:1]}, PALETTE),
        "masks holds 1"),
    "show_model_predictions: masks size": (
        lambda: viz.show_model_predictions(IMAGES[..., :8], MASKS, {"a": MASKS}, PALETTE),
        r"masks\[0\]"),
    "show_attention_gates: masks N": (
        lambda: viz.show_attention_gates(IMAGES, [torch.rand(2, 1, 16, 16)] * 3, MASKS[:1]),
        "masks holds 1"),
    "show_augmented: pair sizes": (
        lambda: viz.show_augmented([(IMAGES[0], MASKS[0, :8])], PALETTE), r"pairs\[0\] mask"),
    "show_labels: target size": (
        lambda: viz.show_labels(IMAGES[0], {"a": MASKS[0]}, PALETTE, target=MASKS[0, :8]),
        "target"),
    "show_labels: palette short": (
        lambda: viz.show_labels(IMAGES[0], {"a": MASKS[0]}, PALETTE[:2]), "palette"),
    "crf_figure: mask size": (
        lambda: viz.crf_figure(IMAGES[0], torch.rand(3, 16, 16).softmax(0), MASKS[0, :8],
                               PALETTE), "mask"),
    "crf_figure: probs size": (
        lambda: viz.crf_figure(IMAGES[0], torch.rand(3, 8, 8).softmax(0), MASKS[0], PALETTE),
        "probs"),
    "plot_boundary_errors: preds shape": (
        lambda: viz.plot_boundary_errors({"a": MASKS[:1]}, MASKS, MASKS > 0), r"preds\['a'\]"),
}


@pytest.mark.parametrize("case", VIZ_MISMATCHES)
def test_viz_refuses_mismatched_inputs(case):
    call, match = VIZ_MISMATCHES[case]
    try:
        with pytest.raises(ValueError, match=match):
            call()
    finally:
        plt.close("all")


def test_viz_valid_inputs_still_draw():
    figs = [viz.show_predictions(IMAGES, MASKS, {"net": MASKS}, palette=PALETTE),
            viz.show_model_predictions(IMAGES, MASKS, {"a": MASKS}, PALETTE),
            viz.show_augmented([(IMAGES[0], MASKS[0])], PALETTE),
            viz.show_attention_gates(IMAGES, [torch.rand(2, 1, 16, 16)] * 3, MASKS)]
    assert all(len(f.axes) for f in figs)
    out = viz.overlay(IMAGES[0], MASKS[0], PALETTE)
    assert out.shape == (16, 16, 3) and np.isfinite(out).all()
    plt.close("all")


# --- widgets (ipywidgets 7.7 as on Colab, and 8) -----------------------------------------------

WIDGET_CASES = {
    "crf_explorer: masks N": (
        lambda w: w.crf_explorer(IMAGES, torch.rand(2, 3, 16, 16).softmax(1), MASKS[:1], PALETTE),
        "masks holds 1"),
    "crf_explorer: probs N": (
        lambda w: w.crf_explorer(IMAGES, torch.rand(1, 3, 16, 16).softmax(1), MASKS, PALETTE),
        "probs"),
    "crf_explorer: no images": (
        lambda w: w.crf_explorer(IMAGES[:0], torch.rand(0, 3, 16, 16), MASKS[:0], PALETTE),
        "images"),
    "tta_explorer: masks size": (
        lambda w: w.tta_explorer(build("fcn32s", 3).eval(), IMAGES, MASKS[..., :8], PALETTE),
        r"masks\[0\]"),
    "dilation_explorer: no layers": (lambda w: w.dilation_explorer(num_layers=0), "num_layers"),
}


@pytest.mark.parametrize("case", WIDGET_CASES)
def test_widgets_refuse_mismatched_inputs(case):
    pytest.importorskip("ipywidgets")
    from segcourse import widgets
    call, match = WIDGET_CASES[case]
    try:
        with pytest.raises(ValueError, match=match):
            call(widgets)
    finally:
        plt.close("all")


def test_widgets_build_on_valid_inputs():
    pytest.importorskip("ipywidgets")
    from segcourse import widgets
    probs = torch.rand(2, 3, 32, 32).softmax(1)
    images, masks = torch.rand(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    assert len(widgets.crf_explorer(images, probs, masks, PALETTE).children) == 2
    assert len(widgets.tta_explorer(build("fcn32s", 3).eval(), images, masks, PALETTE,
                                    scales=(1.0,)).children) == 3
    assert len(widgets.dilation_explorer(num_layers=2).children) == 2
    plt.close("all")
