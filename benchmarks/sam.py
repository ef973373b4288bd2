"""SAM's cost split: the image encoder runs once per image, the prompt decoder once per click.

    python benchmarks/sam.py                       # the CPU-sized "tiny" SAM
    python benchmarks/sam.py --variants tiny vit_b --repeats 3

Prints per variant the parameters, GFLOPs and median CPU latency of ``Sam.embed`` (one image at
the encoder's input size) and of ``Sam.decode`` (one click: a single positive point, three
masks), counted with PyTorch's FLOP counter (a multiply-add is 2 FLOPs; fused attention on the
CPU counted as two matrix products), by ``segcourse.profiling.prompt_cost``, which chapter 11
uses too. The paper's point: the decoder
costs a tiny fraction of the encoder, so an interactive tool embeds once and answers every
click in milliseconds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segcourse.models.sam import ENCODERS, sam  # noqa: E402
from segcourse.profiling import prompt_cost  # noqa: E402


def measure(variant: str, repeats: int = 5) -> dict:
    """``segcourse.profiling.prompt_cost`` of ``sam(variant)`` (random weights), on the CPU."""
    torch.manual_seed(0)
    return {"variant": variant, **prompt_cost(sam(variant).eval(), repeats)}


def format_rows(rows: list[dict]) -> str:
    header = (f"{'variant':<8} {'size':>5} {'enc params':>12} {'dec params':>11} "
              f"{'enc GFLOPs':>10} {'dec GFLOPs':>10} {'enc ms':>8} {'dec ms':>7}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['variant']:<8} {r['image_size']:>5} {r['encoder_params']:>12,} "
                     f"{r['decoder_params']:>11,} {r['encoder_gflops']:>10.3f} "
                     f"{r['decoder_gflops']:>10.3f} {r['encoder_ms']:>8.1f} "
                     f"{r['decoder_ms']:>7.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["tiny"], choices=sorted(ENCODERS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [measure(v, args.repeats) for v in args.variants]
    print(format_rows(rows))
    print(f"\none image, one click (a positive point, 3 masks); {torch.get_num_threads()} CPU "
          f"thread(s), torch {torch.__version__}")
    return rows


if __name__ == "__main__":
    main()
