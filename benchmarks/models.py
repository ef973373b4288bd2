"""Size and speed of every registered model: parameters, GFLOPs, CPU forward latency.

    python benchmarks/models.py                       # registry defaults, 256 x 256, all threads
    python benchmarks/models.py --threads 2           # as on the course's 2-core reference CPU
    python benchmarks/models.py --paper --models fcn8s unet   # add the paper configurations
    python benchmarks/models.py --size 512 512 --repeats 9

Registry-driven: a family that registers a model appears here without editing this file.
GFLOPs count one forward pass of one image in eval mode (``torch.utils.flop_counter``; a
multiply-add is 2 FLOPs); latency is the median of ``--repeats`` timed forward passes of one image
after a warm-up, with ``torch.set_num_threads(--threads)``. Both come from
``segcourse.profiling.profile``, which chapter 9 uses too. ``--paper`` adds a row (marked ``*``)
for each model built with ``build(name, K, paper=True)``, the published configuration every
registered builder has (SegFormer's is B0, which is also its registry default).
"""

from __future__ import annotations

import argparse

import torch

from segcourse import models
from segcourse.profiling import format_table, profile

# the models built with num_classes (SAM, promptable: benchmarks/sam.py)
CLASSIFIERS = models.list_models(models.CLASSIFIERS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=CLASSIFIERS,
                        help="registered names (default: all that take num_classes)")
    parser.add_argument("--num-classes", type=int, default=21)
    parser.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--paper", action="store_true", help="also the paper configurations")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    unknown = sorted(set(args.models) - set(CLASSIFIERS))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; registered: {CLASSIFIERS}")

    rows = []
    for name in args.models:
        for paper in (False, True) if args.paper else (False,):
            torch.manual_seed(0)
            model = models.build(name, num_classes=args.num_classes, paper=paper).eval()
            stats = profile(model, tuple(args.size), repeats=args.repeats)
            rows.append({"model": name + ("*" if paper else ""), **stats})
            print(format_table(rows[-1:]).splitlines()[-1], flush=True)  # progress, row by row
            del model

    print(f"\n{args.num_classes} classes, one {args.size[0]} x {args.size[1]} image, "
          f"{torch.get_num_threads()} CPU thread(s), torch {torch.__version__}; "
          f"latency = median of {args.repeats} forward passes")
    print(format_table(rows))
    if args.paper:
        print("* paper configuration (paper=True)")


if __name__ == "__main__":
    main()
