"""How close each model runs to the machine: eager vs exact inference-time rewrites, on the CPU.

    python benchmarks/speed.py                              # registry defaults, 256 x 256
    python benchmarks/speed.py --size 512 --paper --models unet fcn8s deeplabv3plus segformer

One run prints, first, the machine's fp32 matrix-multiply throughput (the median of square
``--matmul``-sized products: the ceiling a dense model can approach on this CPU), then per
model: GFLOPs of one forward pass (``segcourse.profiling.gflops``), the median eager latency,
the median latency of the same function after the exact rewrites -- BatchNorm folded into the
preceding convolutions (``segcourse.fuse.fold_batchnorm``), SegFormer's folded decoder
(``decoder.fold``), and ``channels_last`` memory where it is faster -- the largest difference
between the two outputs, and the achieved GFLOP/s of the best one as a fraction of the matmul
throughput. GFLOPs are nominal -- those of the published computation, counted as direct
convolutions and matrix products -- so more than 100 % is possible: a rewrite that removes FLOPs
(SegFormer's fold) is credited with the FLOPs it no longer does, and the CNNs' convolutions ran
faster than this matmul on the course's 2-core CPU (U-Net's paper configuration at 512^2: 1.75
times its rate). Why is not pinned down yet: convolution algorithms that need fewer
multiplications than the direct one (Winograd-type, in oneDNN) or a matmul reference below the
CPU's peak are the candidates.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segcourse import models  # noqa: E402
from segcourse.fuse import fold_batchnorm  # noqa: E402
from segcourse.profiling import gflops  # noqa: E402

CLASSIFIERS = models.list_models(models.CLASSIFIERS)


def median_ms(fn, x: torch.Tensor, repeats: int) -> float:
    with torch.inference_mode():
        fn(x)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(x)
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """fp32 GFLOP/s of an ``n x n`` by ``n x n`` product (2 n^3 FLOPs), the median of runs."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n ** 3 / (median_ms(lambda x: x @ b, a, repeats) / 1e3) / 1e9


def _outputs(out):
    if isinstance(out, dict):
        return [v for v in out.values() if isinstance(v, torch.Tensor)]
    return [out]


def best_variant(model, x: torch.Tensor, repeats: int):
    """The fastest of the exact rewrites of ``model`` (eval): (name, (module, input, ms))."""
    folded = fold_batchnorm(model, x)
    if hasattr(folded, "decoder") and hasattr(folded.decoder, "fold"):
        folded.decoder.fold = True  # SegFormer's folded decoder
    last = copy.deepcopy(folded).to(memory_format=torch.channels_last)
    candidates = {"fold": (folded, x),
                  "fold + channels_last": (last, x.contiguous(memory_format=torch.channels_last))}
    timed = {name: (m, xi, median_ms(m, xi, repeats)) for name, (m, xi) in candidates.items()}
    name = min(timed, key=lambda k: timed[k][2])
    return name, timed[name]


def measure(name: str, size: int, paper: bool, repeats: int, num_classes: int = 21) -> dict:
    torch.manual_seed(0)
    model = models.build(name, num_classes=num_classes, paper=paper).eval()
    x = torch.randn(1, 3, size, size)
    eager = median_ms(model, x, repeats)
    how, (best, xi, best_ms) = best_variant(model, x, repeats)
    with torch.inference_mode():
        ref, got = _outputs(model(x)), _outputs(best(xi))
        # relative to each output's scale: random paper-size weights give large logits
        diff = max(((a - b).abs().max() / a.abs().max().clamp_min(1e-12)).item()
                   for a, b in zip(ref, got))
    return {"model": name + ("*" if paper else ""), "gflops": gflops(model, (size, size)),
            "eager_ms": eager, "best_ms": best_ms, "best": how, "max_diff": diff}


def format_rows(rows: list[dict], peak: float) -> str:
    header = (f"{'model':<16} {'GFLOPs':>8} {'eager ms':>9} {'best ms':>9} {'speed-up':>8} "
              f"{'of peak':>8} {'rel. diff':>10}  best")
    lines = [header, "-" * len(header)]
    for r in rows:
        achieved = r["gflops"] / (r["best_ms"] / 1e3)
        lines.append(f"{r['model']:<16} {r['gflops']:>8.2f} {r['eager_ms']:>9.1f} "
                     f"{r['best_ms']:>9.1f} {r['eager_ms'] / r['best_ms']:>7.2f}x "
                     f"{achieved / peak:>7.0%} {r['max_diff']:>10.1e}  {r['best']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=CLASSIFIERS, choices=CLASSIFIERS)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--paper", action="store_true", help="the paper configurations")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--matmul", type=int, default=2048, help="side of the reference matmul")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    peak = matmul_gflops(args.matmul, args.repeats)
    print(f"fp32 matmul {args.matmul}^3: {peak:.1f} GFLOP/s; {torch.get_num_threads()} CPU "
          f"thread(s), torch {torch.__version__}; one {args.size} x {args.size} image", flush=True)
    rows = []
    for name in args.models:
        rows.append(measure(name, args.size, args.paper, args.repeats))
        print(format_rows(rows[-1:], peak).splitlines()[-1], flush=True)
    print()
    print(format_rows(rows, peak))
    return rows


if __name__ == "__main__":
    main()
