"""segcourse.profiling: counts checked against hand-computed values."""

import csv
import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from segcourse.data import ShapesDataset
from segcourse.metrics import mean_iou
from segcourse.profiling import (
    answer_latency,
    compare_models,
    count_parameters,
    cpu_latency,
    format_panoptic_table,
    format_table,
    gflops,
    gflops_by_module,
    panoptic_profile,
    profile,
)


def test_parameters_and_flops_of_one_conv_by_hand():
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1)
    assert count_parameters(conv) == 8 * 3 * 3 * 3 + 8
    # one multiply-add (2 FLOPs) per weight per output pixel; the bias add is not counted
    assert gflops(conv, size=(10, 20)) == pytest.approx(2 * 8 * 3 * 9 * 10 * 20 / 1e9)


def test_flops_scale_with_pixels_and_mode_is_restored():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).train()
    small, big = gflops(net, (16, 16)), gflops(net, (32, 32))
    assert big == pytest.approx(4 * small)
    assert net.training


def test_latency_and_table():
    net = nn.Conv2d(3, 4, 3)
    assert cpu_latency(net, (32, 32), repeats=2) > 0
    row = {"model": "conv", **profile(net, (32, 32), repeats=2)}
    table = format_table([row])
    assert "conv" in table and f"{count_parameters(net):,}" in table


def test_flops_by_module_by_hand_and_they_add_up():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))
    parts = gflops_by_module(net, size=(10, 20))
    assert list(parts) == ["0", "1", "2"]
    assert parts["0"] == pytest.approx(2 * 8 * 3 * 9 * 200 / 1e9)
    assert parts["1"] == 0
    assert parts["2"] == pytest.approx(2 * 4 * 8 * 200 / 1e9)
    assert sum(parts.values()) == pytest.approx(gflops(net, (10, 20)))


class _StemThenFunctionalHead(nn.Module):
    """A child module plus a convolution called functionally in forward (no child owns it)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 1)
        self.head_weight = nn.Parameter(torch.randn(2, 6, 1, 1))

    def forward(self, x):
        return F.conv2d(self.stem(x), self.head_weight)


class _Stages(nn.Module):
    """Stages in an nn.ModuleList: the list itself is never called, only its members."""

    def __init__(self):
        super().__init__()
        self.stages = nn.ModuleList([nn.Conv2d(3, 4, 1), nn.Conv2d(4, 5, 1)])
        self.head = nn.Conv2d(5, 2, 1)

    def forward(self, x):
        for stage in self.stages:
            x = stage(x)
        return self.head(x)


def test_flops_of_a_module_list_are_the_sum_of_its_members():
    parts = gflops_by_module(_Stages(), size=(4, 4))
    assert parts == pytest.approx({"stages": (2 * 4 * 3 + 2 * 5 * 4) * 16 / 1e9,
                                   "head": 2 * 2 * 5 * 16 / 1e9})


def test_flops_outside_children_are_reported_as_own():
    parts = gflops_by_module(_StemThenFunctionalHead(), size=(8, 8))
    assert parts["stem"] == pytest.approx(2 * 6 * 3 * 64 / 1e9)
    assert parts["(own)"] == pytest.approx(2 * 2 * 6 * 64 / 1e9)


def test_compare_models_same_budget_is_reproducible_and_returns_trained_models():
    train, val = ShapesDataset(8, size=32, seed=0), ShapesDataset(4, size=32, seed=1)
    budget = dict(epochs=1, batch_size=4, lr=1e-3, profile_size=(32, 32), repeats=1)
    rows, trained = compare_models(["deeplabv3", "fcn8s"], train, val, 5, return_models=True,
                                   **budget)
    assert [r["model"] for r in rows] == ["deeplabv3", "fcn8s"] == list(trained)
    for r in rows:
        assert set(r) >= {"params", "gflops", "latency_ms", "train_s", "miou", "iou"}
        assert r["params"] == count_parameters(trained[r["model"]])
        assert 0 <= r["miou"] <= 1 and len(r["iou"]) == 5
        # the row's mIoU is the trained model's, recomputed independently from its predictions
        images, masks = val.tensors()
        with torch.no_grad():
            pred = trained[r["model"]].eval()(images).argmax(1)
        assert r["miou"] == pytest.approx(mean_iou(pred, masks, 5), abs=1e-6)
    again = compare_models(["deeplabv3"], train, val, 5, **budget)
    assert again[0]["miou"] == pytest.approx(rows[0]["miou"], abs=1e-6)   # same seed, same result


def test_side_by_side_script_prints_the_table_and_writes_csv(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "side_by_side", Path(__file__).parents[1] / "benchmarks" / "side_by_side.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out_csv = tmp_path / "rows.csv"
    rows = script.main(["--models", "deeplabv3plus", "--samples", "4", "--val-samples", "2",
                        "--size", "32", "--epochs", "1", "--repeats", "1", "--csv", str(out_csv)])
    printed = capsys.readouterr().out
    assert "deeplabv3plus" in printed and "mIoU" in printed and f"{rows[0]['params']:,}" in printed
    with open(out_csv) as f:
        (record,) = list(csv.DictReader(f))
    assert record["model"] == "deeplabv3plus" and "iou_triangle" in record
    with pytest.raises(SystemExit):
        script.main(["--models", "no_such_model"])


class _Attention(nn.Module):
    def forward(self, x):                          # x: (B, heads, N, d), attention of x on itself
        return F.scaled_dot_product_attention(x, x, x)


def test_fused_attention_is_counted_on_the_cpu():
    # torch's own counter has no formula for the fused CPU kernel and would report 0 here
    b, heads, n, d = 1, 2, 10, 4
    counted = gflops(_Attention(), size=(n, d), in_channels=heads) * 1e9
    assert counted == 2 * b * heads * n * n * d + 2 * b * heads * n * n * d   # q k^T, then @ v


@pytest.mark.parametrize("name", ["setr_naive", "segformer"])
def test_transformer_flops_match_the_decomposed_count_on_the_meta_device(name):
    # on the meta device attention runs as two bmm's, which torch's counter knows: independent
    from torch.utils.flop_counter import FlopCounterMode

    from segcourse import models

    with torch.device("meta"):
        meta_model = models.build(name, num_classes=5).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        meta_model(torch.empty(1, 3, 64, 96, device="meta"))
    assert gflops(models.build(name, num_classes=5), (64, 96)) * 1e9 == counter.get_total_flops()


def test_gflops_counts_a_model_that_feeds_a_parameter_to_a_submodule():
    """Mask2Former passes views of its query embeddings into decoder layers (under no_grad a
    view of a parameter requires grad but has no grad_fn); the counter's module tracker used
    to fail on such inputs. Counted: one 4 x 8 @ 8 x 8 product."""

    class Queries(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.queries = torch.nn.Parameter(torch.randn(4, 8))
            self.layer = torch.nn.Linear(8, 8, bias=False)

        def forward(self, images):
            return self.layer(self.queries.expand(1, -1, -1)) + images.mean()

    model = Queries()
    assert gflops(model, (2, 2), in_channels=1) == 2 * 4 * 8 * 8 / 1e9
    assert all(p.requires_grad for p in model.parameters())       # switched back on


def test_answer_latency_times_segment_where_a_model_has_it():
    class Answers(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(1))
            self.calls = {"forward": 0, "segment": 0}

        def forward(self, x):
            self.calls["forward"] += 1
            return x

        def segment(self, x):
            self.calls["segment"] += 1
            return [x]

    model = Answers().train()
    seconds = answer_latency(model, (32, 32), repeats=3, warmup=1)
    assert seconds >= 0 and model.calls == {"forward": 0, "segment": 4} and model.training
    del Answers.segment
    answer_latency(model, (32, 32), repeats=3, warmup=1)
    assert model.calls["forward"] == 4


def test_panoptic_profile_answers_every_task_of_a_mask_classifier():
    from segcourse.models.mask2former import mask2former

    torch.manual_seed(0)
    scenes = ShapesDataset(4, size=64, seed=1)
    model = mask2former(5, thing_classes=scenes.thing_classes)
    row = panoptic_profile(model, scenes, repeats=1)
    assert {"params", "gflops", "latency_ms", "miou", "mask_ap50", "pq", "pq_things",
            "pq_stuff"} <= set(row)
    assert row["params"] == sum(p.numel() for p in model.parameters())
    assert all(0 <= row[k] <= 1 for k in ("miou", "mask_ap50", "pq"))


def test_panoptic_table_by_hand():
    rows = {"a": {"params": 1234, "gflops": 0.5, "latency_ms": 2.25, "mask_ap50": 0.5,
                  "pq": 0.25, "pq_things": 0.125, "pq_stuff": 1.0},
            "bb": {"params": 5, "gflops": 1.0, "latency_ms": 10.0, "miou": 0.75,
                   "mask_ap50": 1.0, "pq": 1.0, "pq_things": 1.0, "pq_stuff": 1.0}}
    assert format_panoptic_table(rows).splitlines() == [
        "       params GFLOPs CPU ms  mIoU  AP50    PQ  PQth  PQst",
        " a      1,234   0.50    2.2     - 0.500 0.250 0.125 1.000",
        "bb          5   1.00   10.0 0.750 1.000 1.000 1.000 1.000"]


def test_median_ms_is_the_median_of_timed_calls(monkeypatch):
    from segcourse import profiling
    clock = iter([0.0, 0.010, 1.0, 1.030, 2.0, 2.020])  # three calls: 10, 30, 20 ms
    monkeypatch.setattr(profiling.time, "perf_counter", lambda: next(clock))
    calls = []
    ms = profiling.median_ms(lambda a, b: calls.append((a, b)), 1, 2, repeats=3, warmup=2)
    assert abs(ms - 20.0) < 1e-9 and calls == [(1, 2)] * 5   # 2 warm-up + 3 timed


def test_median_ms_rejects_bad_arguments():
    import pytest

    from segcourse import profiling
    with pytest.raises(ValueError, match="fn must be callable"):
        profiling.median_ms(3)
    with pytest.raises(ValueError, match="repeats"):
        profiling.median_ms(print, repeats=0)
