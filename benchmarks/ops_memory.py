"""Peak memory (and time) of NMS and RoIAlign at Mask R-CNN's sizes: the blocked / chunked ops
of ``segcourse.ops`` against the full-matrix / padded versions they replaced (kept below).

    python benchmarks/ops_memory.py               # every case, old and new, a table
    python benchmarks/ops_memory.py --cap-gb 12   # let the old versions use up to 12 GB
    python benchmarks/ops_memory.py --case nms-10k --impl old   # one measurement, as JSON

What is measured: each case runs in a fresh Python process. After the inputs are built and the
op has run once on a tiny input (kernels loaded), the kernel's peak-RSS counter is reset
(``/proc/self/clear_refs``, Linux); the table shows the peak resident memory during the call
minus the resident memory just before it -- physical pages the call touched at its peak,
including its result (and, with backward, the input gradient). Each process runs under an
address-space limit of ``--cap-gb`` (default 8 GB, to spare a shared machine); an old version
that needs more shows "> cap" (the allocation was refused). Times are one call each; the
old/new ratio of the same run is meaningful on a busy machine, the absolute times are not.

The sizes (the paper's and torchvision's): RPN proposals are up to 2,000 per FPN level in
training (1,000 at test), 5 levels, NMS at IoU 0.7 per level; the box head's detections are
1,000 proposals x 80 classes, NMS at 0.5 per class; the box head pools 512 sampled RoIs per
image to 7 x 7 and the mask head to 14 x 14 from 256-channel maps (P2 of an 800 x 1333 image is
200 x 336) with sampling ratio 2; the mask targets are RoIAligns of the full-image object masks
(800 x 1333) to 28 x 28 with adaptive sampling, up to 128 positive RoIs per image.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from segcourse.ops import batched_nms, box_iou, nms, roi_align

IMAGE = (800, 1333)


# --- the replaced versions (segcourse/ops at commit 451fca0), verbatim up to names -----------

def old_nms(boxes, scores, iou_threshold):
    """One N x N suppression matrix, Cluster-NMS fixed point over it."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    order = scores.argsort(descending=True)
    suppresses = (box_iou(boxes[order], boxes[order]) > iou_threshold).triu(diagonal=1)
    keep = torch.ones(len(order), dtype=torch.bool, device=boxes.device)
    while True:
        new_keep = ~(suppresses & keep[:, None]).any(dim=0)
        if torch.equal(new_keep, keep):
            return order[keep]
        keep = new_keep


def old_batched_nms(boxes, scores, idxs, iou_threshold):
    """The coordinate-offset trick: one NMS over all groups."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    offsets = idxs.to(boxes) * (boxes.max() - boxes.min() + 1)
    return old_nms(boxes + offsets[:, None], scores, iou_threshold)


def old_roi_align(input, rois, output_size, spatial_scale=1.0, sampling_ratio=-1,
                  aligned=False):
    """Every RoI's sample bag padded to the largest grid, one embedding_bag for all."""
    N, C, H, W = input.shape
    PH = PW = output_size
    K = rois.shape[0]
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (rois[:, 1:] * spatial_scale - offset).unbind(dim=1)
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    bin_h, bin_w = roi_h / PH, roi_w / PW
    if sampling_ratio > 0:
        grid_h = torch.full((K,), sampling_ratio, dtype=torch.int64)
        grid_w = grid_h
    else:
        grid_h = torch.ceil(roi_h / PH).long().clamp(min=0)
        grid_w = torch.ceil(roi_w / PW).long().clamp(min=0)
    GH, GW = max(int(grid_h.max()), 1), max(int(grid_w.max()), 1)

    def axis(start, bin_size, grid, P, G, size):
        p = torch.arange(P, dtype=input.dtype)[None, :, None]
        g = torch.arange(G, dtype=input.dtype)[None, None, :]
        n = grid.clamp(min=1).to(input.dtype)[:, None, None]
        c = (start[:, None, None] + p * bin_size[:, None, None]
             + (g + 0.5) * bin_size[:, None, None] / n)
        used = (g < grid[:, None, None]) & (c >= -1.0) & (c <= size)
        c = c.clamp(0, size - 1)
        low = c.floor().long()
        high = (low + 1).clamp(max=size - 1)
        frac = c - low
        return torch.stack([low, high], -1), torch.stack([1 - frac, frac], -1) * used[..., None]

    iy, wy = axis(y1, bin_h, grid_h, PH, GH, H)
    ix, wx = axis(x1, bin_w, grid_w, PW, GW, W)
    b = rois[:, 0].long()[:, None, None, None, None, None, None]
    iy, wy = iy[:, :, None, :, :, None, None], wy[:, :, None, :, :, None, None]
    ix, wx = ix[:, None, :, None, None, :, :], wx[:, None, :, None, None, :, :]
    count = (grid_h * grid_w).clamp(min=1).to(input.dtype)[:, None, None, None, None, None, None]
    index = ((b * H + iy) * W + ix).reshape(K * PH * PW, -1)
    weight = (wy * wx / count).reshape(K * PH * PW, -1)
    table = input.permute(0, 2, 3, 1).reshape(N * H * W, C)
    out = F.embedding_bag(index, table, per_sample_weights=weight, mode="sum")
    return out.reshape(K, PH, PW, C).permute(0, 3, 1, 2)


# --- inputs -----------------------------------------------------------------------------------

def boxes_like_proposals(n, seed, min_side=16.0, max_side=800.0):
    """``n`` boxes in an 800 x 1333 image: half jittered around 40 objects (proposals crowd on
    objects), half anywhere; sides log-uniform in [min_side, max_side]; distinct scores."""
    g = torch.Generator().manual_seed(seed)
    H, W = IMAGE

    def log_uniform(*shape):
        u = torch.rand(*shape, generator=g)
        return torch.exp(math.log(min_side) + u * (math.log(max_side) - math.log(min_side)))

    objects = torch.stack([torch.rand(40, generator=g) * W, torch.rand(40, generator=g) * H,
                           log_uniform(40), log_uniform(40)], 1)
    near = objects[torch.randint(0, 40, (n - n // 2,), generator=g)]
    near = near * (1 + 0.15 * torch.randn(near.shape, generator=g))
    far = torch.stack([torch.rand(n // 2, generator=g) * W, torch.rand(n // 2, generator=g) * H,
                       log_uniform(n // 2), log_uniform(n // 2)], 1)
    cx, cy, w, h = torch.cat([near, far]).abs().unbind(1)
    cx, cy, w, h = cx.clamp(0, W), cy.clamp(0, H), w.clamp(min=2.0), h.clamp(min=2.0)
    boxes = torch.stack([(cx - w / 2).clamp(0, W - 1), (cy - h / 2).clamp(0, H - 1),
                         (cx + w / 2).clamp(1, W), (cy + h / 2).clamp(1, H)], 1)
    scores = torch.randperm(n, generator=g).float() / n
    return boxes, scores


def _rois(n, seed, scale, max_side):
    boxes, _ = boxes_like_proposals(n, seed, max_side=max_side)
    return torch.cat([torch.zeros(n, 1), boxes], 1), scale


def make_case(name):
    """(function of (impl, inputs), inputs, needs backward)."""
    torch.manual_seed(0)
    if name == "nms-10k":
        boxes, scores = boxes_like_proposals(10_000, 0)
        return (lambda f, b, s: f[0](b, s, 0.7)), (boxes, scores), False
    if name in ("levels-5x2000", "classes-80x1000"):
        groups, per = (5, 2000) if name.startswith("levels") else (80, 1000)
        boxes, scores = boxes_like_proposals(groups * per, 1)
        if groups == 80:  # one set of 1,000 proposals, class-specific regression moves it a bit
            boxes = boxes[:per].repeat(groups, 1) * (1 + 0.02 * torch.randn(groups * per, 4))
        idxs = torch.arange(groups).repeat_interleave(per)
        threshold = 0.7 if groups == 5 else 0.5
        return (lambda f, b, s, i: f[1](b, s, i, threshold)), (boxes, scores, idxs), False
    if name.startswith("p2-"):  # p2-7, p2-14, with -bwd
        size = int(name.split("-")[1])
        rois, scale = _rois(512, 2, 0.25, 800.0)
        x = torch.randn(1, 256, 200, 336)
        return (lambda f, x, r: f[2](x, r, size, scale, 2, True)), (x, rois), name.endswith("bwd")
    if name.startswith("masks-"):  # masks-400 (objects up to 400 px), masks-full (up to image)
        max_side = 400.0 if name == "masks-400" else 1333.0
        rois, _ = _rois(128, 3, 1.0, max_side)
        mask = (torch.rand(1, 1, *IMAGE) > 0.5).float()
        return (lambda f, m, r: f[2](m, r, 28, 1.0, 0, True)), (mask, rois), False
    raise ValueError(f"unknown case {name!r}")


CASES = ["nms-10k", "levels-5x2000", "classes-80x1000", "p2-7", "p2-7-bwd", "p2-14",
         "p2-14-bwd", "masks-400", "masks-full"]
IMPLS = {"old": (old_nms, old_batched_nms, old_roi_align), "new": (nms, batched_nms, roi_align)}


# --- one measurement in this process ----------------------------------------------------------

def _status_kb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def measure(case, impl, cap_gb):
    cap = int(cap_gb * 2 ** 30)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    fn, inputs, backward = make_case(case)
    funcs = IMPLS[impl]
    grad = None
    if backward:  # the input needs a gradient; the one fed to backward exists beforehand
        inputs = (inputs[0].requires_grad_(), *inputs[1:])
        size = int(case.split("-")[1])
        grad = torch.randn(len(inputs[1]), inputs[0].shape[1], size, size,
                           generator=torch.Generator().manual_seed(1))
    # warm-up on a tiny input (kernels loaded, thread pools started)
    boxes, scores = boxes_like_proposals(50, 9)
    funcs[0](boxes, scores, 0.7)
    funcs[1](boxes, scores, torch.zeros(50, dtype=torch.long), 0.7)
    funcs[2](torch.randn(1, 2, 16, 16, requires_grad=True), torch.tensor([[0, 1.0, 1, 9, 9]]), 4,
             1.0, 0, True).sum().backward()
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak-RSS counter
    before = _status_kb("VmRSS")
    start = time.perf_counter()
    try:
        out = fn(funcs, *inputs)
        if backward:
            out.backward(grad)
    except (RuntimeError, MemoryError) as error:
        if "alloc" not in str(error).lower() and not isinstance(error, MemoryError):
            raise
        refused = re.search(r"allocate (\d+) bytes", str(error))
        return {"case": case, "impl": impl, "peak_mb": None, "seconds": None,
                "refused_gb": int(refused.group(1)) / 2 ** 30 if refused else None}
    seconds = time.perf_counter() - start
    peak = _status_kb("VmHWM")
    if out.dim() == 1:  # kept indices: their number and a position-weighted checksum
        result = [len(out), int((out * torch.arange(1, len(out) + 1)).sum())]
    else:  # pooled values (and the input gradient): sums in float64
        result = [len(out), float(out.detach().double().sum())]
        result += [float(inputs[0].grad.double().sum())] if backward else []
    return {"case": case, "impl": impl, "peak_mb": (peak - before) / 1024, "seconds": seconds,
            "result": result}


def _fmt_mb(mb, cap_gb):
    if mb is None:
        return f"> {cap_gb:g} GB"
    return f"{mb / 1024:.2f} GB" if mb >= 1024 else f"{mb:.0f} MB"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", choices=CASES, help="measure one case here, print JSON")
    parser.add_argument("--impl", choices=list(IMPLS), default="new")
    parser.add_argument("--cap-gb", type=float, default=8.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.case:
        print(json.dumps(measure(args.case, args.impl, args.cap_gb)))
        return
    print(f"peak RSS increase during the call (fresh process per cell; cap {args.cap_gb:g} GB), "
          f"{args.threads} thread(s)")
    print(f"{'case':<17}{'old peak':>10}{'new peak':>10}{'old s':>8}{'new s':>8}"
          f"{'old/new':>8}  same result")
    notes = []
    for case in CASES:
        row = {}
        for impl in IMPLS:
            cmd = [sys.executable, __file__, "--case", case, "--impl", impl,
                   "--cap-gb", str(args.cap_gb), "--threads", str(args.threads)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:  # e.g. killed outright: report, go on
                row[impl] = {"peak_mb": None, "seconds": None, "error": done.stderr[-300:]}
                continue
            row[impl] = json.loads(done.stdout.strip().splitlines()[-1])
        old, new = row["old"], row["new"]
        ratio = (f"{old['seconds'] / new['seconds']:.1f}x"
                 if old.get("seconds") and new.get("seconds") else "-")
        same = "-" if old.get("result") is None else str(
            all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(old["result"], new["result"])))
        times = [f"{r['seconds']:.2f}" if r.get("seconds") else "-" for r in (old, new)]
        print(f"{case:<17}{_fmt_mb(old['peak_mb'], args.cap_gb):>10}"
              f"{_fmt_mb(new['peak_mb'], args.cap_gb):>10}{times[0]:>8}{times[1]:>8}"
              f"{ratio:>8}  {same}")
        notes += [f"{case}, {impl}: refused one allocation of {r['refused_gb']:.1f} GB"
                  for impl, r in row.items() if r.get("refused_gb")]
        notes += [f"{case}, {impl}: failed: {r['error']}" for impl, r in row.items()
                  if r.get("error")]
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
