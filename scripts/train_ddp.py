"""Train a model on the shapes data with DistributedDataParallel: any registered semantic model,
or the detection models (Mask R-CNN, Panoptic FPN) -- the same ``fit`` trains them all.

    torchrun --nproc_per_node=2 scripts/train_ddp.py --model unet --epochs 5      # 2 GPUs (or CPUs)
    python scripts/train_ddp.py --model unet --epochs 5                           # one process
    torchrun --nproc_per_node=2 scripts/train_ddp.py --model panoptic_fpn --lr 2e-3

Each process trains on its own shard of every epoch; gradients are averaged across processes
after every backward pass, so all ranks hold the same weights at every step. On GPUs the
processes talk over NCCL, on CPUs over gloo (see ``segcourse.train.setup_distributed``).
"""

from __future__ import annotations

import argparse
from functools import partial

import torch.distributed as dist

from segcourse import models
from segcourse.data import InstanceTargets, ShapesDataset
from segcourse.evaluate import evaluate_instances, evaluate_panoptic
from segcourse.models.mask_rcnn import mask_rcnn
from segcourse.models.panoptic_fpn import panoptic_fpn
from segcourse.train import evaluate, fit, get_device, seed_everything, setup_distributed

DETECTION = ("mask_rcnn", "panoptic_fpn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="unet",
                        choices=models.list_models(models.CLASSIFIERS) + list(DETECTION))
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
    options = dict(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                   device=get_device(), checkpoint=args.checkpoint)
    if args.model in DETECTION:  # targets are dicts; warm-up, as detection training needs
        train_set, val_set = InstanceTargets(train_set), InstanceTargets(val_set)
        things, stuff = train_set.thing_classes, train_set.stuff_classes
        if args.model == "panoptic_fpn":
            model, evaluator = panoptic_fpn(things, stuff), evaluate_panoptic
        else:
            model, evaluator = mask_rcnn(len(things) + 1), evaluate_instances
        steps = args.epochs * (len(train_set) // (args.batch_size * world))
        options.update(scheduler="warmup_cosine", warmup_steps=max(min(100, steps // 10), 1))
    else:
        model = models.build(args.model, num_classes=train_set.num_classes)
        evaluator = partial(evaluate, num_classes=train_set.num_classes)
    fit(model, train_set, val_set, evaluator=evaluator, **options)
    scores = evaluator(model, val_set)  # every process takes part; all get the same numbers
    if rank == 0:
        shown = {k: round(v, 3) for k, v in scores.items() if isinstance(v, float)}
        print(f"{world} process(es): validation {shown}")
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
