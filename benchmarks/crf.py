"""Exact dense CRF vs the local (ConvCRF-style) version: time, speed-up and label agreement.

    python benchmarks/crf.py                 # 128 x 128, 4 images
    python benchmarks/crf.py --size 64 --images 8

The inputs imitate a coarse network: the one-hot ground truth of a shapes image is average-pooled
by 8 (so boundaries are blocky and blurred), upsampled back, sharpened into probabilities and
perturbed with noise. For each image both CRFs run with the default parameters and 5 iterations.
Agreement is the fraction of pixels whose arg-max label is the same as the exact CRF's; mIoU is
against the ground truth (raw = before any CRF).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from segcourse.crf import conv_crf, dense_crf
from segcourse.data import ShapesDataset
from segcourse.metrics import mean_iou


def coarse_probs(mask: torch.Tensor, num_classes: int, factor: int = 8,
                 seed: int = 0) -> torch.Tensor:
    """Blurry, blocky, noisy class probabilities ``[K, H, W]`` around a label map ``[H, W]``."""
    H, W = mask.shape
    one_hot = F.one_hot(mask, num_classes).permute(2, 0, 1).float()[None]
    blocky = F.interpolate(F.avg_pool2d(one_hot, factor), size=(H, W), mode="bilinear",
                           align_corners=False)
    noise = torch.randn(blocky.shape, generator=torch.Generator().manual_seed(seed))
    return (4 * blocky + 0.5 * noise)[0].softmax(0)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--kernel-sizes", type=int, nargs="+", default=[7, 11, 21])
    args = parser.parse_args()

    data = ShapesDataset(num_samples=args.images, size=args.size, seed=3)
    images, masks = data.tensors()
    probs = [coarse_probs(m, data.num_classes, seed=i) for i, m in enumerate(masks)]
    rgb = [image * 255 for image in images]

    exact, exact_seconds = [], 0.0
    for image, p in zip(rgb, probs):
        q, seconds = timed(dense_crf, image, p)
        exact.append(q.argmax(0))
        exact_seconds += seconds
    raw = torch.stack([p.argmax(0) for p in probs])
    exact = torch.stack(exact)

    print(f"{args.images} shapes images of {args.size} x {args.size}, {data.num_classes} classes, "
          f"5 mean-field iterations, {torch.get_num_threads()} threads")
    print(f"{'method':<22} {'s / image':>10} {'speed-up':>9} {'agreement':>10} {'mIoU':>7}")
    print(f"{'raw (no CRF)':<22} {'':>10} {'':>9} {float((raw == exact).float().mean()):>10.2%} "
          f"{mean_iou(raw, masks, data.num_classes):>7.3f}")
    per_image = exact_seconds / args.images
    print(f"{'exact dense_crf':<22} {per_image:>10.3f} {1.0:>8.1f}x {1.0:>10.2%} "
          f"{mean_iou(exact, masks, data.num_classes):>7.3f}")
    for k in args.kernel_sizes:
        local, local_seconds = [], 0.0
        for image, p in zip(rgb, probs):
            q, seconds = timed(conv_crf, image, p, kernel_size=k)
            local.append(q.argmax(0))
            local_seconds += seconds
        local = torch.stack(local)
        print(f"{f'conv_crf k={k}':<22} {local_seconds / args.images:>10.3f} "
              f"{exact_seconds / local_seconds:>8.1f}x "
              f"{float((local == exact).float().mean()):>10.2%} "
              f"{mean_iou(local, masks, data.num_classes):>7.3f}")


if __name__ == "__main__":
    main()
