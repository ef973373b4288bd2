"""SegFormer CPU latency: segcourse vs HF transformers on the same weights and the same input.

    python benchmarks/segformer_vs_hf.py                      # B0, 512 x 512 and 256 x 256
    python benchmarks/segformer_vs_hf.py --variant b2 --sizes 512 --runs 5

Both models are built with random weights (nothing is downloaded); segcourse's is loaded from
HF's through ``convert_hf_state_dict`` (``benchmarks/references.py``: the pair speed.py races),
and the script checks that they agree before timing them; "segcourse fold" is the same model
with the exact folded decoder (``decoder.fold``).
All stop at HF's output (logits at 1/4 resolution, before the final upsampling). The
table shows the median and the fastest of ``--runs`` forward passes after one warm-up, in
milliseconds, with ``torch.inference_mode``; the implementations alternate run by run, and "vs HF"
is the ratio of medians.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from references import segformer_reference, time_in_turns  # noqa: E402

from segcourse.models.segformer import VARIANTS  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="b0", choices=list(VARIANTS))
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 256])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    ours, hf, _ = segformer_reference(150, args.variant)  # HF's weights in ours
    folded = copy.deepcopy(ours)
    folded.decoder.fold = True  # the exact folded decoder (models.segformer.AllMLPDecoder)
    impls = {"segcourse": ours.forward_quarter, "segcourse fold": folded.forward_quarter,
             "transformers": hf}

    print(f"SegFormer-{args.variant.upper()}, 150 classes, batch {args.batch}, "
          f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}, "
          f"{args.runs} runs after a warm-up")
    header = (f"{'input':>9}  {'implementation':<14} {'median ms':>10} {'min ms':>8} "
              f"{'max |diff|':>11} {'vs HF':>8}")
    print(header)
    print("-" * len(header))
    for size in args.sizes:
        x = torch.randn(args.batch, 3, size, size)
        with torch.inference_mode():
            reference = impls["transformers"](x)
            diffs = {name: (fn(x) - reference).abs().max().item() for name, fn in impls.items()}
        times = time_in_turns(impls, x, args.runs)
        hf_median = statistics.median(times["transformers"])
        for name, t in times.items():
            print(f"{size:>4}x{size:<4}  {name:<14} {statistics.median(t):>10.1f} "
                  f"{min(t):>8.1f} {diffs[name]:>11.1e} {statistics.median(t) / hf_median:>8.2f}")


if __name__ == "__main__":
    main()
