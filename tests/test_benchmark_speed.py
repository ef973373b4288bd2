"""benchmarks/speed.py: the exact rewrites it times compute the same function (script imported)."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "bench_speed", Path(__file__).parents[1] / "benchmarks" / "speed.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_speed_table_for_two_models(capsys):
    rows = bench.main(["--models", "unet", "segformer", "--size", "64", "--repeats", "1",
                       "--matmul", "256"])
    assert [r["model"] for r in rows] == ["unet", "segformer"]
    for r in rows:
        assert r["max_diff"] < 1e-4 and r["gflops"] > 0 and r["eager_ms"] > 0
        assert r["best"] in ("fold", "fold + channels_last")
    out = capsys.readouterr().out
    assert out.startswith("fp32 matmul 256^3:") and "of peak" in out
