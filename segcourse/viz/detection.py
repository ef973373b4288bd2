"""Figures of instance and panoptic segmentation (chapter 7): boxes, masks, RoI sampling, fusion.

Detections are the dicts of ``segcourse.models.mask_rcnn.MaskRCNN`` / ``PanopticFPN`` (``boxes``,
``scores``, ``masks``; Panoptic FPN adds ``categories``, ``semantic_logits`` and ``panoptic``).
Pixel (i, j) covers [j, j+1) x [i, i+1) in box coordinates, and ``imshow`` centres it at (j, i),
so a box is drawn shifted by -0.5.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import torch

from .masks import colorize, legend_patches, no_ticks, to_numpy_image

__all__ = ["draw_boxes", "paint_instances", "paint_panoptic", "counting_figure",
           "roi_sampling_figure", "shift_response_figure", "pipeline_figure",
           "detections_figure", "panoptic_figure", "pq_example_figure"]

VOID = -1  # panoptic category of unlabelled pixels (segcourse.models.panoptic_fpn.VOID)


def _label_panels(axes, panels, image, size: int = 10) -> None:
    """Draw ``(picture, title)`` panels; a masked id map is drawn in tab10 on the darkened image."""
    for ax, (picture, title) in zip(axes, panels):
        if isinstance(picture, np.ma.MaskedArray):
            ax.imshow(to_numpy_image(image) * 0.35)
            ax.imshow(picture, cmap="tab10", vmin=1, vmax=10, interpolation="nearest")
        else:
            ax.imshow(picture, interpolation="nearest")
        ax.set_title(title, fontsize=size)
    no_ticks(axes)


def _ids(instance) -> np.ma.MaskedArray:
    """An instance-id map with 0 (no object) masked out."""
    return np.ma.masked_equal(np.asarray(instance), 0)


def _check_detections(out: dict, keys) -> None:
    missing = [k for k in keys if k not in out]
    if missing:
        raise ValueError(f"detections need {list(keys)}; missing {missing}")


def draw_boxes(ax, boxes, colour, labels=None, lw: float = 1.0) -> None:
    """Rectangles for ``boxes [n, 4]`` (x1, y1, x2, y2); ``colour`` one colour or one per box."""
    boxes = torch.as_tensor(boxes).reshape(-1, 4)
    for k, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        c = colour[k] if isinstance(colour, list) else colour
        ax.add_patch(plt.Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, color=c,
                                   lw=lw))
        if labels is not None:
            ax.text(x1 - 0.5, y1 - 0.5, labels[k], color="k", fontsize=6.5, va="bottom",
                    bbox=dict(facecolor=c, alpha=0.8, pad=0.8, lw=0))


def paint_instances(image, masks):
    """The image, darkened, with each mask in its own tab10 colour; returns (picture, colours)."""
    colours = [plt.cm.tab10(k % 10)[:3] for k in range(len(masks))]
    picture = to_numpy_image(image) * 0.45
    for m, c in zip(masks, colours):
        m = np.asarray(m, dtype=bool)
        picture[m] = 0.35 * picture[m] + 0.65 * np.array(c)
    return picture, colours


def paint_panoptic(category, instance, palette) -> np.ndarray:
    """Class colours, void black, and a white line wherever the (category, id) changes."""
    category, instance = np.asarray(category), np.asarray(instance)
    rgb = colorize(np.clip(category, 0, None), palette).astype(float) / 255
    rgb[category == VOID] = 0
    segment = category * 1000 + instance
    edge = np.zeros(segment.shape, dtype=bool)
    edge[:, 1:] |= segment[:, 1:] != segment[:, :-1]
    edge[1:, :] |= segment[1:, :] != segment[:-1, :]
    rgb[edge] = 1
    return rgb


def counting_figure(sample, data, connected_components):
    """Image, semantic mask, the connected regions of every thing class, the true instances."""
    things = torch.zeros_like(sample.mask)
    for c in data.thing_classes:  # regions of every thing class, numbered one after the other
        regions = connected_components(sample.mask == c)
        things[regions > 0] = regions[regions > 0] + things.max()
    panels = [(to_numpy_image(sample.image), "image"),
              (colorize(sample.mask, data.palette), "semantic mask"),
              (_ids(things), "its connected regions"), (_ids(sample.instances), "true instances")]
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.3))
    _label_panels(axes, panels, sample.image)
    fig.tight_layout()
    return fig


def roi_sampling_figure(box, cells: dict, size: int = 6, output_size: int = 2):
    """RoIPool's rounded cells (``cells[i, j] = (y0, y1, x0, x1)`` per bin) next to RoIAlign's
    exact bins and 2 x 2 sample points, one point joined to the four cell centres it reads."""
    if len(cells) != output_size * output_size:
        raise ValueError(f"cells must hold the {output_size}x{output_size} bins, "
                         f"got {len(cells)}")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.8))
    colours = plt.cm.Set2(np.arange(output_size * output_size))
    x1, y1, x2, y2 = box
    for ax in axes:
        for k in range(size + 1):
            ax.plot([k, k], [0, size], color="0.8", lw=0.8)
            ax.plot([0, size], [k, k], color="0.8", lw=0.8)
        ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=2, ls="--",
                                   color="k"))
        ax.set_xlim(-0.2, size + 0.2)
        ax.set_ylim(size + 0.2, -0.2)
        ax.set_aspect("equal")
        ax.set_xticks(range(size + 1))
        ax.set_yticks(range(size + 1))
    for (i, j), (ys, ye, xs, xe) in cells.items():
        axes[0].add_patch(plt.Rectangle((xs + 0.05, ys + 0.05), xe - xs - 0.1, ye - ys - 0.1,
                                        color=colours[i * output_size + j], alpha=0.45))
    axes[0].set_title("RoIPool: box rounded to cells, bins rounded,\n"
                      "max over each bin's cells", fontsize=10)
    bw, bh = (x2 - x1) / output_size, (y2 - y1) / output_size
    for i in range(output_size):
        for j in range(output_size):
            axes[1].add_patch(plt.Rectangle((x1 + j * bw, y1 + i * bh), bw, bh, alpha=0.35,
                                            color=colours[i * output_size + j]))
            for a in range(2):
                for b in range(2):
                    axes[1].plot(x1 + (j + (b + 0.5) / 2) * bw, y1 + (i + (a + 0.5) / 2) * bh,
                                 "o", color="k", ms=4)
    py, px = y1 + 0.25 * bh, x1 + 0.25 * bw  # one sample point and its four neighbouring centres
    for cy in (math.floor(py - 0.5) + 0.5, math.floor(py - 0.5) + 1.5):
        for cx in (math.floor(px - 0.5) + 0.5, math.floor(px - 0.5) + 1.5):
            axes[1].plot([px, cx], [py, cy], color="crimson", lw=1)
            axes[1].plot(cx, cy, "s", color="crimson", ms=4)
    axes[1].set_title("RoIAlign: exact bins, 2 x 2 samples per bin,\n"
                      "each bilinear from 4 cell centres", fontsize=10)
    fig.tight_layout()
    return fig


def shift_response_figure(shifts, curves: dict, xlabel: str = "box shift (cells)",
                          ylabel: str = "first bin's value"):
    """One line per ``{name: values}`` over ``shifts``; a name starting "RoIPool" is a staircase
    (its value holds until the next shift)."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for name, values in curves.items():
        if len(values) != len(shifts):
            raise ValueError(f"{name}: {len(values)} values for {len(shifts)} shifts")
        steps = "steps-post" if name.startswith("RoIPool") else "default"
        ax.plot(np.asarray(shifts), np.asarray(values), drawstyle=steps, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    fig.tight_layout()
    return fig


def _labels(data, out, keep) -> list[str]:
    pairs = zip(out["categories"][keep].tolist(), out["scores"][keep].tolist())
    return [f"{data.classes[c]} {s:.2f}" for c, s in pairs]


def pipeline_figure(image, anchors, proposals, out, data, min_score: float = 0.5,
                    anchor_sizes=(8, 16, 32, 64)):
    """Anchors of one location per level, the RPN's 30 best proposals, the final detections.

    ``image [3, H, W]``; ``anchors [3 * L, 4]``, three ratios per level; ``proposals [n, 4]``
    best first; ``out``: Panoptic FPN's detections of the image.
    """
    _check_detections(out, ("boxes", "scores", "masks", "categories"))
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.3))
    for ax in axes:
        ax.imshow(to_numpy_image(image))
    no_ticks(axes)
    level_colours = ["yellow", "orange", "red", "magenta", "white"]
    draw_boxes(axes[0], anchors, [level_colours[k // 3 % 5] for k in range(len(anchors))])
    sizes = ", ".join(str(s) for s in anchor_sizes)
    axes[0].set_title(f"anchors at one location, P2..P{len(anchors) // 3 + 1}\n"
                      f"(sizes {sizes}; ratios 1:2, 1:1, 2:1)", fontsize=10)
    draw_boxes(axes[1], proposals[:30], "cyan", lw=0.8)
    axes[1].set_title("RPN: 30 best proposals", fontsize=10)
    keep = out["scores"] >= min_score
    picture, colours = paint_instances(image, out["masks"][keep])
    axes[2].imshow(picture)
    draw_boxes(axes[2], out["boxes"][keep], colours, _labels(data, out, keep), lw=1.5)
    axes[2].set_title(f"detections (score >= {min_score}) and masks", fontsize=10)
    fig.tight_layout()
    return fig


def detections_figure(data, predictions, indices, min_score: float = 0.5):
    """Per scene of ``data``: predicted masks and boxes (score >= ``min_score``) above the ground
    truth. ``predictions[i]`` is the output for scene ``i``."""
    fig, axes = plt.subplots(2, len(indices), figsize=(3 * len(indices), 6.2), squeeze=False)
    for col, i in enumerate(indices):
        s, p = data.sample(i), predictions[i]
        _check_detections(p, ("boxes", "scores", "masks", "categories"))
        keep = p["scores"] >= min_score
        picture, colours = paint_instances(s.image, p["masks"][keep])
        axes[0, col].imshow(picture)
        draw_boxes(axes[0, col], p["boxes"][keep], colours, _labels(data, p, keep))
        ids = torch.arange(1, len(s.instance_classes) + 1)
        picture, colours = paint_instances(s.image, s.instances[None] == ids[:, None, None])
        axes[1, col].imshow(picture)
        draw_boxes(axes[1, col], s.boxes, colours,
                   [data.classes[c] for c in s.instance_classes.tolist()])
        axes[0, col].set_title(f"scene {i}: prediction", fontsize=9)
        axes[1, col].set_title("ground truth", fontsize=9)
    no_ticks(axes)
    fig.tight_layout()
    return fig


def panoptic_figure(sample, out, data, min_score: float = 0.5):
    """Instances, the semantic head's map, the fused panoptic map and the ground truth."""
    _check_detections(out, ("scores", "masks", "semantic_logits", "panoptic"))
    keep = out["scores"] >= min_score
    instances = torch.zeros(sample.mask.shape, dtype=torch.long)
    for k, m in enumerate(out["masks"][keep]):
        instances[m] = k + 1  # overlaps: later (less confident) masks drawn on top
    stuff = [data.palette[c] for c in data.stuff_classes]
    semantic = colorize(out["semantic_logits"].argmax(0), np.array([*stuff, [90, 90, 90]]))
    panels = [(to_numpy_image(sample.image), "image"),
              (_ids(instances), f"instances (score >= {min_score})"),
              (semantic, "semantic head\n(stuff; thing = grey)"),
              (paint_panoptic(out["panoptic"][..., 0], out["panoptic"][..., 1], data.palette),
               "fused panoptic map\n(void black, segments outlined)"),
              (paint_panoptic(sample.mask, sample.instances, data.palette), "ground truth")]
    fig, axes = plt.subplots(1, 5, figsize=(15, 3.6))
    _label_panels(axes, panels, sample.image, size=9)
    fig.legend(handles=legend_patches(data.classes, data.palette), loc="lower center", ncol=5,
               frameon=False, fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def pq_example_figure(gt, pred):
    """Two small ``[H, W, 2]`` panoptic maps with every pixel's (category, instance) written."""
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.6))
    for ax, m, title in zip(axes, (gt, pred), ("ground truth", "prediction")):
        m = torch.as_tensor(m)
        if m.dim() != 3 or m.shape[-1] != 2:
            raise ValueError(f"panoptic maps must be [H, W, 2], got {tuple(m.shape)}")
        ax.imshow((m[..., 0] + m[..., 1] * 0.7).numpy(), cmap="Pastel1_r", vmin=0, vmax=4)
        for (y, x), (c, i) in zip(np.ndindex(*m.shape[:2]), m.reshape(-1, 2).tolist()):
            ax.text(x, y, f"{c},{i}", ha="center", va="center", fontsize=8)
        ax.set_title(title + "  (category, instance)", fontsize=9)
    no_ticks(axes)
    fig.tight_layout()
    return fig
