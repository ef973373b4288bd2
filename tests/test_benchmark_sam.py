"""benchmarks/sam.py: the encoder / decoder cost split of SAM (script imported, tiny variant)."""

import importlib.util
from pathlib import Path

import torch

from segcourse.models.sam import sam
from segcourse.profiling import count_flops

spec = importlib.util.spec_from_file_location(
    "bench_sam", Path(__file__).parents[1] / "benchmarks" / "sam.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_count_flops_of_any_call_by_hand():
    layer = torch.nn.Linear(8, 4, bias=False)
    x = torch.rand(3, 8)
    assert count_flops(layer, lambda: layer(x)).get_total_flops() == 2 * 3 * 8 * 4
    assert layer.weight.requires_grad and layer.training          # restored


def test_tiny_split_adds_up_and_prints(capsys):
    (row,) = bench.main(["--variants", "tiny", "--repeats", "1"])
    model = sam("tiny")
    assert row["encoder_params"] == sum(p.numel() for p in model.image_encoder.parameters())
    assert row["encoder_params"] + row["decoder_params"] == sum(
        p.numel() for p in model.parameters())
    assert row["encoder_gflops"] > 0 and row["decoder_gflops"] > 0
    assert row["encoder_ms"] > 0 and row["decoder_ms"] > 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["variant", "size"] and out[2].split()[:2] == ["tiny", "64"]
