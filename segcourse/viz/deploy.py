"""Figures of deployment (chapter 12, from notebook to product): latency per model and runtime,
accuracy against speed with its Pareto front, the FLOPs SegFormer's folded decoder saves, and
what serving SAM as encoder-once / decoder-per-click buys.

Latencies are milliseconds per image, measured elsewhere (``benchmarks/speed.py``, the
chapter's timing cells); these functions only draw them. Runtimes keep one colour each, in the
order in which they first appear (across ``rows`` / ``points``), so the latency and the
accuracy-speed figures agree when they are given the runtimes in the same order.

Speed-ups are written as ``reference ms / ms`` ("1.6x": 1.6 times faster than the reference
runtime, by default the first one; below 1 means slower). The Pareto front is for "lower
latency and higher mIoU are better": a point is on it when no other point is at least as fast
and at least as accurate, and strictly better in one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import NullFormatter, ScalarFormatter

from .._checks import check_count, check_number

__all__ = ["plot_latency", "pareto_front", "plot_accuracy_speed", "plot_fold",
           "plot_click_latency"]

LOG_SPAN = 30  # values spanning more than this factor are drawn on a log axis (log=None)
FRONT = "0.35"  # the Pareto front's colour: grey, so that it reads as a guide, not a runtime


# --- checks and formats ------------------------------------------------------------------------

def _positive(value, name: str) -> float:
    """``value`` as a finite number > 0 (a latency: 0 ms or inf would break speed-ups and logs)."""
    v = check_number(value, name, low=0)
    if v == 0 or not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number > 0 (milliseconds), got {value!r}")
    return v


def _mapping(value, name: str, what: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be a mapping {what}, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{name} must be a non-empty mapping {what}, got an empty one")
    return value


def _ms(v: float) -> str:
    """A latency with about three significant digits, never in exponent notation."""
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 1 else f"{v:.2g}"


def _times(ratio: float) -> str:
    return f"{ratio:.0f}x" if ratio >= 10 else f"{ratio:.1f}x"


def _colours(names) -> dict:
    return {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(names)}


def _log_x(ax, values, log) -> bool:
    """Put the x axis of ``ax`` on a log scale when asked, or (``log=None``) when ``values``
    span more than LOG_SPAN; ticks are written plainly (2, 5, 10, 20 ms), not as powers of ten."""
    use = max(values) / min(values) > LOG_SPAN if log is None else bool(log)
    if use:
        ax.set_xscale("log")                             # bars from 0 are clipped at the edge
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    return use


def _first_seen(keys_per_item) -> list:
    order: dict = {}
    for keys in keys_per_item:
        order.update((k, None) for k in keys if k not in order)
    return list(order)


# --- latency per model and runtime -------------------------------------------------------------

def plot_latency(rows, *, title=None, reference=None, log=None):
    """Grouped horizontal bars: one group per model (the first on top), one bar per runtime.

    ``rows`` is ``{model: {runtime: ms per image}}``; a runtime missing for a model leaves its
    slot empty, so every group keeps the same layout. Each bar is written with its ms and its
    speed-up over ``reference`` (a runtime name; default the first runtime of all rows), for
    the models that have that runtime. ``log=None`` draws a log axis when the latencies span
    more than 30x; ``True`` / ``False`` force it.
    """
    rows = _mapping(rows, "rows", "{model: {runtime: ms}}")
    table = {}
    for model, times in rows.items():
        times = _mapping(times, f"rows[{model!r}]", "{runtime: ms}")
        table[model] = {runtime: _positive(ms, f"rows[{model!r}][{runtime!r}]")
                        for runtime, ms in times.items()}
    runtimes = _first_seen(table.values())
    reference = runtimes[0] if reference is None else reference
    if reference not in runtimes:
        raise ValueError(f"reference must be one of the runtimes {runtimes}, got {reference!r}")
    colours = _colours(runtimes)
    height = 0.8 / len(runtimes)
    fig, ax = plt.subplots(figsize=(7, 0.25 * len(runtimes) * len(table) + 1.4))
    every = [ms for times in table.values() for ms in times.values()]
    use_log = _log_x(ax, every, log)
    for j, runtime in enumerate(runtimes):
        present = [(i, times[runtime]) for i, times in enumerate(table.values())
                   if runtime in times]
        ys = [i - 0.4 + (j + 0.5) * height for i, _ in present]
        ax.barh(ys, [ms for _, ms in present], height=height * 0.9, color=colours[runtime],
                label=runtime)
        for y, (i, ms) in zip(ys, present):
            base = list(table.values())[i].get(reference)
            text = f" {_ms(ms)} ms"
            if base is not None and runtime != reference:
                text += f"  {_times(base / ms)}"
            ax.text(ms, y, text, va="center", ha="left", fontsize=7)
    ax.set_yticks(range(len(table)), [str(m) for m in table])
    ax.set_ylim(len(table) - 0.5, -0.5)                  # the first model on top
    high = max(every)
    # room on the right for the text
    ax.set_xlim(min(every) / 2 if use_log else 0, high * (4 if use_log else 1.3))
    ax.set_xlabel(f"ms per image (speed-up vs {reference})")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5),
              frameon=False)                          # beside the axes: never over a bar
    ax.grid(axis="x", alpha=0.3)
    if title is not None:
        ax.set_title(title)
    fig.tight_layout()
    return fig


# --- accuracy against speed --------------------------------------------------------------------

def _points(points, keys, name: str = "points") -> list[dict]:
    if isinstance(points, (str, bytes, Mapping)) or not hasattr(points, "__iter__"):
        raise ValueError(f"{name} must be a list of dicts with keys {keys}, got "
                         f"{type(points).__name__}")
    points = list(points)
    for k, p in enumerate(points):
        if not isinstance(p, Mapping) or any(key not in p for key in keys):
            raise ValueError(f"{name}[{k}] must be a dict with keys {keys}, got {p!r}")
        _positive(p["ms"], f"{name}[{k}]['ms']")
        check_number(p["miou"], f"{name}[{k}]['miou']", low=0, high=1)
    return points


def pareto_front(points) -> list[dict]:
    """The points of ``points`` (dicts with ``"ms"`` and ``"miou"``) that no other point beats:
    none is at least as fast and at least as accurate while strictly better in one of the two.

    Returned fastest first (equal points are both kept: neither beats the other); an empty
    list gives an empty front.
    """
    points = _points(points, ("ms", "miou"))
    front = [p for p in points
             if not any(q["ms"] <= p["ms"] and q["miou"] >= p["miou"]
                        and (q["ms"] < p["ms"] or q["miou"] > p["miou"]) for q in points)]
    return sorted(front, key=lambda p: (p["ms"], -p["miou"]))


def plot_accuracy_speed(points, *, xlabel="ms per image", ylabel="mIoU", log=None,
                        min_span=0.05):
    """mIoU against latency, one dot per (model, runtime), coloured by runtime.

    ``points`` is a list of dicts ``{"model", "runtime", "ms", "miou"}``. A model's first point
    is its starting point (e.g. eager float32): it carries the model's name, and an arrow runs
    from it to each of the model's other points (compiled, ONNX Runtime, int8...). The Pareto
    front (:func:`pareto_front`) is drawn as a grey staircase -- the best mIoU reachable within
    a latency -- with its points ringed. ``log`` as in :func:`plot_latency`. The mIoU axis
    spans at least ``min_span``, so that differences in the fourth decimal (an exact rewrite,
    int8 on an easy task) look as small as they are.
    """
    min_span = check_number(min_span, "min_span", low=0)
    points = _points(points, ("model", "runtime", "ms", "miou"))
    if not points:
        raise ValueError("points must hold at least one point {model, runtime, ms, miou}")
    runtimes = _first_seen([p["runtime"]] for p in points)
    colours = _colours(runtimes)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    _log_x(ax, [p["ms"] for p in points], log)
    for runtime in runtimes:
        mine = [p for p in points if p["runtime"] == runtime]
        ax.scatter([p["ms"] for p in mine], [p["miou"] for p in mine], s=45, zorder=3,
                   color=colours[runtime], label=runtime)
    start: dict = {}
    for p in points:
        if p["model"] not in start:
            start[p["model"]] = p
            ax.annotate(str(p["model"]), (p["ms"], p["miou"]), textcoords="offset points",
                        xytext=(6, 5), fontsize=8)
        else:
            first = start[p["model"]]
            ax.annotate("", xy=(p["ms"], p["miou"]), xytext=(first["ms"], first["miou"]),
                        arrowprops=dict(arrowstyle="->", color="0.5", lw=1,
                                        shrinkA=4, shrinkB=4))
    front = pareto_front(points)
    ax.step([p["ms"] for p in front], [p["miou"] for p in front], where="post", ls="--",
            lw=1, color=FRONT, label="Pareto front", zorder=2)
    ax.scatter([p["ms"] for p in front], [p["miou"] for p in front], s=150, zorder=2,
               facecolors="none", edgecolors=FRONT, linewidths=1)
    ax.margins(x=0.15, y=0.1)
    low, high = ax.get_ylim()
    if high - low < min_span:
        middle = (low + high) / 2
        ax.set_ylim(middle - min_span / 2, middle + min_span / 2)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


# --- FLOPs before and after folding ------------------------------------------------------------

def plot_fold(before, after, labels=("before", "after"), *, unit="GFLOPs", title=None):
    """Two stacked bars: the cost of each part (``{part: value}``) before and after a rewrite
    such as SegFormer's folded decoder, bottom-up in the mappings' order, with each total on
    top and the value of each part tall enough to hold it. A part named in both keeps its
    colour. The default title gives both totals and their
    ratio ("16.8 -> 8.25 GFLOPs, 2.0x fewer").
    """
    bars = {"before": before, "after": after}
    for name, parts in bars.items():
        _mapping(parts, name, "{part: value}")
        for part, value in parts.items():
            check_number(value, f"{name}[{part!r}]", low=0)
        if sum(parts.values()) <= 0:
            raise ValueError(f"{name} must have a total > 0, got {sum(parts.values())!r}")
    if isinstance(labels, str) or len(labels) != 2:
        raise ValueError(f"labels must be two names (before, after), got {labels!r}")
    colours = _colours(_first_seen(bars.values()))
    fig, ax = plt.subplots(figsize=(5.8, 4.2))
    totals = [float(sum(parts.values())) for parts in bars.values()]
    drawn = set()
    for x, parts in enumerate(bars.values()):
        bottom = 0.0
        for part, value in parts.items():
            ax.bar(x, value, bottom=bottom, width=0.55, color=colours[part],
                   label=None if part in drawn else part, edgecolor="white", linewidth=0.5)
            drawn.add(part)
            if value >= 0.08 * max(totals):              # tall enough to hold its value
                ax.text(x, bottom + value / 2, f"{value:.3g}", ha="center", va="center",
                        fontsize=8, color="white")
            bottom += value
        ax.text(x, bottom, f"{totals[x]:.3g}", ha="center", va="bottom", fontsize=9,
                fontweight="bold")
    ax.set_xticks([0, 1], [str(label) for label in labels])
    ax.set_xlim(-0.5, 2.3)                               # the legend sits right of the bars
    ax.set_ylim(0, max(totals) * 1.12)
    ax.set_ylabel(unit)
    handles, names = ax.get_legend_handles_labels()
    ax.legend(handles[::-1], names[::-1], fontsize=8, loc="upper right")  # top part on top
    if title is None:
        title = (f"{totals[0]:.3g} -> {totals[1]:.3g} {unit}, "
                 f"{_times(totals[0] / totals[1])} fewer")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


# --- serving SAM -------------------------------------------------------------------------------

def plot_click_latency(encoder_ms, decoder_ms, clicks=10):
    """Serving SAM: cumulative ms after 1..``clicks`` clicks on one image, embedding the image
    once and decoding per click (``encoder + k * decoder``) against re-running the whole model
    per click (``k * (encoder + decoder)``); both totals and their ratio are written at the
    last click, and the title gives the wait per click after the first. The split is SAM's
    own design (Kirillov et al. 2023, section 3: the image embedding is computed once and
    reused; the prompt encoder and mask decoder run per prompt, about 50 ms in a browser)."""
    encoder = _positive(encoder_ms, "encoder_ms")
    decoder = _positive(decoder_ms, "decoder_ms")
    clicks = check_count(clicks, "clicks")
    k = np.arange(1, clicks + 1)
    served = encoder + k * decoder
    rerun = k * (encoder + decoder)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(k, rerun, marker="o", ms=4, color="#dd8452", label="whole model per click")
    ax.plot(k, served, marker="o", ms=4, color="#4c72b0",
            label="embed once, decoder per click")
    ax.annotate(f"{_ms(rerun[-1])} ms", (k[-1], rerun[-1]), textcoords="offset points",
                xytext=(6, 0), va="center", fontsize=8)
    ax.annotate(f"{_ms(served[-1])} ms ({_times(rerun[-1] / served[-1])} less)",
                (k[-1], served[-1]), textcoords="offset points", xytext=(6, 0), va="center",
                fontsize=8)
    ax.set_xticks(k if clicks <= 20 else np.linspace(1, clicks, 5).round().astype(int))
    ax.set_xlim(0.5, clicks + 0.5 + 0.45 * clicks)       # room for the end labels
    ax.set_ylim(0, rerun[-1] * 1.1)
    ax.set_xlabel("clicks on one image")
    ax.set_ylabel("cumulative ms")
    ax.set_title(f"each click after the first: {_ms(decoder)} ms vs {_ms(encoder + decoder)} ms",
                 fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
