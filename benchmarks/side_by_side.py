"""Every registered semantic model, the same training budget, one table (chapter 9's table).

    python benchmarks/side_by_side.py                    # chapter 9's CPU budget (about 1-2 min)
    python benchmarks/side_by_side.py --samples 4000 --size 128 --epochs 20 --batch-size 32
                                                         # a real budget, on a GPU

Prints parameters, GFLOPs and CPU latency for one 256 x 256 image, training seconds and
validation mIoU on the shapes data, and writes the rows (per-class IoU included) as CSV with
--csv. The defaults are ``segcourse.profiling.CPU_BUDGET``, the numbers chapter 9 uses, so on the
same machine this prints the chapter's table.
"""

from __future__ import annotations

import argparse
import csv

import torch

from segcourse import models
from segcourse.data import ShapesDataset
from segcourse.profiling import CPU_BUDGET, compare_models, format_table
from segcourse.train import get_device

# the models built with num_classes (SAM, promptable: benchmarks/sam.py)
CLASSIFIERS = models.list_models(models.CLASSIFIERS)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=CLASSIFIERS)
    parser.add_argument("--samples", type=int, default=CPU_BUDGET["train_samples"])
    parser.add_argument("--val-samples", type=int, default=CPU_BUDGET["val_samples"])
    parser.add_argument("--size", type=int, default=CPU_BUDGET["size"])
    parser.add_argument("--epochs", type=int, default=CPU_BUDGET["epochs"])
    parser.add_argument("--batch-size", type=int, default=CPU_BUDGET["batch_size"])
    parser.add_argument("--lr", type=float, default=CPU_BUDGET["lr"])
    parser.add_argument("--repeats", type=int, default=3, help="timed forward passes per model")
    parser.add_argument("--csv", default=None, help="also write the rows to this CSV file")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.models) - set(CLASSIFIERS))
    if unknown:
        parser.error(f"unknown models {unknown}; registered: {CLASSIFIERS}")

    train_set = ShapesDataset(args.samples, size=args.size, seed=0)
    val_set = ShapesDataset(args.val_samples, size=args.size, seed=1)
    device = get_device()
    rows = compare_models(args.models, train_set, val_set, train_set.num_classes,
                          epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                          repeats=args.repeats, device=device, progress=True)
    print(f"\n{args.samples} shapes images of {args.size} x {args.size}, {args.epochs} epochs, "
          f"batch {args.batch_size}, lr {args.lr:g}, trained on {device}; GFLOPs and CPU latency "
          f"({torch.get_num_threads()} threads) for one 256 x 256 image")
    print(format_table(rows))
    if args.csv:
        classes = train_set.classes
        with open(args.csv, "w", newline="") as f:
            fields = [k for k in rows[0] if k != "iou"] + [f"iou_{c}" for c in classes]
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            for r in rows:
                writer.writerow({**{k: v for k, v in r.items() if k != "iou"},
                                 **{f"iou_{c}": v for c, v in zip(classes, r["iou"])}})
    return rows


if __name__ == "__main__":
    main()
