"""int8 post-training quantisation on the shapes data: mIoU before and after, and the speed-up.

    python benchmarks/quantize.py                       # fcn8s unet deeplabv3plus segformer
    python benchmarks/quantize.py --models unet --epochs 3 --calibration 32

One run, per model (registry default configuration, the shapes data's classes): train briefly
on the shapes training set (``--train`` images at ``--train-size``, ``--epochs``, the same
schedule and seed for every model), export with ``segcourse.export.export_onnx``, quantise with
``segcourse.quantize.quantize_onnx`` (its defaults: QDQ, per-channel int8 weights, uint8
activations, MinMax) calibrated on the first ``--calibration`` training images, and report on
the held-out shapes set (another seed): the mIoU of the PyTorch model, of the float ONNX graph
(equal to PyTorch's: the same function, scored the same way) and of the int8 graph, the
difference int8 - float, then the median onnxruntime CPU latency of one ``--size`` image, float
vs int8, the speed-up, and the two files' sizes.

The latencies are of onnxruntime on this machine's CPU with as many threads as PyTorch uses
(``--threads`` sets them); int8 gains depend on the CPU's integer instructions (AVX-512 VNNI,
AVX2) -- run it on an idle machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segcourse import models  # noqa: E402
from segcourse.data import ShapesDataset  # noqa: E402
from segcourse.evaluate import evaluate  # noqa: E402
from segcourse.export import export_onnx, inference_session  # noqa: E402
from segcourse.profiling import median_ms  # noqa: E402
from segcourse.quantize import evaluate_onnx, file_mb, quantize_onnx  # noqa: E402
from segcourse.train import fit  # noqa: E402

DEFAULT_MODELS = ["fcn8s", "unet", "deeplabv3plus", "segformer"]


def latency_ms(path, size: int, repeats: int) -> float:
    """Median onnxruntime latency (ms) of the graph at ``path`` on one ``size`` x ``size``
    image."""
    session = inference_session(path)
    feed = {session.get_inputs()[0].name: torch.rand(1, 3, size, size).numpy()}
    return median_ms(session.run, None, feed, repeats=repeats)


def measure(name: str, train: ShapesDataset, val: ShapesDataset, args, folder: Path) -> dict:
    torch.manual_seed(args.seed)
    model = models.build(name, num_classes=train.num_classes)
    start = time.perf_counter()
    fit(model, train, epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
        lr=args.lr, progress=False, seed=args.seed)
    train_s = time.perf_counter() - start
    model.eval()
    float_path = export_onnx(model, folder / f"{name}.onnx",
                             torch.randn(1, 3, args.train_size, args.train_size))
    calibration = train.tensors()[0][:args.calibration]
    int8_path = quantize_onnx(float_path, folder / f"{name}_int8.onnx", calibration)
    row = {"model": name, "train_s": train_s,
           "miou_torch": evaluate(model, val)["miou"],
           "miou_float": evaluate_onnx(float_path, val)["miou"],
           "miou_int8": evaluate_onnx(int8_path, val)["miou"],
           "float_ms": latency_ms(float_path, args.size, args.repeats),
           "int8_ms": latency_ms(int8_path, args.size, args.repeats),
           "float_mb": file_mb(float_path), "int8_mb": file_mb(int8_path)}
    row["diff"] = row["miou_int8"] - row["miou_float"]
    row["speedup"] = row["float_ms"] / row["int8_ms"]
    return row


def format_rows(rows: list[dict]) -> str:
    header = (f"{'model':<14} {'mIoU torch':>10} {'ONNX fp32':>9} {'int8':>7} {'diff':>7} "
              f"{'fp32 ms':>8} {'int8 ms':>8} {'speed-up':>8} {'fp32 MB':>8} {'int8 MB':>8}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['model']:<14} {r['miou_torch']:>10.4f} {r['miou_float']:>9.4f} "
                     f"{r['miou_int8']:>7.4f} {r['diff']:>+7.4f} {r['float_ms']:>8.1f} "
                     f"{r['int8_ms']:>8.1f} {r['speedup']:>7.2f}x {r['float_mb']:>8.2f} "
                     f"{r['int8_mb']:>8.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    choices = models.list_models(models.CLASSIFIERS)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=choices)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--max-steps", type=int, default=None, help="stop training earlier")
    parser.add_argument("--train", type=int, default=512, help="training images")
    parser.add_argument("--val", type=int, default=256, help="held-out images")
    parser.add_argument("--train-size", type=int, default=64, help="training image side")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--calibration", type=int, default=64, help="calibration images")
    parser.add_argument("--size", type=int, default=256, help="image side for the latency")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not 1 <= args.calibration <= args.train:
        parser.error(f"--calibration must be in 1..--train ({args.train}), got "
                     f"{args.calibration}")
    train = ShapesDataset(args.train, size=args.train_size, seed=args.seed)
    val = ShapesDataset(args.val, size=args.train_size, seed=args.seed + 1)
    print(f"shapes: {args.train} training / {args.val} held-out images at {args.train_size}^2, "
          f"{train.num_classes} classes; {args.epochs} epoch(s); calibration on "
          f"{args.calibration} training images; latency: one {args.size}^2 image, onnxruntime "
          f"CPU, {torch.get_num_threads()} thread(s)", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rows.append(measure(name, train, val, args, Path(tmp)))
            line = format_rows(rows[-1:]).splitlines()[-1]
            print(f"{line}   (trained in {rows[-1]['train_s']:.0f} s)", flush=True)
    print()
    print(format_rows(rows))
    return rows


if __name__ == "__main__":
    main()
