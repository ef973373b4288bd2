"""segcourse.quantize: a float graph scores PyTorch's mIoU; int8 stays within a stated bound of
it; the int8 file holds quantised ops, is smaller and runs at any size; a 1x1 conv quantised
by hand (scale, zero point, int32 bias) gives onnxruntime's int8 output; bad inputs."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from segcourse import models
from segcourse.data import ShapesDataset
from segcourse.evaluate import evaluate
from segcourse.export import export_onnx, run_onnx
from segcourse.quantize import evaluate_onnx, file_mb, onnx_predict, op_counts, quantize_onnx
from segcourse.train import fit

# segcourse imports onnx and onnxruntime when a function needs them
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

SIZE = 48
# int8 vs float mIoU on the held-out set: 0.0035-0.0042 seen for this model on one CPU (three
# calibration sets); 0.03 leaves room for other CPUs' kernels and rounding
MIOU_BOUND = 0.03


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A narrow U-Net trained ~4 s on shapes (held-out mIoU ~0.57), its float and int8 graphs."""
    folder = tmp_path_factory.mktemp("quantize")
    torch.manual_seed(0)
    train = ShapesDataset(192, size=SIZE, seed=0)
    model = models.build("unet", num_classes=train.num_classes, base_channels=8)
    fit(model, train, epochs=5, batch_size=16, lr=3e-3, progress=False)
    model.eval()
    float_path = export_onnx(model, folder / "unet.onnx", torch.randn(1, 3, SIZE, SIZE))
    calibration = ShapesDataset(32, size=SIZE, seed=2)  # training-like images, not the held-out
    int8_path = quantize_onnx(float_path, folder / "unet_int8.onnx", calibration)
    val = ShapesDataset(64, size=SIZE, seed=1)
    return model, float_path, int8_path, val


def test_float_graph_scores_pytorchs_miou(trained):
    model, float_path, _, val = trained
    expected = evaluate(model, val, num_classes=val.num_classes)
    got = evaluate_onnx(float_path, val, num_classes=val.num_classes)
    assert expected["miou"] > 0.4  # a trained model: the comparison below means something
    assert abs(got["miou"] - expected["miou"]) < 1e-6
    assert abs(got["loss"] - expected["loss"]) < 1e-4
    # the labels themselves: onnx_predict against the model's argmax
    images = val.tensors()[0][:8]
    with torch.no_grad():
        labels = model(images).argmax(1)
    assert (onnx_predict(float_path, images, batch_size=3) == labels).float().mean() > 0.999


def test_ignored_pixels_are_left_out_as_evaluate_does(trained):
    model, float_path, _, _ = trained
    val = ShapesDataset(16, size=SIZE, seed=3, void_border=1)  # 255 around every shape
    assert (val.tensors()[1] == 255).any()
    expected = evaluate(model, val, batch_size=5)
    got = evaluate_onnx(float_path, val, batch_size=5)
    assert torch.equal(got["confusion_matrix"], expected["confusion_matrix"])
    assert abs(got["miou"] - expected["miou"]) < 1e-6


def test_int8_miou_within_the_bound(trained):
    _, float_path, int8_path, val = trained
    float_miou = evaluate_onnx(float_path, val)["miou"]
    int8_miou = evaluate_onnx(int8_path, val)["miou"]
    assert abs(int8_miou - float_miou) <= MIOU_BOUND, (float_miou, int8_miou)


def test_int8_file_holds_quantised_ops_and_is_smaller(trained):
    _, float_path, int8_path, _ = trained
    stored, ran = op_counts(int8_path), op_counts(int8_path, optimized=True)
    assert op_counts(float_path)["QuantizeLinear"] == 0
    assert stored["QuantizeLinear"] > 0 and stored["DequantizeLinear"] > 0
    assert stored["Conv"] == ran["QLinearConv"] > 0  # every Conv became an integer conv
    # weights in 1 byte instead of 4, plus scales and zero points
    assert file_mb(int8_path) < 0.4 * file_mb(float_path)


def test_int8_graph_runs_at_another_size(trained):
    _, float_path, int8_path, _ = trained
    images = ShapesDataset(2, size=(97, 131), seed=5).tensors()[0]  # calibrated at 48 x 48
    logits = run_onnx(int8_path, images)["logits"]
    assert logits.shape == (2, 5, 97, 131) and np.isfinite(logits).all()
    same = onnx_predict(int8_path, images) == onnx_predict(float_path, images)
    assert same.float().mean() > 0.9
    assert onnx_predict(int8_path, images[:1], batch_size=1).shape == (1, 97, 131)


def _quantize_params(path) -> dict:
    """{tensor name: (scale, zero point)} of each QuantizeLinear node of the graph at path."""
    import onnx
    from onnx import numpy_helper
    graph = onnx.load(str(path)).graph
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    return {n.input[0]: (float(values[n.input[1]]), float(values[n.input[2]]))
            for n in graph.node if n.op_type == "QuantizeLinear"}


def _q(x, scale, zero_point, low, high):
    return np.clip(np.round(x / scale) + zero_point, low, high)


def test_one_by_one_conv_matches_hand_quantisation(tmp_path):
    """uint8 activations (asymmetric, range widened to 0), int8 per-channel weights (symmetric,
    max |w| / 127), int32 bias at scale x_scale * w_scale: the whitepaper's arithmetic."""
    conv = nn.Conv2d(2, 2, 1)
    weight = np.array([[1.0, -0.6], [0.25, 2.0]], dtype=np.float32)
    bias = np.array([0.1, -0.2], dtype=np.float32)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(weight)[:, :, None, None])
        conv.bias.copy_(torch.from_numpy(bias))
    path = export_onnx(conv, tmp_path / "conv.onnx", torch.rand(1, 2, 8, 8))
    gen = torch.Generator().manual_seed(0)
    calibration = torch.rand(4, 2, 8, 8, generator=gen)
    calibration[0, :, 0, 0], calibration[0, :, 0, 1] = 0.0, 1.0  # range exactly [0, 1]
    int8_path = quantize_onnx(path, tmp_path / "conv_int8.onnx", calibration)

    x_scale, x_zero = 1.0 / 255, 0  # [0, 1] on 256 codes
    w_scale = np.abs(weight).max(1) / 127  # per output channel
    w_q = np.round(weight / w_scale[:, None])
    b_q = np.round(bias / (x_scale * w_scale))

    def conv_np(x, w, b):  # x [N, 2, H, W], w [2, 2], b [2]
        return np.einsum("oc,nchw->nohw", w, x) + b[None, :, None, None]

    y = conv_np(calibration.double().numpy(), weight, bias)
    y_min, y_max = min(y.min(), 0.0), max(y.max(), 0.0)
    y_scale = (y_max - y_min) / 255
    y_zero = np.round(-y_min / y_scale)

    # the scales and zero points the file stores, per quantised tensor
    stored = _quantize_params(int8_path)
    np.testing.assert_allclose(stored["images"], (x_scale, x_zero), rtol=1e-6)
    np.testing.assert_allclose(stored["logits_QuantizeLinear_Input"], (y_scale, y_zero),
                               rtol=1e-5)

    x = torch.rand(1, 2, 5, 7, generator=gen).numpy()  # another size, inside the range
    x_hat = (_q(x, x_scale, x_zero, 0, 255) - x_zero) * x_scale
    y_hat = conv_np(x_hat, w_q * w_scale[:, None], b_q * x_scale * w_scale)
    expected = (_q(y_hat, y_scale, y_zero, 0, 255) - y_zero) * y_scale
    got = run_onnx(int8_path, torch.from_numpy(x))["logits"]
    # integer kernels requantise with a float multiplier: a tie may round the other way
    assert np.abs(got - expected).max() <= 1.001 * y_scale
    assert np.mean(np.abs(got - expected) < 1e-6) > 0.95
    # and the int8 output is the float one to within half an output step plus the input's
    # and weights' rounding carried through the conv
    float_out = conv_np(x, weight, bias)
    bound = y_scale / 2 + np.abs(weight).sum(1).max() * x_scale / 2 + w_scale.max() / 2 * 2
    assert np.abs(got - float_out).max() <= bound


def test_calibration_data_forms_give_the_same_scales(small_graph):
    """A tensor, a list of batches, a Dataset of (image, mask) and a DataLoader of the same
    images calibrate to the same ranges (MinMax over all of them)."""
    path, folder = small_graph
    data = ShapesDataset(6, size=16, seed=4)
    images = data.tensors()[0]
    forms = {"tensor": images, "batches": [images[:4], images[4:]], "dataset": data,
             "loader": torch.utils.data.DataLoader(data, batch_size=5)}
    scales = {name: _quantize_params(quantize_onnx(path, folder / f"{name}.onnx", form))
              for name, form in forms.items()}
    for name in forms:
        for tensor, params in scales["tensor"].items():
            assert scales[name][tensor] == pytest.approx(params, rel=1e-6), (name, tensor)
    # and the comparison can tell: one image alone gives another output range
    one = _quantize_params(quantize_onnx(path, folder / "one.onnx", images[:1]))
    assert one["logits_QuantizeLinear_Input"] != scales["tensor"]["logits_QuantizeLinear_Input"]


@pytest.fixture(scope="module")
def small_graph(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quantize_bad")
    return export_onnx(nn.Conv2d(3, 2, 1), folder / "conv.onnx", torch.rand(1, 3, 8, 8)), folder


@pytest.mark.parametrize("kwargs, match", [
    (dict(calibration_images=torch.rand(3, 8, 8)), "calibration_images"),
    (dict(calibration_images=torch.ones(2, 3, 8, 8, dtype=torch.uint8)), "floating-point"),
    (dict(calibration_images=torch.rand(0, 3, 8, 8)), "calibration_images is empty"),
    (dict(calibration_images=[]), "calibration_images gave no image"),
    (dict(calibration_images=torch.rand(2, 4, 8, 8)), "3 channels"),
    (dict(calibration_images=42), "calibration_images must be a tensor"),
    (dict(method="entropy"), "method must be one of 'minmax', 'percentile'"),
    (dict(quant_format="int4"), "quant_format"),
    (dict(activation_type="float16"), "activation_type"),
    (dict(op_types_to_exclude="Conv"), "op_types_to_exclude"),
    (dict(op_types_to_exclude=[nn.Conv2d]), "op_types_to_exclude must hold op type names"),
    (dict(batch_size=0), "batch_size"),
])
def test_bad_arguments_name_themselves(small_graph, kwargs, match):
    path, folder = small_graph
    args = dict(calibration_images=torch.rand(2, 3, 8, 8)) | kwargs
    with pytest.raises(ValueError, match=match):
        quantize_onnx(path, folder / "out.onnx", **args)


def test_bad_paths(small_graph):
    path, folder = small_graph
    images = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="float_path .* does not exist"):
        quantize_onnx(folder / "missing.onnx", folder / "out.onnx", images)
    with pytest.raises(ValueError, match="int8_path must differ"):
        quantize_onnx(path, path, images)
    with pytest.raises(ValueError, match="int8_path's folder"):
        quantize_onnx(path, folder / "nowhere" / "out.onnx", images)
    text = folder / "notes.onnx"
    text.write_text("not a graph")
    with pytest.raises(ValueError, match="float_path .* is not an ONNX graph"):
        quantize_onnx(text, folder / "out.onnx", images)
    with pytest.raises(ValueError, match="images is empty"):
        onnx_predict(path, torch.rand(0, 3, 8, 8))
    with pytest.raises(ValueError, match="num_classes"):
        evaluate_onnx(path, ShapesDataset(2, size=8), num_classes=0)
