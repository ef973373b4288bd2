"""How fast each model runs on the CPU: eager, exact rewrites, torch.compile, bf16 -- and vs the
reference implementations on the same weights.

    python benchmarks/speed.py                       # registry defaults, 256 x 256
    python benchmarks/speed.py --size 512 --paper --models unet fcn8s deeplabv3plus segformer
    python benchmarks/speed.py --skip compile bf16   # the quick table

One run prints:

1. **The fp32 GEMM reference**: the median rate of a square ``--matmul``-sized product run two
   ways, ``torch.matmul`` (MKL) and the same product as a 1 x 1 convolution in channels_last
   memory (oneDNN; the best of three shapes with the same FLOPs) -- no other work. The faster is
   the machine's measured fp32 matmul throughput, the denominator of "of peak". Both are
   printed because they differ: on the course's 2-core AMD EPYC (Zen 5, AVX-512 with full-width
   FMA units) MKL's ``sgemm`` runs at less than half the rate of oneDNN's (218 vs ~510 GFLOP/s;
   MKL picks its wide kernels by CPU vendor), and the CNNs' convolutions, which run on oneDNN,
   seemed to beat "the matmul" by up to 2.2x when MKL was the reference. oneDNN's 3 x 3
   convolutions run at its GEMM's rate (497-516 GFLOP/s for 64-256 channels, direct algorithm:
   no fewer-multiplication trick), so against the oneDNN GEMM nothing is above 100 %.
2. **Per model**: GFLOPs of one forward pass (``segcourse.profiling.gflops``: nominal, the
   published computation counted as direct convolutions and products), then median latencies:
   eager; ``exact`` = :func:`segcourse.fuse.for_inference` (BatchNorm folded into the convs,
   SegFormer's decoder folded), with or without ``channels_last``, whichever is faster;
   ``compile`` = ``torch.compile`` (inductor) of that exact model, after a warm-up that pays
   the compilation (its seconds are the "compile s" column); ``bf16`` = the exact model under
   ``torch.autocast("cpu", torch.bfloat16)``. "best" is the faster fp32 one (exact or
   compile), "of peak" its achieved nominal GFLOP/s over the GEMM reference, "fp32 diff" the
   largest difference of the fp32 rewrites' outputs from eager relative to the output's scale;
   bf16 is not the same function, so its cost is reported as the relative logit difference and
   the fraction of pixels whose arg-max class changes (random weights, random image: an upper
   bound on what a trained model sees; chapter 12 measures mIoU).
3. **Against the references** (``benchmarks/references.py``; each row is skipped if its library
   is not installed): SegFormer vs HF transformers (logits at 1/4, as HF returns them), DeepLabV3
   vs torchvision's ``deeplabv3_resnet101`` (output stride 8, the configuration torchvision
   ships), both on the same random weights loaded through the course's converter; the two
   implementations take turns run by run so that load drifts hit both alike.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from references import REFERENCES, time_in_turns  # noqa: E402

from segcourse import models  # noqa: E402
from segcourse.fuse import for_inference  # noqa: E402
from segcourse.profiling import gflops, median_ms  # noqa: E402

CLASSIFIERS = models.list_models(models.CLASSIFIERS)
STAGES = ("compile", "bf16", "reference")


def gemm_references(n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """fp32 GFLOP/s of ``torch.matmul`` of two ``n x n`` matrices (2 n^3 FLOPs), and the best
    of three 1 x 1 convolutions in channels_last -- oneDNN's GEMM -- with ``c = n, n/2, n/4``
    input and output channels over ``n^2 / c`` pixels (2 c n^2 FLOPs: the same ``n x n`` input
    tensor each time; the shape matters to a GEMM kernel, the widest is not its fastest)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    conv = 0.0
    for c in (n, n // 2, n // 4):
        pixels = n * n // c
        width = 64 if pixels % 64 == 0 else pixels
        x = torch.randn(1, c, pixels // width, width).contiguous(memory_format=torch.channels_last)
        weight = torch.randn(c, c, 1, 1).contiguous(memory_format=torch.channels_last)
        ms = median_ms(lambda v, w=weight: F.conv2d(v, w), x, repeats=repeats)
        conv = max(conv, 2 * c * n * n / 1e9 / (ms / 1e3))
    matmul_ms = median_ms(lambda x: x @ b, a, repeats=repeats)
    return {"torch.matmul": 2 * n ** 3 / 1e9 / (matmul_ms / 1e3), "1x1 conv (oneDNN)": conv}


def _outputs(out):
    if isinstance(out, dict):
        return [v for v in out.values() if isinstance(v, torch.Tensor)]
    return [out]


def relative_difference(expected, actual) -> float:
    """Largest |difference| relative to each output's largest magnitude (random paper-size
    weights give logits in the thousands: 7e-3 absolute can be 3e-6 relative)."""
    return max(((a - b.float()).abs().max() / a.abs().max().clamp_min(1e-12)).item()
               for a, b in zip(_outputs(expected), _outputs(actual)))


def argmax_changed(expected, actual) -> float:
    """Fraction of pixels whose arg-max class differs (the first output: the logits)."""
    a, b = _outputs(expected)[0], _outputs(actual)[0]
    return (a.argmax(1) != b.argmax(1)).float().mean().item() if a.dim() == 4 else float("nan")


def exact_variant(model, x: torch.Tensor, repeats: int):
    """The faster layout of ``for_inference(model)``: (how, module, input, ms)."""
    fast = for_inference(model, x)  # traced and verified once; the layout is a copy
    last = copy.deepcopy(fast).to(memory_format=torch.channels_last)
    xl = x.contiguous(memory_format=torch.channels_last)
    timed = [("fold", fast, x, median_ms(fast, x, repeats=repeats)),
             ("fold + channels_last", last, xl, median_ms(last, xl, repeats=repeats))]
    return min(timed, key=lambda t: t[3])


def measure(name: str, size: int, paper: bool, repeats: int, skip=(),
            num_classes: int = 21) -> dict:
    torch.manual_seed(0)
    model = models.build(name, num_classes=num_classes, paper=paper).eval()
    x = torch.randn(1, 3, size, size)
    row = {"model": name + ("*" if paper else ""), "gflops": gflops(model, (size, size)),
           "eager_ms": median_ms(model, x, repeats=repeats)}
    how, fast, xi, row["exact_ms"] = exact_variant(model, x, repeats)
    row["exact"] = how
    with torch.inference_mode():
        expected = model(x)
        row["fp32_diff"] = relative_difference(expected, fast(xi))
        if "compile" not in skip:
            compiled = torch.compile(fast)
            start = time.perf_counter()
            out = compiled(xi)
            row["compile_s"] = time.perf_counter() - start
            row["fp32_diff"] = max(row["fp32_diff"], relative_difference(expected, out))
            row["compile_ms"] = median_ms(compiled, xi, repeats=repeats)
            torch._dynamo.reset()  # free the compiled graphs before the next model
        if "bf16" not in skip:
            def bf16(inp):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return fast(inp)
            row["bf16_ms"] = median_ms(bf16, xi, repeats=repeats)
            out = bf16(xi)
            row["bf16_diff"] = relative_difference(expected, out)
            row["bf16_changed"] = argmax_changed(expected, out)
    row["best_ms"] = min(row["exact_ms"], row.get("compile_ms", float("inf")))
    return row


def _ms(value) -> str:
    return f"{value:>8.1f}" if value is not None else f"{'-':>8}"


def format_rows(rows: list[dict], peak: float) -> str:
    header = (f"{'model':<15} {'GFLOPs':>7} {'eager':>8} {'exact':>8} {'compile':>8} "
              f"{'bf16':>8} {'speed-up':>8} {'of peak':>7} {'fp32 diff':>9} "
              f"{'bf16 diff':>9} {'argmax':>6} {'compile s':>9}  exact")
    lines = [header, "-" * len(header)]
    for r in rows:
        achieved = r["gflops"] / (r["best_ms"] / 1e3)
        bf16 = (f"{r['bf16_diff']:>9.1e} {r['bf16_changed']:>6.1%}" if "bf16_diff" in r
                else f"{'-':>9} {'-':>6}")
        compile_s = f"{r['compile_s']:>9.1f}" if "compile_s" in r else f"{'-':>9}"
        lines.append(f"{r['model']:<15} {r['gflops']:>7.2f} {_ms(r['eager_ms'])} "
                     f"{_ms(r['exact_ms'])} {_ms(r.get('compile_ms'))} {_ms(r.get('bf16_ms'))} "
                     f"{r['eager_ms'] / r['best_ms']:>7.2f}x {achieved / peak:>7.0%} "
                     f"{r['fp32_diff']:>9.1e} {bf16} {compile_s}  {r['exact']}")
    return "\n".join(lines)


def _in_layout(output, model, layout, x):
    return output(model, x.contiguous(memory_format=layout))


def against_references(names, size: int, repeats: int) -> list[dict]:
    rows = []
    for name in names:
        library, make = REFERENCES[name]
        made = make()
        if made is None:
            print(f"({name}: {library} is not installed; row skipped)")
            continue
        ours, reference, output = made
        x = torch.randn(1, 3, size, size)
        how, fast, xi, _ = exact_variant(ours, x, 1)
        with torch.inference_mode():
            expected = reference(x)
            diffs = {"eager": relative_difference(expected, output(ours, x)),
                     "exact": relative_difference(expected, output(fast, xi))}
            scale = expected.abs().max().item()
        # the exact model is timed from the NCHW image, its layout change included
        layout = torch.channels_last if xi is not x else torch.contiguous_format
        times = time_in_turns({"reference": reference,
                               "eager": partial(output, ours),
                               "exact": partial(_in_layout, output, fast, layout)}, x, repeats)
        t = {name: statistics.median(v) for name, v in times.items()}
        rows.append({"model": name, "library": library, "scale": scale, "diffs": diffs,
                     "ms": t, "exact": how})
    return rows


def format_references(rows: list[dict]) -> str:
    header = (f"{'model':<10} {'reference':<16} {'ref ms':>8} {'ours':>8} {'exact':>8} "
              f"{'vs ref':>7} {'exact vs ref':>12} {'max rel. diff':>13}")
    lines = [header, "-" * len(header)]
    for r in rows:
        ms = r["ms"]
        lines.append(f"{r['model']:<10} {r['library']:<16} {ms['reference']:>8.1f} "
                     f"{ms['eager']:>8.1f} {ms['exact']:>8.1f} "
                     f"{ms['eager'] / ms['reference']:>6.2f}x "
                     f"{ms['exact'] / ms['reference']:>11.2f}x "
                     f"{max(r['diffs'].values()):>13.1e}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=CLASSIFIERS, choices=CLASSIFIERS)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--paper", action="store_true", help="the paper configurations")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--matmul", type=int, default=2048, help="side of the reference GEMM")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--skip", nargs="*", default=[], choices=STAGES)
    parser.add_argument("--references", nargs="*", default=list(REFERENCES),
                        choices=list(REFERENCES))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    gemm = gemm_references(args.matmul, args.repeats)
    peak = max(gemm.values())
    print(f"fp32 GEMM {args.matmul}^3: " + ", ".join(f"{k} {v:.0f}" for k, v in gemm.items())
          + f" GFLOP/s; {torch.get_num_threads()} CPU thread(s), torch {torch.__version__}; one "
          f"{args.size} x {args.size} image; median ms of {args.repeats} runs", flush=True)
    rows = []
    for name in args.models:
        rows.append(measure(name, args.size, args.paper, args.repeats, args.skip))
        print(format_rows(rows[-1:], peak).splitlines()[-1], flush=True)
    print()
    print(format_rows(rows, peak))
    refs = []
    if "reference" not in args.skip and args.references:
        print()
        refs = against_references(args.references, args.size, args.repeats)
        print(format_references(refs))
    return {"gemm": gemm, "rows": rows, "references": refs}


if __name__ == "__main__":
    main()
