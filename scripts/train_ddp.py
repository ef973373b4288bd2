"""Train a registered model on the shapes data with DistributedDataParallel.

    torchrun --nproc_per_node=2 scripts/train_ddp.py --model unet --epochs 5      # 2 GPUs (or CPUs)
    python scripts/train_ddp.py --model unet --epochs 5                           # one process

Each process trains on its own shard of every epoch; gradients are averaged across processes
after every backward pass, so all ranks hold the same weights at every step. On GPUs the
processes talk over NCCL, on CPUs over gloo (see ``segcourse.train.setup_distributed``).
"""

from __future__ import annotations

import argparse

import torch.distributed as dist

from segcourse import models
from segcourse.data import ShapesDataset
from segcourse.train import evaluate, fit, get_device, seed_everything, setup_distributed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="unet", choices=models.list_models())
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16, help="per process")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--checkpoint", default=None, help="saved by rank 0 at the end")
    args = parser.parse_args()

    rank, world = setup_distributed()
    seed_everything(0)  # the same initial weights everywhere (DDP also broadcasts rank 0's)
    train_set = ShapesDataset(args.samples, size=args.size, seed=0)
    val_set = ShapesDataset(max(args.samples // 5, 1), size=args.size, seed=1)
    model = models.build(args.model, num_classes=train_set.num_classes)
    fit(model, train_set, val_set, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
        device=get_device(), checkpoint=args.checkpoint, num_classes=train_set.num_classes)
    scores = evaluate(model, val_set, train_set.num_classes)
    if rank == 0:
        print(f"{world} process(es): validation mIoU {scores['miou']:.3f}")
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
