"""Checkpoints that lose nothing: atomic writes, a verified checksum, extras that load back."""

import dataclasses
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from segcourse.checkpoints import load_checkpoint, save_checkpoint
from segcourse.data import ShapesDataset
from segcourse.train import History, fit, seed_everything

SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / "panoptic_fpn_shapes.pt"


def tiny_model(k=5):
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, k, 3, padding=1))


@dataclasses.dataclass
class Config:
    width: int = 16
    name: str = "tiny"
    scales: tuple = (1.0, 2.0)


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(1)
    seed_everything(0)
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    history = fit(model, ShapesDataset(16, size=16, seed=0), ShapesDataset(8, size=16, seed=1),
                  epochs=2, batch_size=8, optimizer=optimizer, log_every=1, progress=False,
                  device="cpu")
    return model, optimizer, history


@pytest.fixture
def saved(tmp_path):
    model = tiny_model()
    path = save_checkpoint(tmp_path / "model.pt", model, epoch=3)
    return path, model


def test_round_trip_of_everything_fit_returns(tmp_path, trained):
    model, optimizer, history = trained
    assert isinstance(history, History)
    path = save_checkpoint(tmp_path / "run" / "model.pt", model, optimizer, history=history,
                           config=Config(), best=np.float32(0.25), count=np.int64(7),
                           ids=np.arange(3), size=torch.Size([2, 3]), note=None)
    restored, new_opt = tiny_model(), torch.optim.AdamW(tiny_model().parameters())
    new_opt = torch.optim.AdamW(restored.parameters(), lr=1e-2)
    state = load_checkpoint(path, restored, new_opt)
    for (k, a), b in zip(model.state_dict().items(), restored.state_dict().values()):
        assert torch.equal(a, b), k
    # the History comes back as a plain dict with every list, the log rows included
    assert type(state["history"]) is dict and state["history"] == dict(history)
    assert state["history"]["log"] and state["history"]["val_miou"] == history["val_miou"]
    assert state["config"] == {"width": 16, "name": "tiny", "scales": (1.0, 2.0)}
    assert state["best"] == 0.25 and type(state["best"]) is float
    assert state["count"] == 7 and type(state["count"]) is int
    assert torch.equal(state["ids"], torch.arange(3)) and state["size"] == (2, 3)
    assert state["note"] is None
    assert state["checksum"]["algorithm"] == "sha256"
    # optimizer moments round-trip exactly
    for s_old, s_new in zip(optimizer.state_dict()["state"].values(),
                            new_opt.state_dict()["state"].values()):
        for key in s_old:
            assert torch.equal(torch.as_tensor(s_old[key]), torch.as_tensor(s_new[key]))
    assert new_opt.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    # and the file is still an ordinary torch.save, read by torch.load alone
    assert torch.load(path, weights_only=True)["history"] == dict(history)


def test_fit_checkpoint_argument_writes_a_verified_file(tmp_path):
    seed_everything(0)
    model = tiny_model()
    fit(model, ShapesDataset(8, size=16, seed=0), epochs=1, batch_size=8, progress=False,
        device="cpu", checkpoint=tmp_path / "fit.pt")
    state = load_checkpoint(tmp_path / "fit.pt", tiny_model())
    assert state["epoch"] == 1 and "checksum" in state


def _flip(path: Path, offset: int, n: int = 64) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset:offset + n] = bytes(b ^ 0xFF for b in raw[offset:offset + n])
    path.write_bytes(bytes(raw))


def test_flipped_bytes_in_the_weights_are_refused(saved):
    path, model = saved
    weight = model[0].weight.detach().numpy().tobytes()  # 16 * 27 float32: 1728 bytes
    offset = path.read_bytes().find(weight)
    assert offset > 0
    _flip(path, offset + 512)
    with pytest.raises(ValueError, match="corrupted.*checksum"):
        load_checkpoint(path, tiny_model())
    with pytest.raises(ValueError, match="corrupted"):
        load_checkpoint(path)  # without a model too: nothing wrong is returned


def test_flipped_bytes_in_the_extras_are_refused(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", tiny_model(), history={"train_loss": [0.5] * 50})
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("data.pkl"))
    raw = path.read_bytes()
    start = raw.find(b"\x80", info.header_offset + 30)  # the pickle's protocol opcode
    _flip(path, start + info.file_size // 2, 8)
    with pytest.raises(ValueError, match="checkpoint"):
        load_checkpoint(path, tiny_model())


@pytest.mark.parametrize("cut", [0.5, 0.9, 0.1])
def test_a_truncated_file_is_refused(saved, cut):
    path, _ = saved
    raw = path.read_bytes()
    path.write_bytes(raw[:int(len(raw) * cut)])
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(path, tiny_model())


def test_empty_text_and_foreign_files_are_refused(tmp_path):
    empty = tmp_path / "empty.pt"
    empty.touch()
    with pytest.raises(ValueError, match="empty"):
        load_checkpoint(empty, tiny_model())
    text = tmp_path / "notes.pt"
    text.write_text("epoch 3: loss 0.25\n")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(text, tiny_model())
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds a list"):
        load_checkpoint(tmp_path / "list.pt")
    torch.save({"epoch": 3}, tmp_path / "dict.pt")
    with pytest.raises(ValueError, match="no 'model' entry"):
        load_checkpoint(tmp_path / "dict.pt")
    torch.save({"model": [1, 2]}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="malformed"):
        load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_pickled_objects_are_refused_with_the_way_out(tmp_path):
    torch.save({"model": {}, "optimizer": None, "when": Config()}, tmp_path / "obj.pt")
    with pytest.raises(ValueError, match="weights_only=False"):
        load_checkpoint(tmp_path / "obj.pt")


def test_a_plain_state_dict_says_how_to_load_it(tmp_path):
    model = tiny_model()
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(ValueError, match=r"plain state_dict.*load_state_dict\(torch.load"):
        load_checkpoint(tmp_path / "weights.pt", tiny_model())
    tiny_model().load_state_dict(torch.load(tmp_path / "weights.pt", weights_only=True))


def test_another_architecture_lists_keys_and_shapes(saved):
    path, _ = saved
    with pytest.raises(ValueError) as info:
        load_checkpoint(path, tiny_model(k=7))
    message = str(info.value)
    assert "shape mismatches (2)" in message and "3.weight: checkpoint (5, 16, 3, 3), model " \
        "(7, 16, 3, 3)" in message
    other = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(16),
                          nn.Conv2d(16, 5, 3, padding=1), nn.Conv2d(5, 5, 1))
    with pytest.raises(ValueError) as info:
        load_checkpoint(path, other)
    message = str(info.value)
    assert "missing in the checkpoint (7)" in message and "2.running_mean" in message
    assert "unexpected in the checkpoint (5)" in message and "1.running_var" in message
    assert "... (7 in all)" in message


def test_a_directory_is_refused_on_save_and_load(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        save_checkpoint(tmp_path, tiny_model())
    with pytest.raises(ValueError, match="is a directory"):
        load_checkpoint(tmp_path, tiny_model())


def test_a_crash_mid_save_leaves_the_old_file_intact(saved, monkeypatch):
    path, model = saved
    before = path.read_bytes()
    real_save = torch.save

    def crashing_save(obj, f, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[:1000])  # part of the file, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(path, tiny_model(), epoch=4)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == [path.name]  # no temporary file left behind
    restored = tiny_model()
    assert load_checkpoint(path, restored)["epoch"] == 3
    assert torch.equal(restored[0].weight, model[0].weight)


def test_extras_that_would_not_load_back_are_refused_when_saving(tmp_path):
    path = tmp_path / "m.pt"
    for bad, match in ((object(), "extra 'note' is a object"),
                       ({"a": [1, lambda: 0]}, r"extra 'note'\['a'\]\[1\] is a function"),
                       (Path("data"), r"str\(path\)"),
                       (np.array([object()]), "NumPy array of Python objects"),
                       ({(1, 2): 3}, "key of type tuple")):
        with pytest.raises(ValueError, match=match):
            save_checkpoint(path, tiny_model(), note=bad)
        assert not path.exists()  # refused before anything was written
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(path, tiny_model(), checksum="x")
    with pytest.raises(ValueError, match="model must be an nn.Module"):
        save_checkpoint(path, tiny_model().state_dict())
    with pytest.raises(ValueError, match="optimizer must be"):
        save_checkpoint(path, tiny_model(), {"lr": 1})


def test_optimizer_mismatch_and_missing_state(saved):
    path, _ = saved
    with pytest.raises(ValueError, match="no optimizer state"):
        load_checkpoint(path, tiny_model(), torch.optim.SGD(tiny_model().parameters(), lr=1))
    model = tiny_model()
    save_checkpoint(path, model, torch.optim.SGD(model.parameters(), lr=1))
    fewer = torch.optim.SGD(list(tiny_model().parameters())[:2], lr=1)
    with pytest.raises(ValueError, match="optimizer does not match"):
        load_checkpoint(path, tiny_model(), fewer)


def test_legacy_files_without_a_checksum_still_load(tmp_path):
    model = tiny_model()
    half = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save({"model": half, "optimizer": None, "metrics": {"miou": 0.5}}, tmp_path / "old.pt")
    restored = tiny_model()
    state = load_checkpoint(tmp_path / "old.pt", restored)
    assert state["metrics"] == {"miou": 0.5} and "checksum" not in state
    assert restored[0].weight.dtype == torch.float32
    torch.testing.assert_close(restored[0].weight, model[0].weight.half().float())


@pytest.mark.skipif(not SHIPPED.exists(), reason="no shipped checkpoint")
def test_the_shipped_checkpoint_loads_into_its_model():
    from segcourse.models.panoptic_fpn import panoptic_fpn

    raw = torch.load(SHIPPED, weights_only=True)
    model = panoptic_fpn(raw["thing_classes"], raw["stuff_classes"])
    state = load_checkpoint(SHIPPED, model)
    name, tensor = next((k, v) for k, v in raw["model"].items() if v.is_floating_point())
    assert torch.equal(model.state_dict()[name], tensor.float())
    assert "mask_ap50" in state["metrics"]
