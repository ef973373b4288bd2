"""Train chapter 10's mask-classification models (Mask2Former, EoMT) on the shapes data, on a CPU.

    python scripts/train_mask_classification.py mask2former --threads 2
    python scripts/train_mask_classification.py eomt --threads 2
    # write checkpoints/mask2former_shapes.pt, checkpoints/eomt_shapes.pt

This is the command that produced the checkpoints shipped with the course: the CPU-sized model
(``segcourse.models.build(name, 5, thing_classes=(2, 3, 4))``) trained from scratch by
``segcourse.train.fit`` on freshly generated 64 x 64 shapes scenes (3 thing classes, up to 5
objects, sky and ground as stuff; every scene seen once), with AdamW, a linear warm-up, then
cosine decay to 0, gradients clipped. One model, one training run, panoptic targets
(``segcourse.data.InstanceTargets``: every object a mask, every stuff class one mask); it is
then scored on held-out scenes (another seed) for all three tasks from the same outputs:
semantic mIoU (``segcourse.evaluate.evaluate``), mask AP@0.5 and PQ
(``segcourse.evaluate.evaluate_panoptic``). The scores, the training log, the command and its
CPU time are stored in the checkpoint. Held-out results of the shipped files (200 scenes):

    model         mIoU   mask AP@0.5   PQ     PQ things  PQ stuff  CPU time (1 thread)
    Mask2Former   0.869  0.876         0.846  0.755      0.982     11 min
    EoMT          0.815  0.845         0.813  0.699      0.983     14 min

(chapter 7's Panoptic FPN, same scenes: mask AP@0.5 0.837, PQ 0.806). At 3,000 iterations
Mask2Former had PQ 0.767: set prediction keeps improving long after per-pixel models settle.

Weights are stored in float16 so the file stays small; they load into a float32 model with
``segcourse.train.load_checkpoint``. A different CPU or thread count changes the floating-point
summation order, so a rerun matches the stored numbers closely, not bit for bit.
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

from segcourse import models  # noqa: E402
from segcourse.checkpoints import save_checkpoint  # noqa: E402
from segcourse.data import InstanceTargets, ShapesDataset  # noqa: E402
from segcourse.evaluate import evaluate, evaluate_panoptic  # noqa: E402
from segcourse.train import fit, seed_everything  # noqa: E402

DATA = dict(size=64, num_things=3, max_instances=5)
CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
# per model: iterations, batch size, peak learning rate
RECIPES = {"mask2former": (8000, 8, 1e-3), "eomt": (8000, 8, 1e-3)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(RECIPES))
    parser.add_argument("--iterations", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: PyTorch's default)")
    parser.add_argument("--val-samples", type=int, default=200)
    parser.add_argument("--out", help="default: checkpoints/<model>_shapes.pt")
    args = parser.parse_args(argv)
    iterations, batch_size, lr = RECIPES[args.model]
    iterations = args.iterations or iterations
    batch_size = args.batch_size or batch_size
    lr = args.lr or lr
    out = Path(args.out) if args.out else CHECKPOINTS / f"{args.model}_shapes.pt"
    if args.threads:
        torch.set_num_threads(args.threads)

    seed_everything(0)
    scenes = ShapesDataset(iterations * batch_size, seed=0, **DATA)
    train = InstanceTargets(scenes)          # every iteration sees new scenes
    held_out = ShapesDataset(args.val_samples, seed=1, **DATA)
    # (EoMT anneals its masked attention away over the run: fit tells it the length)
    model = models.build(args.model, len(scenes.classes), thing_classes=scenes.thing_classes)
    start, cpu_start = time.perf_counter(), time.process_time()
    history = fit(model, train, max_steps=iterations, batch_size=batch_size, lr=lr,
                  weight_decay=0.05, scheduler="warmup_cosine",
                  warmup_steps=min(100, iterations // 10), grad_clip=1.0, log_every=50)
    train_seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start

    semantic = evaluate(model, held_out, len(scenes.classes))
    metrics = {"miou": semantic["miou"],
               **evaluate_panoptic(model, InstanceTargets(held_out))}
    metrics = {k: round(float(v), 4) for k, v in metrics.items()}
    print("held-out:", metrics, f"training: {train_seconds:.0f} s wall, {cpu_seconds:.0f} s CPU",
          flush=True)
    extras = {
        "model_name": args.model,
        "config": asdict(model.config),
        "thing_classes": list(model.thing_classes),
        "data": DATA, "metrics": metrics, "log": history["log"],
        "recipe": {"iterations": iterations, "batch_size": batch_size, "lr": lr,
                   "weight_decay": 0.05, "warmup_steps": min(100, iterations // 10),
                   "grad_clip": 1.0},
        "command": "python scripts/train_mask_classification.py "
                   + " ".join(argv if argv is not None else sys.argv[1:]),
        "train_seconds": round(train_seconds), "train_cpu_seconds": round(cpu_seconds),
        "threads": torch.get_num_threads(),
        "torch": str(torch.__version__),
    }
    # float16 weights keep the file small; written atomically, with a checksum
    save_checkpoint(out, copy.deepcopy(model).half(), **extras)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
