"""Execute every chapter's ``FULL = True`` path offline, on the CPU, in minutes: a crash test.

    python tools/full_dry_run.py notebooks/*.ipynb          # or: make full-dry-run

``FULL = True`` is the students' Colab path: download Oxford-IIIT Pet, load ImageNet or HF
weights, train paper-size models for many epochs on a GPU. None of that can run here (no
network, no GPU), and the code would otherwise only meet an interpreter on a student's Colab.
This tool runs each chapter top to bottom with ``FULL = True`` after a preamble cell that

- points ``data/pets`` at a fake Oxford-IIIT Pet in the published on-disk layout (tiny random
  photos with a blob-shaped pet, real split sizes) so nothing is downloaded;
- makes every ``OxfordPets`` split look 16 images long (indices wrap around), so loops over the
  data end quickly, and caps ``fit`` at one epoch and at most 20 steps (the recipes that stand
  in for a missing checkpoint, chapters 7 and 10, ask for thousands);
- answers ``torch.hub.load_state_dict_from_url`` with random tensors in the exact torchvision
  layout of the requested checkpoint (VGG16, VGG16-BN, ResNet-50/101),
  ``SegformerForImageClassification.from_pretrained`` with a randomly initialised MiT-B0, and
  ``EomtForUniversalSegmentation.from_pretrained`` with a small random EoMT that has the COCO
  checkpoint's 133 labels and 16 x 16 patches (:func:`fake_eomt_config`);
- builds every paper-size SAM (``sam("vit_b")``...) as a small stand-in with the paper's input
  and patch geometry (:func:`fake_sam_config`) and answers the official SAM checkpoint URLs
  with its random weights under the authors' names (``sam.to_official_state_dict``), so the
  converter and the loading code run as on Colab.

What it proves: every FULL cell executes -- downloads are wired to the reader, checkpoints load
into the models with the expected names and shapes, shapes line up at the real-data sizes, the
figures draw. What it does not prove: accuracy. The ``assert mIoU > ...`` lines of FULL runs
need real training, so an ``AssertionError`` is reported but is not a failure; any other
exception is, and so is a cell that runs past ``--timeout`` (the run goes on with the next
chapter). Exit status 1 if any chapter had one.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import numpy as np
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError
from PIL import Image

PETS_SPLITS = {"trainval": 3680, "test": 3669}


def write_fake_pets(root: Path, splits: dict[str, int] = PETS_SPLITS, distinct: int = 24,
                    seed: int = 0) -> Path:
    """A fake Oxford-IIIT Pet under ``root`` in the published layout (see ``segcourse.data.pets``).

    Each split lists its real number of lines; ``distinct`` small photos (random sizes around
    48 x 40, one a greyscale JPEG like a few real files) are written once and listed
    repeatedly under their own names, so the listing is realistic and writing takes a second.
    """
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "trimaps").mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(distinct):
        name = f"{'Abyssinian' if i % 2 else 'beagle'}_{i + 1}"
        h, w = int(rng.integers(36, 56)), int(rng.integers(36, 56))
        yy, xx = np.mgrid[:h, :w]
        cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
        r = np.hypot((yy - cy) / (0.25 * h), (xx - cx) / (0.25 * w))
        trimap = np.where(r < 0.85, 1, np.where(r < 1.1, 3, 2)).astype(np.uint8)   # pet/border/bg
        photo = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        photo[trimap == 1] = (photo[trimap == 1] // 4 + np.array([180, 120, 40])).astype(np.uint8)
        mode = "L" if i == 0 else "RGB"
        Image.fromarray(photo).convert(mode).save(root / "images" / f"{name}.jpg")
        Image.fromarray(trimap).save(root / "annotations" / "trimaps" / f"{name}.png")
        names.append(name)
    for split, count in splits.items():
        lines = [f"{names[k % distinct]} {1 + k % 37} {1 + k % 2} 1" for k in range(count)]
        (root / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def fake_torchvision_state(url: str) -> dict:
    """Random weights with the key names and shapes of the torchvision checkpoint at ``url``."""
    import torch

    from segcourse.models.fcn import VGG16_BN_URL, VGG16_URL
    from segcourse.models.resnet import IMAGENET_URLS, resnet

    if url in (VGG16_URL, VGG16_BN_URL):
        batch_norm, state, index, channels = url == VGG16_BN_URL, {}, 0, 3
        for width in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                      512, 512, 512, "M"):
            if width == "M":
                index += 1
                continue
            state[f"features.{index}.weight"] = torch.randn(width, channels, 3, 3) * 0.01
            state[f"features.{index}.bias"] = torch.zeros(width)
            if batch_norm:
                index += 1
                state.update({f"features.{index}.weight": torch.ones(width),
                              f"features.{index}.bias": torch.zeros(width),
                              f"features.{index}.running_mean": torch.zeros(width),
                              f"features.{index}.running_var": torch.ones(width),
                              f"features.{index}.num_batches_tracked": torch.tensor(0)})
            index += 2                                   # the conv (or BN) and its ReLU
            channels = width
        for i, (out, inp) in zip((0, 3, 6), ((4096, 512 * 7 * 7), (4096, 4096), (1000, 4096))):
            state[f"classifier.{i}.weight"] = torch.randn(out, inp) * 0.01
            state[f"classifier.{i}.bias"] = torch.zeros(out)
        return state
    for depth, resnet_url in IMAGENET_URLS.items():
        if url == resnet_url:
            state = resnet(depth=depth).state_dict()    # torchvision names by construction
            features = 512 if depth < 50 else 2048
            state.update({"fc.weight": torch.randn(1000, features) * 0.01,
                          "fc.bias": torch.zeros(1000)})
            return state
    from segcourse.models.sam import OFFICIAL_CHECKPOINTS, to_official_state_dict

    for variant, sam_url in OFFICIAL_CHECKPOINTS.items():
        if url == sam_url:  # the authors' names, for the small stand-in of fake_sam_config
            return to_official_state_dict(stand_in_sam(variant).state_dict())
    raise ValueError(f"dry run: no fake checkpoint for {url}")


def fake_sam_config(variant: str):
    """A small stand-in for a paper SAM (a ViT-B at 1024 px takes ~15 s per image on a CPU):
    the paper's 1024-px input, 16-px patches (a 64 x 64 grid) and 14 x 14 windows, with
    2 blocks of width 64, one of them global, and the paper's 256-wide prompt decoder."""
    import dataclasses

    from segcourse.models.sam import sam_config

    paper = sam_config(variant)
    encoder = dataclasses.replace(paper.encoder, hidden_size=64, num_hidden_layers=2,
                                  num_attention_heads=2, global_attn_indexes=(1,))
    return dataclasses.replace(paper, encoder=encoder)


def stand_in_sam(variant: str = "vit_b"):
    """``sam(variant)`` in a dry run: "tiny" as it is, a paper size as :func:`fake_sam_config`."""
    from segcourse.models.sam import Sam, sam_config

    return Sam(sam_config(variant) if variant == "tiny" else fake_sam_config(variant))


def fake_eomt_config():
    """A small random EoMT with the COCO-panoptic checkpoint's labels and patch size (a
    ViT-L at 640 x 640 would take minutes per image on a CPU): 133 classes, cat and dog among
    them, 16 x 16 patches, 4 registers, 4 query blocks."""
    import transformers

    names = ["person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck",
             "boat", "traffic light", "fire hydrant", "stop sign", "parking meter", "bench",
             "bird", "cat", "dog"]
    id2label = {i: names[i] if i < len(names) else f"class {i}" for i in range(133)}
    return transformers.EomtConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                                   intermediate_size=256, num_blocks=2, num_queries=20,
                                   image_size=640, patch_size=16, id2label=id2label,
                                   label2id={v: k for k, v in id2label.items()})


PREAMBLE = '''
# --- full_dry_run preamble: offline fakes and caps (not part of the chapter) ---
import functools, sys
import torch
sys.path.insert(0, {tools!r})
import full_dry_run
import segcourse.data, segcourse.data.pets, segcourse.train, segcourse.profiling

_LENGTH = 16
segcourse.data.pets.OxfordPets.__len__ = lambda self: min(len(self.names), _LENGTH)
_getitem = segcourse.data.pets.OxfordPets.__getitem__
segcourse.data.pets.OxfordPets.__getitem__ = lambda self, i: _getitem(self, i % len(self))

_fit = segcourse.train.fit
@functools.wraps(_fit)
def _one_epoch_fit(*args, **kwargs):
    kwargs["epochs"] = 1
    if kwargs.get("max_steps"):  # a recipe of thousands of steps: a few are enough here
        kwargs["max_steps"] = min(kwargs["max_steps"], 20)
        if kwargs.get("warmup_steps"):
            kwargs["warmup_steps"] = min(kwargs["warmup_steps"], 2)
    return _fit(*args, **kwargs)
segcourse.train.fit = segcourse.profiling.fit = _one_epoch_fit

import segcourse.models.sam
segcourse.models.sam.sam = full_dry_run.stand_in_sam   # paper SAMs: a small stand-in
torch.hub.load_state_dict_from_url = (
    lambda url, *args, **kwargs: full_dry_run.fake_torchvision_state(url))
try:
    import transformers
    transformers.SegformerForImageClassification.from_pretrained = classmethod(
        lambda cls, name, *args, **kwargs: cls(transformers.SegformerConfig()))   # MiT-B0 shape
    transformers.EomtForUniversalSegmentation.from_pretrained = classmethod(
        lambda cls, name, *args, **kwargs: cls(full_dry_run.fake_eomt_config()))
except ImportError:
    pass
'''


def dry_run(path: Path, workdir: Path, timeout: int) -> dict:
    nb = nbformat.read(path, as_version=4)
    switched = 0
    for cell in nb.cells:
        if cell.cell_type == "code" and "FULL = False" in cell.source:
            cell.source = cell.source.replace("FULL = False", "FULL = True", 1)
            switched += 1
    if switched != 1:
        raise ValueError(f"{path}: expected one 'FULL = False' line, found {switched}")
    preamble = PREAMBLE.format(tools=str(Path(__file__).resolve().parent))
    nb.cells.insert(0, nbformat.v4.new_code_cell(preamble))
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(workdir)}})
    start = time.perf_counter()
    timed_out = None
    try:
        client.execute()
    except CellTimeoutError:       # a cell too slow for a CPU: report it, go on with the next
        timed_out = next((i for i, c in enumerate(nb.cells) for out in c.get("outputs", [])
                          if out.get("ename") == "KeyboardInterrupt"), len(nb.cells) - 1)
    seconds = time.perf_counter() - start
    asserts, errors = [], []
    for index, cell in enumerate(nb.cells[1:], start=1):
        for out in cell.get("outputs", []):
            if out.output_type == "error" and index != timed_out:
                first_line = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
                entry = (index, first_line, f"{out.ename}: {out.evalue}"[:300])
                (asserts if out.ename == "AssertionError" else errors).append(entry)
    ran = sum(1 for c in nb.cells[1:] if c.cell_type == "code" and c.get("execution_count"))
    if timed_out is not None:
        cell = nb.cells[timed_out]
        errors.append((timed_out,
                       cell.source.strip().splitlines()[0] if cell.source.strip() else "",
                       f"timed out after {timeout} s: the dry run could not finish this chapter"))
    return {"cells": ran, "asserts": asserts, "errors": errors, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per cell")
    args = parser.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory(prefix="full_dry_run_") as tmp:
        workdir = Path(tmp)
        write_fake_pets(workdir / "data" / "pets")
        for path in args.notebooks:
            print(f"dry-running {path} with FULL = True ...", flush=True)
            r = results[path.name] = dry_run(path, workdir, args.timeout)
            print(f"  {r['cells']} cells, {len(r['asserts'])} assertion errors, "
                  f"{len(r['errors'])} other errors, {r['seconds']:.0f} s", flush=True)
    width = max(len(name) for name in results)
    print(f"\n{'notebook':<{width}}  cells  asserts (expected)  errors  seconds")
    for name, r in results.items():
        print(f"{name:<{width}}  {r['cells']:>5}  {len(r['asserts']):>18}  {len(r['errors']):>6}"
              f"  {r['seconds']:7.1f}")
    for name, r in results.items():
        for index, first_line, message in r["asserts"]:
            print(f"  assert  {name} cell {index} ({first_line[:50]}): {message[:120]}")
        for index, first_line, message in r["errors"]:
            print(f"  ERROR   {name} cell {index} ({first_line[:50]}): {message}")
    return 1 if any(r["errors"] for r in results.values()) else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
