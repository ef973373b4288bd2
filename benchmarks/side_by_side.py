"""Every registered semantic model, the same training budget, one table (chapter 9's table).

    python benchmarks/side_by_side.py                          # CPU, chapter 9's settings
    python benchmarks/side_by_side.py --epochs 20 --samples 4000 --size 128   # on a GPU

Prints parameters, GFLOPs and CPU latency at 256 x 256, training seconds and validation mIoU on
the shapes data, and writes the rows as CSV if --csv is given.
"""

from __future__ import annotations

import argparse
import csv

from segcourse import models
from segcourse.benchmark import compare_models, format_table
from segcourse.data import ShapesDataset
from segcourse.train import get_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=models.list_models())
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--csv", default=None)
    args = parser.parse_args()

    train_set = ShapesDataset(args.samples, size=args.size, seed=0)
    val_set = ShapesDataset(max(args.samples // 4, 1), size=args.size, seed=1)
    rows = compare_models(args.models, train_set, val_set, train_set.num_classes,
                          epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                          device=get_device(), progress=True)
    print(f"\n{args.samples} shapes images of {args.size} x {args.size}, {args.epochs} epochs, "
          f"batch {args.batch_size}, lr {args.lr}, trained on {get_device()}; "
          "GFLOPs and CPU latency for one 256 x 256 image")
    print(format_table(rows))
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k != "iou"])
            writer.writeheader()
            writer.writerows({k: v for k, v in r.items() if k != "iou"} for r in rows)


if __name__ == "__main__":
    main()
