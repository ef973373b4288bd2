"""Bad input to fit / evaluate / predict / make_loader / save_checkpoint / load_checkpoint.

Each case is a call a new user (or a typo) makes; each must raise a ``ValueError`` whose message
names the argument (``match``) -- or, where the input is valid but awkward, do the documented
thing with no NaN. Issue 12: "validate arguments once, where the user's call enters".
"""

import dataclasses
import math
import tempfile

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from segcourse.checkpoints import load_checkpoint, save_checkpoint
from segcourse.evaluate import make_loader
from segcourse.train import History, evaluate, fit, predict

K, N, S = 3, 4, 8


def tiny(k=K):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, k, 1))


def images(n=N, dtype=torch.float32):
    return torch.rand(n, 3, S, S, generator=torch.Generator().manual_seed(0)).to(dtype)


def masks(n=N, dtype=torch.long):
    return torch.randint(0, K, (n, S, S), generator=torch.Generator().manual_seed(1)).to(dtype)


def run_fit(data, model=None, **kw):
    kw = {"epochs": 1, "batch_size": 2, "progress": False, "device": "cpu"} | kw
    return fit(tiny() if model is None else model, data, **kw)


@dataclasses.dataclass
class Cfg:
    width: int = 4


# --- fit, evaluate, predict, make_loader: bad data --------------------------------------------

EMPTY = (images(0), masks(0))
CASES = {
    # fit: the masks, the images, the data
    "fit masks [N, 1, H, W]": (lambda: run_fit((images(), masks()[:, None])),
                               r"train_data: masks must have shape \[N, H, W\].*masks\[:, 0\]"),
    "fit float masks": (lambda: run_fit((images(), masks(dtype=torch.float32))),
                        r"train_data: masks must be integer.*float32"),
    "fit uint8 masks": (lambda: run_fit((images(), masks(dtype=torch.uint8))),
                        r"train_data: masks .*torch.int64, got torch.uint8.*masks.long\(\)"),
    "fit masks of another size": (lambda: run_fit((images(), masks()[:, :4])),
                                  r"train_data: masks must have shape"),
    "fit label >= K": (lambda: run_fit((images(), masks().clamp(max=K) + 1)),
                       r"labels must be in \[0, 2\] or 255"),
    "fit images and masks of different N": (lambda: run_fit((images(4), masks(3))),
                                            r"train_data.*as many masks as images"),
    "fit empty train_data (tuple)": (lambda: run_fit(EMPTY), r"train_data is empty"),
    "fit empty train_data (Dataset)": (lambda: run_fit(TensorDataset(*EMPTY)),
                                       r"train_data is empty"),
    "fit uint8 val masks": (lambda: run_fit((images(), masks()),
                                            val_data=(images(), masks(dtype=torch.uint8))),
                            r"val_data: masks .*torch.int64, got torch.uint8"),
    "evaluate int32 masks": (
        lambda: evaluate(tiny(), (images(), masks(dtype=torch.int32)), loss_fn=None),
        r"masks .*torch.int64, got torch.int32"),
    "fit empty val_data": (lambda: run_fit((images(), masks()), val_data=EMPTY),
                           r"val_data is empty"),
    "fit val_data not data": (lambda: run_fit((images(), masks()), val_data=[1, 2]),
                              r"val_data must be a Dataset"),
    "fit train_data not data": (lambda: run_fit([1, 2, 3]), r"train_data must be a Dataset"),
    "fit float64 images": (lambda: run_fit((images(dtype=torch.float64), masks())),
                           r"float64 but the model's parameters are float32.*images.float\(\)"),
    "fit float16 images": (lambda: run_fit((images(dtype=torch.float16), masks())),
                           r"float16 but the model's parameters are float32"),
    "fit integer images": (lambda: run_fit((images().mul(255).to(torch.uint8), masks())),
                           r"images must be a floating-point tensor"),
    "fit batch_size=0": (lambda: run_fit((images(), masks()), batch_size=0), r"batch_size"),
    "fit batch_size=2.5": (lambda: run_fit((images(), masks()), batch_size=2.5), r"batch_size"),
    "fit grad_clip=0": (lambda: run_fit((images(), masks()), grad_clip=0), r"grad_clip"),
    "fit checkpoint onto a directory": (
        lambda: run_fit((images(), masks()), checkpoint=tempfile.gettempdir()),
        r"checkpoint .* is a directory"),
    "fit model not a module": (lambda: run_fit((images(), masks()), model="unet"), r"model"),
    # evaluate
    "evaluate masks [N, 1, H, W]": (lambda: evaluate(tiny(), (images(), masks()[:, None])),
                                    r"data: masks must have shape \[N, H, W\]"),
    "evaluate float masks": (lambda: evaluate(tiny(), (images(), masks().float())),
                             r"data: masks must be integer"),
    "evaluate different N": (lambda: evaluate(tiny(), (images(4), masks(2))),
                             r"data.*as many masks as images"),
    "evaluate empty data": (lambda: evaluate(tiny(), EMPTY), r"data is empty"),
    "evaluate float64 images": (lambda: evaluate(tiny(), (images(dtype=torch.float64),
                                                          masks())),
                                r"float64 but the model's parameters are float32"),
    "evaluate num_classes=0": (lambda: evaluate(tiny(), (images(), masks()), num_classes=0),
                               r"num_classes"),
    "evaluate batch_size=0": (lambda: evaluate(tiny(), (images(), masks()), batch_size=0),
                              r"batch_size"),
    "evaluate amp on the CPU": (lambda: evaluate(tiny(), (images(), masks()), device="cpu",
                                                 amp=True), r"amp=True needs a CUDA device"),
    "evaluate label >= K": (lambda: evaluate(tiny(), (images(), masks() + K)),
                            r"labels must be in"),
    # predict
    "predict batch_size=0": (lambda: predict(tiny(), images(), batch_size=0), r"batch_size"),
    "predict batch_size=-1": (lambda: predict(tiny(), images(), batch_size=-1), r"batch_size"),
    "predict batch_size=1.5": (lambda: predict(tiny(), images(), batch_size=1.5),
                               r"batch_size"),
    "predict float64 images": (lambda: predict(tiny(), images(dtype=torch.float64)),
                               r"images is float64 but the model's parameters are float32"),
    "predict [C, H, W] image": (lambda: predict(tiny(), images()[0]),
                                r"images must have shape \[B, C, H, W\]"),
    "predict no images": (lambda: predict(tiny(), images(0)), r"images is empty"),
    "predict a numpy array": (lambda: predict(tiny(), images().numpy()),
                              r"images must be a torch.Tensor"),
    # make_loader
    "make_loader batch_size=0": (lambda: make_loader((images(), masks()), 0, False),
                                 r"batch_size"),
    "make_loader empty": (lambda: make_loader(EMPTY, 2, False), r"data is empty"),
    "make_loader different N": (lambda: make_loader((images(3), masks(4)), 2, False),
                                r"data = \(images, masks\) must hold as many masks"),
    "make_loader named": (lambda: make_loader(EMPTY, 2, False, name="val_set"),
                          r"val_set is empty"),
    "make_loader not data": (lambda: make_loader(42, 2, False), r"data must be a Dataset"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_raises_a_value_error_naming_it(case):
    call, match = CASES[case]
    with pytest.raises(ValueError, match=match):
        call()


# --- documented behaviour on awkward but valid input ------------------------------------------

def test_fit_on_all_ignored_batches_records_a_finite_zero_loss():
    model = tiny()
    before = [p.detach().clone() for p in model.parameters()]
    history = run_fit((images(), torch.full((N, S, S), 255)), model=model, epochs=2,
                      weight_decay=0.0)
    assert history["train_loss"] == [0.0, 0.0]
    assert all(math.isfinite(v) for v in history["train_loss"])
    # a zero loss with a gradient of zero: AdamW moves nothing without weight decay
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_evaluate_on_an_all_ignored_set_gives_a_finite_loss():
    scores = evaluate(tiny(), (images(), torch.full((N, S, S), 255)), num_classes=K)
    assert scores["loss"] == 0.0


def test_nan_logits_at_ignored_pixels_do_not_leak_into_fit():
    class NaNWhereIgnored(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = tiny()

        def forward(self, x):
            out = self.net(x)
            return torch.where(x[:, :1] < 0, torch.full_like(out, float("nan")), out)

    x, y = images(), masks()
    x[:, 0, :2] = -1  # these pixels give NaN logits, and are ignored
    y[:, :2] = 255
    history = run_fit((x, y), model=NaNWhereIgnored())
    assert math.isfinite(history["train_loss"][0])


def test_the_default_loss_is_torchs_cross_entropy_on_valid_input():
    from segcourse.evaluate import _default_loss

    logits = torch.randn(2, K, S, S, generator=torch.Generator().manual_seed(2))
    target = masks(2)
    target[:, 0] = 255
    assert torch.equal(_default_loss(logits, target),
                       nn.functional.cross_entropy(logits, target, ignore_index=255))


# --- checkpoints ------------------------------------------------------------------------------

def _saved(tmp_path, **extra):
    return save_checkpoint(tmp_path / "m.pt", tiny(), **extra)


def _flip_weights(path):
    raw = bytearray(path.read_bytes())
    weight = tiny()[0].weight.detach().numpy().tobytes()
    at = bytes(raw).find(weight)
    raw[at:at + 64] = bytes(b ^ 0xFF for b in raw[at:at + 64])
    path.write_bytes(bytes(raw))
    return path


def _truncate(path):
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    return path


def _empty(path):
    path.write_bytes(b"")
    return path


def _text(path):
    path.write_text("not a checkpoint\n")
    return path


def _plain_state_dict(path):
    torch.save(tiny().state_dict(), path)
    return path


CHECKPOINT_CASES = {
    "save onto a directory": (lambda p: save_checkpoint(p, tiny()), r"path .* is a directory"),
    "save an object extra": (lambda p: save_checkpoint(p / "m.pt", tiny(), note=object()),
                             r"extra 'note' is a object"),
    "save a function inside an extra": (
        lambda p: save_checkpoint(p / "m.pt", tiny(), cfg={"fn": print}),
        r"extra 'cfg'\['fn'\]"),
    "save a reserved name": (lambda p: save_checkpoint(p / "m.pt", tiny(), checksum=1),
                             r"reserved"),
    "save a state_dict as model": (lambda p: save_checkpoint(p / "m.pt", tiny().state_dict()),
                                   r"model must be an nn.Module"),
    "load flipped bytes": (lambda p: load_checkpoint(_flip_weights(_saved(p)), tiny()),
                           r"corrupted.*checksum"),
    "load a truncated file": (lambda p: load_checkpoint(_truncate(_saved(p)), tiny()),
                              r"path .* not a readable checkpoint"),
    "load an empty file": (lambda p: load_checkpoint(_empty(p / "m.pt"), tiny()),
                           r"path .* is empty"),
    "load a text file": (lambda p: load_checkpoint(_text(p / "m.pt"), tiny()),
                         r"path .* not a readable checkpoint"),
    "load a plain state_dict": (lambda p: load_checkpoint(_plain_state_dict(p / "m.pt"),
                                                          tiny()),
                                r"plain state_dict.*model.load_state_dict\(torch.load\(path\)\)"),
    "load another architecture": (lambda p: load_checkpoint(_saved(p), tiny(k=K + 2)),
                                  r"(?s)does not fit model.*shape mismatches"),
    "load a directory": (lambda p: load_checkpoint(p, tiny()), r"path .* is a directory"),
    "load into a non-module": (lambda p: load_checkpoint(_saved(p), {"w": 1}),
                               r"model must be an nn.Module"),
}


@pytest.mark.parametrize("case", list(CHECKPOINT_CASES))
def test_bad_checkpoint_input_raises_a_value_error(case, tmp_path):
    call, match = CHECKPOINT_CASES[case]
    with pytest.raises(ValueError, match=match):
        call(tmp_path)


@pytest.mark.parametrize("value, expected", [
    (History(train_loss=[0.5, 0.25]), dict(History(train_loss=[0.5, 0.25]))),
    (np.float32(0.5), 0.5),
    (np.int64(3), 3),
    (Cfg(), {"width": 4}),
    ({"scores": [np.float64(0.1)]}, {"scores": [0.1]}),
])
def test_extras_are_converted_to_what_loads_back(value, expected, tmp_path):
    path = _saved(tmp_path, extra=value)
    state = load_checkpoint(path, tiny())
    assert state["extra"] == expected and type(state["extra"]) is type(expected)
