"""Train the chapter 7 Panoptic FPN (Mask R-CNN + semantic stuff head) on the shapes data, on a CPU.

    python scripts/train_maskrcnn.py --threads 1    # writes checkpoints/panoptic_fpn_shapes.pt

This is the command that produced the checkpoint shipped with the course: the CPU-sized model
of ``segcourse.models.panoptic_fpn`` trained from scratch by ``segcourse.train.fit`` for 1,000
iterations of 8 freshly generated 64 x 64 shapes scenes (3 thing classes, up to 5 objects, sky
and ground as stuff; 8,000 scenes, each seen once), with AdamW (lr 2e-3, weight decay 1e-4), a
linear warm-up over 100 iterations, then cosine decay to 0. It is then scored by
``segcourse.evaluate.evaluate_panoptic`` on 200 held-out scenes (another seed); the mask AP@0.5,
PQ (with SQ, RQ, PQ of things and of stuff) are stored in the checkpoint with the training log,
the command and its CPU time. Held-out results of the shipped file: mask AP@0.5 0.837, PQ 0.806
(SQ 0.902, RQ 0.889), PQ things 0.700, PQ stuff 0.965. PyTorch's default threads
(``--threads 0``) are faster on a multi-core CPU; on a GPU, ``fit`` trains in mixed precision.

Weights are stored in float16 so the file stays small (about 4 MB); they load into a float32
model with ``segcourse.train.load_checkpoint``. A different CPU or thread count changes the
floating-point summation order, so a rerun matches the stored numbers closely, not bit for bit.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

# run from a checkout, installed or not
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segcourse.checkpoints import save_checkpoint  # noqa: E402
from segcourse.data import InstanceTargets, ShapesDataset  # noqa: E402
from segcourse.evaluate import evaluate_panoptic  # noqa: E402
from segcourse.models.panoptic_fpn import panoptic_fpn  # noqa: E402
from segcourse.train import fit, seed_everything  # noqa: E402

DATA = dict(size=64, num_things=3, max_instances=5)
CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "panoptic_fpn_shapes.pt"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: PyTorch's default)")
    parser.add_argument("--val-samples", type=int, default=200)
    parser.add_argument("--out", default=str(CHECKPOINT))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    seed_everything(0)
    # every iteration sees new scenes: the data set is generated, not reused
    train = InstanceTargets(ShapesDataset(args.iterations * args.batch_size, seed=0, **DATA))
    val = InstanceTargets(ShapesDataset(args.val_samples, seed=1, **DATA))
    model = panoptic_fpn(train.thing_classes, train.stuff_classes)
    start, cpu_start = time.perf_counter(), time.process_time()
    history = fit(model, train, max_steps=args.iterations, batch_size=args.batch_size,
                  lr=args.lr, weight_decay=1e-4, scheduler="warmup_cosine",
                  warmup_steps=min(100, args.iterations // 10), log_every=50)
    train_seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start

    metrics = {k: round(v, 4) for k, v in evaluate_panoptic(model, val).items()}
    print("held-out:", metrics, f"training: {train_seconds:.0f} s wall, {cpu_seconds:.0f} s CPU",
          flush=True)
    extras = {
        "config": asdict(model.config),
        "thing_classes": list(model.thing_classes), "stuff_classes": list(model.stuff_classes),
        "data": DATA, "metrics": metrics, "log": history["log"],
        "command": "python scripts/train_maskrcnn.py "
                   + " ".join(argv if argv is not None else sys.argv[1:]),
        "train_seconds": round(train_seconds), "train_cpu_seconds": round(cpu_seconds),
        "threads": torch.get_num_threads(),
        "torch": str(torch.__version__),
    }
    # float16 weights keep the file small; written atomically, with a checksum
    save_checkpoint(args.out, copy.deepcopy(model).half(), **extras)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
