"""segcourse.export: every registered model exported at 64 x 64 runs in onnxruntime at 97 x 131
(batch 2) and matches PyTorch; SAM's two graphs with 1 and 3 points per prompt; bad inputs."""

import pytest
import torch
import torch.nn as nn

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from segcourse import export, models  # noqa: E402

CLASSIFIERS = models.list_models(models.CLASSIFIERS)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx")


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_export_matches_pytorch_at_a_new_size(name, folder):
    torch.manual_seed(0)
    model = models.build(name, num_classes=3)
    model.train()  # export and check put it in eval mode and give it back in training mode
    path = export.export_onnx(model, folder / f"{name}.onnx", torch.randn(1, 3, 64, 64))
    assert model.training and all(m.training for m in model.modules())
    x = torch.randn(2, 3, 97, 131)
    got = export.run_onnx(path, x)
    with torch.no_grad():
        expected = model.eval()(x)
    expected = expected if isinstance(expected, dict) else {"logits": expected}
    assert list(got) == list(expected)  # output names: logits, or the dict's keys
    for key, ref in expected.items():  # an independent comparison, then check_onnx's
        assert got[key].shape == tuple(ref.shape)
        torch.testing.assert_close(torch.from_numpy(got[key]), ref, atol=1e-4, rtol=0)
    if "logits" in expected:
        assert got["logits"].shape == (2, 3, 97, 131)
    assert export.check_onnx(model, path, x) <= 1e-4


def test_check_onnx_catches_a_wrong_graph(folder, capsys):
    torch.manual_seed(0)
    model = models.build("fcn8s", num_classes=3)
    path = export.export_onnx(model, folder / "fcn8s_wrong.onnx", torch.randn(1, 3, 64, 64))
    x = torch.randn(1, 3, 70, 66)
    assert export.check_onnx(model, path, x) < 1e-5
    assert "logits: max |onnxruntime - PyTorch|" in capsys.readouterr().out
    with pytest.warns(UserWarning, match="cannot catch a size frozen"):  # the export's size
        export.check_onnx(model, path, torch.randn(1, 3, 64, 64))
    with torch.no_grad():  # the PyTorch model changes after export: the graph is now wrong
        for p in model.parameters():
            p.add_(0.1)
    with pytest.raises(AssertionError, match="logits: max"):
        export.check_onnx(model, path, x)


@pytest.fixture(scope="module")
def sam_graphs(folder):
    torch.manual_seed(0)
    sam = models.build("sam")
    enc, dec = export.export_sam(sam, folder / "sam_encoder.onnx", folder / "sam_decoder.onnx")
    return sam, enc, dec


def test_sam_encoder_graph(sam_graphs):
    sam, enc, _ = sam_graphs
    S = sam.config.encoder.image_size
    x = torch.rand(2, 3, S, S)  # exported with one image
    assert export.check_onnx(export.SamEncoderGraph(sam), enc, x) <= 1e-4
    got = export.run_onnx(enc, x)["embeddings"]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), sam.eval().embed(x), atol=1e-4, rtol=0)


@pytest.mark.parametrize("points_per_prompt", [1, 3])
def test_sam_decoder_graph(sam_graphs, points_per_prompt):
    sam, _, dec = sam_graphs
    S = sam.config.encoder.image_size
    g = torch.Generator().manual_seed(points_per_prompt)
    with torch.no_grad():
        embeddings = sam.eval().embed(torch.rand(2, 3, S, S, generator=g))
    points = torch.rand(2, 2, points_per_prompt, 2, generator=g) * S  # 2 images x 2 prompts
    labels = torch.randint(0, 2, (2, 2, points_per_prompt), generator=g)
    got = export.run_onnx(dec, (embeddings, points, labels))
    with torch.no_grad():
        ref = sam.decode(embeddings, points, labels)
    for key in ("mask_logits", "iou_scores"):
        assert got[key].shape == tuple(ref[key].shape)
        torch.testing.assert_close(torch.from_numpy(got[key]), ref[key], atol=1e-4, rtol=0)
    decoder = export.SamDecoderGraph(sam)
    assert export.check_onnx(decoder, dec, (embeddings, points, labels)) <= 1e-4


def test_bad_inputs(folder):
    model = models.build("fcn32s", num_classes=3)
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(ValueError, match="model must be a torch.nn.Module"):
        export.export_onnx("fcn32s", folder / "a.onnx", x)
    with pytest.raises(ValueError, match="4-D"):
        export.export_onnx(model, folder / "a.onnx", torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="floating-point"):
        export.export_onnx(model, folder / "a.onnx", torch.zeros(1, 3, 64, 64, dtype=torch.long))
    with pytest.raises(ValueError, match="example_input must be a torch.Tensor"):
        export.export_onnx(model, folder / "a.onnx", x.numpy())
    with pytest.raises(ValueError, match="does not exist"):
        export.export_onnx(model, folder / "missing" / "a.onnx", x)
    with pytest.raises(ValueError, match="directory"):
        export.export_onnx(model, folder, x)
    with pytest.raises(ValueError, match="opset"):
        export.export_onnx(model, folder / "a.onnx", x, opset=13)
    with pytest.raises(ValueError, match="export the model first"):
        export.check_onnx(model, folder / "never_written.onnx", x)
    with pytest.raises(ValueError, match="sam must be a segcourse Sam"):
        export.export_sam(model, folder / "e.onnx", folder / "d.onnx")
    path = export.export_onnx(model, folder / "fcn32s.onnx", x)
    with pytest.raises(ValueError, match="atol"):
        export.check_onnx(model, path, x, atol=-1)
    with pytest.raises(ValueError, match="takes 1 input"):
        export.run_onnx(path, (x, x))


def test_inference_session_runs_numpy_without_torch(folder):
    import numpy as np
    net = nn.Conv2d(3, 2, 1, bias=False).eval()
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 0.5]]).view(2, 3, 1, 1))
    path = export.export_onnx(net, folder / "conv.onnx", torch.rand(1, 3, 32, 32))
    session = export.inference_session(path)
    x = np.ones((2, 3, 5, 7), dtype=np.float32)
    (y,) = session.run(None, {"images": x})
    assert y.shape == (2, 2, 5, 7)
    assert np.allclose(y[:, 0], 6.0) and np.allclose(y[:, 1], -0.5)  # 1+2+3, -1+0.5


def test_sam_box_decoder_graph(folder):
    torch.manual_seed(0)
    sam = models.build("sam").eval()
    S = sam.config.encoder.image_size
    paths = export.export_sam(sam, folder / "e.onnx", folder / "d.onnx",
                              box_decoder_path=folder / "box.onnx")
    assert len(paths) == 3 and paths[2].is_file()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        embeddings = sam.embed(torch.rand(2, 3, S, S, generator=g))
    corner = torch.rand(2, 3, 2, generator=g) * (S / 2)          # 2 images x 3 boxes
    boxes = torch.cat([corner, corner + torch.rand(2, 3, 2, generator=g) * (S / 2)], -1)
    got = export.run_onnx(paths[2], (embeddings, boxes))
    with torch.no_grad():
        ref = sam.decode(embeddings, boxes=boxes, multimask_output=False)
    assert got["mask_logits"].shape == tuple(ref["mask_logits"].shape)
    assert ref["mask_logits"].shape[:3] == (2, 3, 1)                # one mask per box
    for key in ("mask_logits", "iou_scores"):
        torch.testing.assert_close(torch.from_numpy(got[key]), ref[key], atol=1e-4, rtol=0)
    # without the box path: the two graphs, as before
    assert len(export.export_sam(sam, folder / "e2.onnx", folder / "d2.onnx")) == 2
