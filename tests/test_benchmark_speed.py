"""benchmarks/speed.py: the rewrites it times compute the same function (script imported)."""

import importlib.util
from pathlib import Path

import pytest
import torch

spec = importlib.util.spec_from_file_location(
    "bench_speed", Path(__file__).parents[1] / "benchmarks" / "speed.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_speed_table_for_two_models(capsys):
    result = bench.main(["--models", "unet", "segformer", "--size", "64", "--repeats", "1",
                         "--matmul", "256", "--skip", "compile", "reference"])
    rows = result["rows"]
    assert [r["model"] for r in rows] == ["unet", "segformer"]
    assert set(result["gemm"]) == {"torch.matmul", "1x1 conv (oneDNN)"}
    for r in rows:
        assert r["fp32_diff"] < 1e-4 and r["gflops"] > 0 and r["eager_ms"] > 0
        assert r["exact"] in ("fold", "fold + channels_last")
        assert r["best_ms"] == r["exact_ms"] and "compile_ms" not in r
        # bf16 keeps ~8 bits of mantissa: a difference that is there, and small
        assert 1e-4 < r["bf16_diff"] < 0.1 and 0 <= r["bf16_changed"] < 0.2
    out = capsys.readouterr().out
    assert out.startswith("fp32 GEMM 256^3: torch.matmul") and "of peak" in out


def test_gemm_references_count_the_same_product():
    # the 1x1 convolution is the same n x n x n product as the matmul: check the arithmetic
    n = 64
    a, b = torch.randn(n, n), torch.randn(n, n)
    conv = torch.nn.functional.conv2d(a.t().reshape(1, n, 1, n), b.t().reshape(n, n, 1, 1))
    assert torch.allclose(conv.reshape(n, n).t(), a @ b, atol=1e-4)
    rates = bench.gemm_references(n, repeats=1)
    assert all(v > 0 for v in rates.values())


def test_reference_row_segformer_matches_hf():
    pytest.importorskip("transformers")
    rows = bench.against_references(["segformer"], size=64, repeats=1)
    (row,) = rows
    assert row["library"] == "HF transformers"
    assert max(row["diffs"].values()) < 1e-4       # logits equal to HF's after the converter
    assert set(row["ms"]) == {"reference", "eager", "exact"}


def test_reference_row_deeplabv3_matches_torchvision():
    # runs where torchvision is on the path (see benchmarks/references.py); skipped otherwise
    if bench.REFERENCES["deeplabv3"][1].__globals__["import_torchvision"]() is None:
        pytest.skip("torchvision is not installed")
    (row,) = bench.against_references(["deeplabv3"], size=64, repeats=1)
    assert row["library"] == "torchvision" and max(row["diffs"].values()) < 1e-5


def test_format_rows_by_hand():
    row = {"model": "m", "gflops": 10.0, "eager_ms": 200.0, "exact_ms": 120.0,
           "compile_ms": 100.0, "compile_s": 12.5, "best_ms": 100.0, "fp32_diff": 1e-7,
           "bf16_ms": 60.0, "bf16_diff": 5e-3, "bf16_changed": 0.02, "exact": "fold"}
    line = bench.format_rows([row], peak=200.0).splitlines()[-1].split()
    # 10 GFLOPs in 0.1 s = 100 GFLOP/s = 50 % of 200; eager / best = 2x
    assert line[:8] == ["m", "10.00", "200.0", "120.0", "100.0", "60.0", "2.00x", "50%"]
    assert line[-3:] == ["2.0%", "12.5", "fold"]
