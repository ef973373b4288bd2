"""Train the chapter 7 Panoptic FPN (Mask R-CNN + semantic stuff head) on the shapes data, on a CPU.

    python scripts/train_maskrcnn.py --threads 1    # writes checkpoints/panoptic_fpn_shapes.pt

This is the command that produced the checkpoint shipped with the course: the CPU-sized model
of ``segcourse.models.panoptic.panoptic_fpn`` trained from scratch for 1,000 iterations on
8,000 freshly generated 64 x 64 shapes scenes (3 thing classes, up to 5 objects, sky and ground
as stuff; each scene seen once), then evaluated on 200 held-out scenes (another seed). The run
took 664 CPU-seconds on one thread (11 minutes on an idle core; 36 minutes of wall time on a
shared, overloaded machine); PyTorch's default threads (``--threads 0``) are faster on a
multi-core CPU. Held-out results: mask AP@0.5 0.843, PQ 0.798 (SQ 0.899, RQ 0.883),
PQ things 0.688, PQ stuff 0.964. They are stored in the checkpoint with the training log.

Weights are stored in float16 so the file stays small (3.9 MB); they load into a float32 model
with ``segcourse.train.load_checkpoint``. A different CPU or thread count changes the floating-
point summation order, so a rerun matches the stored numbers closely, not bit for bit.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from segcourse.data import ShapesDataset  # noqa: E402
from segcourse.models.panoptic import (evaluate_panoptic, panoptic_fpn, shapes_batches,  # noqa: E402
                                       train_instances)
from segcourse.train import seed_everything  # noqa: E402

DATA = dict(size=64, num_things=3, max_instances=5)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    parser.add_argument("--val-samples", type=int, default=200)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "checkpoints" / "panoptic_fpn_shapes.pt"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    seed_everything(0)
    train = ShapesDataset(num_samples=args.iterations * args.batch_size, seed=0, **DATA)
    val = ShapesDataset(num_samples=args.val_samples, seed=1, **DATA)
    model = panoptic_fpn(train.thing_classes, train.stuff_classes)
    start, cpu_start = time.perf_counter(), time.process_time()
    # every iteration sees new scenes: the data set is generated, not reused
    log = train_instances(model, shapes_batches(train, args.batch_size), args.iterations, lr=args.lr)
    train_seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start

    metrics = evaluate_panoptic(model, shapes_batches(val, 16))
    metrics.pop("predictions")
    metrics = {k: round(v, 4) for k, v in metrics.items()}
    print("held-out:", metrics, f"training: {train_seconds:.0f} s wall, {cpu_seconds:.0f} s CPU", flush=True)
    state = {
        "model": {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()},
        "optimizer": None,
        "config": asdict(model.mask_rcnn.config),
        "thing_classes": list(model.thing_classes), "stuff_classes": list(model.stuff_classes),
        "data": DATA, "metrics": metrics, "log": log,
        "command": "python scripts/train_maskrcnn.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "train_seconds": round(train_seconds), "train_cpu_seconds": round(cpu_seconds),
        "threads": torch.get_num_threads(),
        "torch": str(torch.__version__),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, args.out)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
