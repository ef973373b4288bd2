"""fit / evaluate / predict / checkpoints on tiny problems; the detection evaluators."""

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from segcourse.data import InstanceTargets, ShapesDataset, panoptic_target
from segcourse.evaluate import evaluate_instances, evaluate_panoptic
from segcourse.models.mask_rcnn import mask_rcnn
from segcourse.train import (
    evaluate,
    fit,
    get_device,
    load_checkpoint,
    predict,
    save_checkpoint,
    seed_everything,
)


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
        load_checkpoint(tmp_path / "bare.pt", tiny_model(),
                        torch.optim.SGD(restored.parameters(), lr=1))


def test_get_device_and_bad_arguments(data):
    assert get_device().type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="epochs"):
        fit(tiny_model(), data[0], epochs=0)
    with pytest.raises(ValueError, match="scheduler"):
        fit(tiny_model(), data[0], scheduler="step")
    with pytest.raises(ValueError, match="Dataset"):
        fit(tiny_model(), [1, 2, 3], epochs=1)


# --- the loop's contracts: losses as a dict, step functions, schedules ------------------------

class Items(Dataset):
    """Items ``i = 0..n-1`` as (image [1] = i, target {"y": i}), batched by ``collate_fn``."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.tensor([float(i)]), {"y": torch.tensor(float(i))}

    @staticmethod
    def collate_fn(batch):
        images, targets = zip(*batch)
        return torch.stack(images), list(targets)


class TwoLosses(nn.Module):
    """Returns its losses as a dict; their values are the batch's mean item (and 10 x it), so
    the expected averages follow from the data alone, whatever the weights do."""

    returns_losses = True

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.seen = []

    def forward(self, images, targets):
        assert all(isinstance(t["y"], torch.Tensor) for t in targets)  # dicts kept, on device
        self.seen.append(len(images))
        y = torch.stack([t["y"] for t in targets]).mean()
        zero = 0 * self.w.sum()  # a gradient path, without changing the values
        return {"loss_a": y + zero, "loss_b": 10 * y + zero}


def test_dict_losses_are_logged_per_name_and_weighted_by_batch_size():
    # 10 items in batches of 4, 4, 2 (no shuffle): per-batch means 1.5, 5.5, 8.5
    loader = DataLoader(Items(10), batch_size=4, collate_fn=Items.collate_fn)
    model = TwoLosses()
    history = fit(model, loader, epochs=2, log_every=2, progress=False, device="cpu")
    assert model.seen == [4, 4, 2] * 2
    # epoch means weighted by batch size = the mean item 4.5 (unweighted would be 5.1667)
    assert history["loss_a"] == pytest.approx([4.5, 4.5])
    assert history["loss_b"] == pytest.approx([45.0, 45.0])
    assert history["train_loss"] == pytest.approx([49.5, 49.5])
    # rows after step 1, 2, 4, 6; each the mean since the previous row (by hand: step 3 and 4
    # are batches 8.5 (2 items) and 1.5 (4 items) -> (17 + 6) / 6; steps 5, 6 -> (22 + 17) / 6)
    assert [row["step"] for row in history["log"]] == [1, 2, 4, 6]
    assert [row["epoch"] for row in history["log"]] == [1, 1, 2, 2]
    assert [row["loss_a"] for row in history["log"]] == pytest.approx([1.5, 5.5, 23 / 6, 39 / 6])
    assert [row["loss"] for row in history["log"]] == pytest.approx([16.5, 60.5, 253 / 6, 429 / 6])


def test_a_step_function_with_max_steps_cycles_the_data():
    calls = []

    def step(net, batch):
        images, targets = batch
        calls.append(images[:, 0].tolist())
        return (net.w * images).mean()  # a bare tensor is the single loss "loss"

    model = TwoLosses()
    loader = DataLoader(Items(6), batch_size=4, collate_fn=Items.collate_fn)
    history = fit(model, loader, step=step, epochs=None, max_steps=5, progress=False,
                  device="cpu")
    assert calls == [[0, 1, 2, 3], [4, 5]] * 2 + [[0, 1, 2, 3]]  # 5 steps over 3 epochs
    assert history["epoch"] == [1, 2, 3] and model.seen == []  # forward never called by fit
    assert "loss_a" not in history and len(history["train_loss"]) == 3
    # epochs bound the run too: whichever ends first
    calls.clear()
    fit(model, loader, step=step, epochs=1, max_steps=5, progress=False, device="cpu")
    assert len(calls) == 2


def _learning_rates(scheduler, steps, warmup_steps=0):
    model = TwoLosses()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []

    def step(net, batch):
        seen.append(optimizer.param_groups[0]["lr"])
        return net.w.sum() * 0

    fit(model, Items(steps), step=step, optimizer=optimizer, batch_size=1, epochs=1,
        scheduler=scheduler, warmup_steps=warmup_steps, progress=False, device="cpu")
    return seen


def test_warmup_cosine_and_cosine_learning_rates_by_hand():
    # warm-up 4 steps: 0.1 * (s + 1) / 4; then 0.1 * (1 + cos(pi * (s - 4) / 6)) / 2, s = 4..9
    # with cos(pi/6) = 0.8660254, cos(pi/3) = 0.5, cos(pi/2) = 0
    expected = [0.025, 0.05, 0.075, 0.1,
                0.1, 0.09330127, 0.075, 0.05, 0.025, 0.00669873]
    assert _learning_rates("warmup_cosine", 10, 4) == pytest.approx(expected, abs=1e-8)
    # plain cosine over 4 steps: 0.1 * (1 + cos(pi * s / 4)) / 2, cos(pi/4) = 0.70710678
    assert _learning_rates("cosine", 4) == pytest.approx(
        [0.1, 0.08535534, 0.05, 0.01464466], abs=1e-8)
    assert _learning_rates(None, 3) == [0.1, 0.1, 0.1]


def test_fit_step_lowers_a_detection_models_loss():
    torch.set_num_threads(1)
    seed_everything(0)
    model = mask_rcnn(num_classes=4)  # CPU-sized; shapes' thing classes 2, 3, 4 -> labels 1..3
    data = InstanceTargets(ShapesDataset(4, size=64, seed=0))
    images, targets = InstanceTargets.collate_fn([data[i] for i in range(4)])

    def loss():  # the same batch, the same RPN / RoI samples (seeded), before and after
        torch.manual_seed(0)
        with torch.no_grad():
            return float(sum(model.train()(images, targets).values()))

    before = loss()
    history = fit(model, data, batch_size=4, max_steps=1, lr=1e-3, scheduler=None,
                  progress=False, device="cpu")
    after = loss()
    assert after < 0.9 * before, (before, after)
    assert {"loss_rpn_objectness", "loss_rpn_box", "loss_classifier", "loss_box",
            "loss_mask"} <= set(history)
    assert history["train_loss"][0] == pytest.approx(
        sum(history[k][0] for k in history if k.startswith("loss_")))


class Oracle(nn.Module):
    """Detections read from a list (image i carries i in its first pixel), for the evaluators."""

    def __init__(self, outputs, thing_classes=(2, 3, 4), stuff_classes=(0, 1)):
        super().__init__()
        self.outputs, self.anchor = outputs, nn.Parameter(torch.zeros(()))
        self.thing_classes, self.stuff_classes = thing_classes, stuff_classes

    def forward(self, images):
        return [self.outputs[int(round(float(image[0, 0, 0]) * 1000))] for image in images]


class Indexed(InstanceTargets):
    def __getitem__(self, index):
        image, target = super().__getitem__(index)
        image = image.clone()
        image[0, 0, 0] = index / 1000
        return image, target


def test_evaluators_score_perfect_and_imperfect_detections():
    data = Indexed(ShapesDataset(6, size=32, seed=4))
    truth = [data[i][1] for i in range(len(data))]

    def perfect(t):
        n = len(t["labels"])
        return {"masks": t["masks"], "labels": t["labels"], "scores": torch.linspace(1, .5, n),
                "panoptic": panoptic_target(t)}

    outputs = [perfect(t) for t in truth]
    scores = evaluate_panoptic(Oracle(outputs), data, batch_size=4)
    assert scores["mask_ap50"] == 1.0 and scores["pq"] == 1.0 and "predictions" not in scores
    # image 0 loses its first object: it is missed in AP (recall < 1) and in PQ (one FN)
    first = truth[0]
    outputs[0] = {k: v[1:] for k, v in perfect(first).items() if k != "panoptic"}
    missed = panoptic_target(first)
    missed[..., 0][first["masks"][0]] = -1  # what fusion leaves void: no segment there
    outputs[0]["panoptic"] = missed
    label = int(first["labels"][0])
    gt_of_label = sum(int((t["labels"] == label).sum()) for t in truth)
    scores = evaluate_instances(Oracle(outputs), data, return_predictions=True)
    # every detection is right: precision 1 up to recall (g - 1) / g, then nothing -> AP is the
    # share of the 101 recall points <= (g - 1) / g
    points = sum(1 for r in range(101) if r / 100 <= (gt_of_label - 1) / gt_of_label + 1e-12)
    assert scores["mask_ap50_per_class"][label] == pytest.approx(points / 101)
    assert len(scores["predictions"]) == 6 and torch.equal(scores["predictions"][3]["masks"],
                                                           truth[3]["masks"])
    # PQ: that class has g - 1 matches of IoU 1 and one FN -> (g - 1) / (g - 1 + 1/2); every
    # other category present keeps PQ 1
    present = {int(c) for t in truth for c in t["semantic"].unique()} & {0, 1, 2, 3, 4}
    thing = (2, 3, 4)[label - 1]
    expected = (len(present) - 1 + (gt_of_label - 1) / (gt_of_label - 0.5)) / len(present)
    scores = evaluate_panoptic(Oracle(outputs), data)
    assert scores["pq"] == pytest.approx(expected) and thing in present
    assert scores["mask_ap50"] == pytest.approx((2 + points / 101) / 3)


def test_fit_validates_detection_models_with_an_evaluator():
    data = Indexed(ShapesDataset(4, size=32, seed=4))
    truth = [data[i][1] for i in range(len(data))]
    outputs = [{"masks": t["masks"], "labels": t["labels"], "scores": torch.ones(len(t["labels"])),
                "panoptic": panoptic_target(t)} for t in truth]

    class Trained(Oracle):
        returns_losses = True

        def forward(self, images, targets=None):
            if self.training:
                return {"loss_x": (self.anchor - 1) ** 2}
            return super().forward(images)

    history = fit(Trained(outputs), data, data, epochs=2, batch_size=2, progress=False,
                  evaluator=evaluate_panoptic, device="cpu")
    assert history["val_pq"] == [1.0, 1.0] and history["val_mask_ap50"] == [1.0, 1.0]
    assert history["loss_x"][1] < history["loss_x"][0]
    with pytest.raises(ValueError, match="evaluator"):
        fit(Trained(outputs), data, data, epochs=1, progress=False)


def test_fit_refuses_bad_loss_contracts_and_schedules():
    model, data = TwoLosses(), Items(4)
    with pytest.raises(ValueError, match="warmup_steps"):
        fit(model, data, scheduler="cosine", warmup_steps=2, progress=False)
    with pytest.raises(ValueError, match="warmup_steps"):
        fit(model, data, scheduler="warmup_cosine", warmup_steps=1, batch_size=4, epochs=1)
    with pytest.raises(ValueError, match="loss_fn"):
        fit(model, data, loss_fn=nn.functional.mse_loss, progress=False)
    with pytest.raises(ValueError, match="max_steps"):
        fit(model, data, epochs=None, progress=False)
    with pytest.raises(ValueError, match="max_steps"):
        fit(model, data, max_steps=0, progress=False)
    with pytest.raises(ValueError, match="step"):
        fit(model, data, step=lambda net, batch: [1.0], progress=False, device="cpu")
    with pytest.raises(ValueError, match="History"):
        fit(model, data, step=lambda net, batch: {"lr": net.w.sum()}, progress=False,
            device="cpu")
    with pytest.raises(FloatingPointError, match="loss_b"):
        fit(model, data, step=lambda net, batch: {"loss_a": net.w.sum(),
                                                  "loss_b": net.w.sum() / 0},
            progress=False, device="cpu")


def test_grad_scaler_falls_back_before_torch_2_3(monkeypatch):
    import warnings

    from segcourse.train import grad_scaler

    assert grad_scaler(False).is_enabled() is False
    # torch 2.1 / 2.2: no torch.amp.GradScaler, only torch.cuda.amp.GradScaler
    monkeypatch.delattr(torch.amp, "GradScaler", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # newer torch deprecates torch.cuda.amp.GradScaler
        scaler = grad_scaler(False)
    assert isinstance(scaler, torch.cuda.amp.GradScaler) and not scaler.is_enabled()


def test_cpu_runs_never_enter_float16_autocast(monkeypatch, data):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.autocast called on the CPU")

    monkeypatch.setattr(torch, "autocast", refuse)
    model = tiny_model()
    fit(model, data[1], data[1], epochs=1, batch_size=16, progress=False, device="cpu")
    evaluate(model, data[1], device="cpu")
    predict(model, data[1].tensors()[0], device="cpu")
