"""benchmarks/quantize.py: one tiny run gives a sane table (script imported)."""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

spec = importlib.util.spec_from_file_location(
    "bench_quantize", Path(__file__).parents[1] / "benchmarks" / "quantize.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_quantize_table_for_one_model(capsys):
    rows = bench.main(["--models", "unet", "--epochs", "1", "--train", "32", "--val", "8",
                       "--calibration", "4", "--size", "64", "--repeats", "1"])
    assert [r["model"] for r in rows] == ["unet"]
    (r,) = rows
    assert abs(r["miou_float"] - r["miou_torch"]) < 1e-6  # the same function, scored alike
    assert 0 <= r["miou_int8"] <= 1 and abs(r["diff"] - (r["miou_int8"] - r["miou_float"])) < 1e-12
    assert r["float_ms"] > 0 and r["int8_ms"] > 0
    assert abs(r["speedup"] - r["float_ms"] / r["int8_ms"]) < 1e-9
    assert 0 < r["int8_mb"] < 0.4 * r["float_mb"]  # 8-bit weights
    out = capsys.readouterr().out
    header = out.strip().splitlines()[-3]
    for column in ("mIoU torch", "ONNX fp32", "int8", "diff", "speed-up", "fp32 MB"):
        assert column in header
    assert out.strip().splitlines()[-1].startswith("unet")


def test_calibration_larger_than_the_training_set_is_refused():
    with pytest.raises(SystemExit):
        bench.main(["--models", "unet", "--train", "4", "--calibration", "8"])
