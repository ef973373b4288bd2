"""fit / evaluate / predict / checkpoints on tiny problems."""

import pytest
import torch
import torch.nn as nn

from segcourse.data import ShapesDataset
from segcourse.train import (evaluate, fit, get_device, load_checkpoint, predict,
                             save_checkpoint, seed_everything)


def tiny_model(k=5):
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, k, 3, padding=1))


@pytest.fixture(scope="module")
def data():
    return ShapesDataset(64, size=32, seed=0), ShapesDataset(16, size=32, seed=1)


def test_fit_lowers_the_loss_and_records_history(data):
    train, val = data
    seed_everything(0)
    model = tiny_model()
    before = evaluate(model, val)
    history = fit(model, train, val, epochs=4, lr=1e-2, batch_size=16, progress=False)
    assert history["epoch"] == [1, 2, 3, 4]
    assert len(history.val_miou) == 4 and len(history["train_loss"]) == 4
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert history["val_loss"][-1] < before["loss"]
    assert history["val_miou"][-1] > before["miou"]


def test_fit_is_deterministic_given_the_seed(data):
    train, _ = data
    runs = []
    for _ in range(2):
        seed_everything(1)
        model = tiny_model()
        fit(model, train, epochs=1, batch_size=16, progress=False, seed=3, device="cpu")
        runs.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)


def test_fit_accepts_tensors_and_custom_loss(data):
    images, masks = data[0].tensors()
    calls = []

    def loss_fn(logits, target):
        calls.append(logits.shape)
        return nn.functional.cross_entropy(logits, target)

    fit(tiny_model(), (images, masks), epochs=1, batch_size=32, loss_fn=loss_fn, progress=False)
    assert calls == [torch.Size([32, 5, 32, 32])] * 2


def test_evaluate_restores_mode_and_matches_predict(data):
    _, val = data
    model = tiny_model().train()
    scores = evaluate(model, val, num_classes=5)
    assert model.training
    images, masks = val.tensors()
    labels = predict(model, images)
    assert labels.shape == masks.shape and labels.dtype == torch.int64
    assert scores["pixel_accuracy"] == pytest.approx(float((labels == masks).double().mean()))


def test_checkpoint_round_trip(tmp_path, data):
    train, _ = data
    seed_everything(0)
    model = tiny_model()
    history = fit(model, train, epochs=1, batch_size=32, progress=False,
                  checkpoint=tmp_path / "ckpt" / "model.pt")
    restored = tiny_model()
    optimizer = torch.optim.AdamW(restored.parameters())
    state = load_checkpoint(tmp_path / "ckpt" / "model.pt", restored, optimizer)
    for a, b in zip(model.state_dict().values(), restored.state_dict().values()):
        assert torch.equal(a, b)
    assert state["epoch"] == 1 and state["history"]["train_loss"] == history["train_loss"]
    assert len(optimizer.state) > 0  # Adam moments came back too
    save_checkpoint(tmp_path / "bare.pt", restored)
    with pytest.raises(ValueError, match="no optimizer state"):
        load_checkpoint(tmp_path / "bare.pt", tiny_model(), torch.optim.SGD(restored.parameters(), lr=1))


def test_get_device_and_bad_arguments(data):
    assert get_device().type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="epochs"):
        fit(tiny_model(), data[0], epochs=0)
    with pytest.raises(ValueError, match="scheduler"):
        fit(tiny_model(), data[0], scheduler="step")
    with pytest.raises(ValueError, match="Dataset"):
        fit(tiny_model(), [1, 2, 3], epochs=1)
