"""segcourse.viz.deploy: chapter 12's figures of latency, accuracy vs speed, folding, serving SAM.

Expected numbers are worked out by hand in the comments (speed-ups, totals, cumulative ms); the
Pareto front is also checked against a sort-and-sweep, a formulation independent of the code's
pairwise test.
"""

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest

from segcourse.viz import (
    pareto_front,
    plot_accuracy_speed,
    plot_click_latency,
    plot_fold,
    plot_latency,
)

matplotlib.use("Agg")                  # figures only, no window

BOOK_WIDTH = 7.0                       # inches: the widest figure the book column shows unscaled

ROWS = {"a": {"eager": 30.0, "fast": 10.0, "int8": 5.0},
        "b": {"eager": 12.0, "int8": 4.0}}            # b has no "fast": its slot stays empty


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _bars(ax) -> dict:
    """{runtime: [(y centre, width), ...]} from the bar containers (one per runtime)."""
    return {c.get_label(): [(p.get_y() + p.get_height() / 2, p.get_width()) for p in c]
            for c in ax.containers}


def test_latency_one_bar_per_measured_pair_with_ms_and_speed_up():
    fig = plot_latency(ROWS, title="CPU")
    ax = fig.axes[0]
    assert len(ax.patches) == 5                       # 3 + 2 measured (model, runtime) pairs
    bars = _bars(ax)
    assert [w for _, w in bars["eager"]] == [30.0, 12.0]
    assert [w for _, w in bars["fast"]] == [10.0]
    assert [w for _, w in bars["int8"]] == [5.0, 4.0]
    # eager 30 / fast 10 = 3.0x, 30 / 5 = 6.0x; b: 12 / 4 = 3.0x; the reference gets no ratio
    assert [t.get_text() for t in ax.texts] == [" 30.0 ms", " 12.0 ms", " 10.0 ms  3.0x",
                                                " 5.0 ms  6.0x", " 4.0 ms  3.0x"]
    assert ax.get_title() == "CPU"
    assert ax.get_xlabel() == "ms per image (speed-up vs eager)"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["eager", "fast", "int8"]
    assert ax.get_xscale() == "linear"                # 30 / 4 = 7.5x < 30x
    assert fig.get_size_inches()[0] <= BOOK_WIDTH


def test_latency_groups_stay_aligned_when_a_runtime_is_missing():
    bars = _bars(plot_latency(ROWS).axes[0])
    (ya_eager, _), (yb_eager, _) = bars["eager"]
    (ya_int8, _), (yb_int8, _) = bars["int8"]
    # each runtime sits at the same place in its group (groups 1 apart), b's "fast" slot empty
    assert yb_eager - ya_eager == pytest.approx(1.0)
    assert yb_int8 - ya_int8 == pytest.approx(1.0)
    (ya_fast, _), = bars["fast"]
    assert ya_eager < ya_fast < ya_int8               # a's order: eager, fast, int8
    assert all(abs(y - (ya_fast + 1)) > 0.05 for runtime in bars for y, _ in bars[runtime])
    # the same runtime has the same colour in every group
    ax = plot_latency(ROWS).axes[0]
    for container in ax.containers:
        assert len({tuple(p.get_facecolor()) for p in container}) == 1


def test_latency_brief_example_and_other_reference():
    unet = {"eager": 27.1, "fold + channels_last": 16.8, "torch.compile": 15.0,
            "onnxruntime": 12.0, "onnxruntime int8": 6.0}
    texts = [t.get_text() for t in plot_latency({"unet": unet}).axes[0].texts]
    # 27.1 / 16.8 = 1.613, 27.1 / 15 = 1.807, 27.1 / 12 = 2.258, 27.1 / 6 = 4.517
    assert texts == [" 27.1 ms", " 16.8 ms  1.6x", " 15.0 ms  1.8x", " 12.0 ms  2.3x",
                     " 6.0 ms  4.5x"]
    ax = plot_latency(ROWS, reference="int8").axes[0]
    # against int8: a 5 / 30 = 0.17, 5 / 10 = 0.5; b 4 / 12 = 0.33
    assert [t.get_text() for t in ax.texts] == [" 30.0 ms  0.2x", " 12.0 ms  0.3x",
                                                " 10.0 ms  0.5x", " 5.0 ms", " 4.0 ms"]
    assert ax.get_xlabel() == "ms per image (speed-up vs int8)"


def test_latency_model_without_the_reference_gets_no_ratio_and_big_ratios_are_whole():
    ax = plot_latency({"a": {"eager": 100.0, "int8": 4.0}, "b": {"int8": 2.0}}).axes[0]
    assert [t.get_text() for t in ax.texts] == [" 100 ms", " 4.0 ms  25x", " 2.0 ms"]


@pytest.mark.parametrize("rows, log, scale", [
    ({"a": {"x": 1.0, "y": 31.0}}, None, "log"),      # 31x > 30x
    ({"a": {"x": 1.0, "y": 30.0}}, None, "linear"),   # exactly 30x stays linear
    ({"a": {"x": 1.0, "y": 2.0}}, True, "log"),
    ({"a": {"x": 1.0, "y": 100.0}}, False, "linear"),
])
def test_latency_log_scale(rows, log, scale):
    ax = plot_latency(rows, log=log).axes[0]
    assert ax.get_xscale() == scale
    assert ax.get_xlim()[0] > 0 or scale == "linear"  # a log axis cannot start at 0


def test_latency_one_model_one_runtime():
    ax = plot_latency({"m": {"eager": 0.5}}).axes[0]
    assert len(ax.patches) == 1
    assert [t.get_text() for t in ax.texts] == [" 0.5 ms"]


# --- Pareto front ------------------------------------------------------------------------------

def test_pareto_front_hand_made():
    fast = dict(ms=5.0, miou=0.5)
    a = dict(ms=10.0, miou=0.8)
    b = dict(ms=20.0, miou=0.9)
    b_again = dict(ms=20.0, miou=0.9)                 # equal to b: neither beats the other
    beaten = [dict(ms=15.0, miou=0.7),                # by a: slower and worse
              dict(ms=10.0, miou=0.75),               # by a: as fast, worse
              dict(ms=30.0, miou=0.9)]                # by b: as accurate, slower
    front = pareto_front([b, beaten[0], a, beaten[1], fast, beaten[2], b_again])
    assert [id(p) for p in front] == [id(fast), id(a), id(b), id(b_again)]   # fastest first


def test_pareto_front_equals_a_sort_and_sweep():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(1, 12))
        points = [dict(ms=float(m), miou=float(q))
                  for m, q in zip(rng.uniform(1, 100, n), rng.uniform(0, 1, n))]
        # distinct values: fastest first, a point is on the front iff it beats every faster mIoU
        sweep, best = [], -1.0
        for p in sorted(points, key=lambda p: p["ms"]):
            if p["miou"] > best:
                sweep.append(p)
                best = p["miou"]
        assert pareto_front(points) == sweep


def test_pareto_front_empty_and_single():
    assert pareto_front([]) == []
    only = dict(ms=1.0, miou=0.1)
    assert pareto_front([only]) == [only]


# --- accuracy against speed --------------------------------------------------------------------

POINTS = [dict(model="unet", runtime="eager", ms=27.0, miou=0.86),
          dict(model="unet", runtime="onnx", ms=12.0, miou=0.86),
          dict(model="unet", runtime="int8", ms=6.0, miou=0.84),
          dict(model="segformer", runtime="eager", ms=40.0, miou=0.88),
          dict(model="segformer", runtime="int8", ms=11.0, miou=0.80)]


def test_accuracy_speed_points_arrows_labels_and_front():
    ax = plot_accuracy_speed(POINTS).axes[0]
    dots = {c.get_label(): c.get_offsets().tolist() for c in ax.collections
            if not c.get_label().startswith("_")}
    assert dots == {"eager": [[27.0, 0.86], [40.0, 0.88]], "onnx": [[12.0, 0.86]],
                    "int8": [[6.0, 0.84], [11.0, 0.80]]}
    arrows = [t for t in ax.texts if t.arrow_patch is not None]
    # from each model's first point to its others: unet 2, segformer 1
    assert sorted((t.xyann, t.xy) for t in arrows) == sorted([
        ((27.0, 0.86), (12.0, 0.86)), ((27.0, 0.86), (6.0, 0.84)),
        ((40.0, 0.88), (11.0, 0.80))])
    labels = {t.get_text(): t.xy for t in ax.texts if t.arrow_patch is None}
    assert labels == {"unet": (27.0, 0.86), "segformer": (40.0, 0.88)}
    # front by hand: int8 unet (6, .84) -> onnx unet (12, .86) -> eager segformer (40, .88);
    # segformer int8 (11, .80) is beaten by unet int8, unet eager (27, .86) by unet onnx
    front, = [line for line in ax.lines if line.get_label() == "Pareto front"]
    assert front.get_xdata().tolist() == [6.0, 12.0, 40.0]
    assert front.get_ydata().tolist() == [0.84, 0.86, 0.88]
    assert front.get_drawstyle() == "steps-post"
    assert ax.get_xlabel() == "ms per image" and ax.get_ylabel() == "mIoU"
    assert ax.get_xscale() == "linear"                # 40 / 6 < 30


def test_accuracy_speed_one_point_and_log():
    ax = plot_accuracy_speed([dict(model="m", runtime="r", ms=3.0, miou=0.5)], log=True,
                             xlabel="ms", ylabel="IoU").axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "ms" and ax.get_ylabel() == "IoU"
    assert [t.get_text() for t in ax.texts] == ["m"]


# --- folding -----------------------------------------------------------------------------------

BEFORE = {"encoder": 6.4, "projections": 0.52, "fuse": 8.59, "classifier": 1.26}
AFTER = {"encoder": 6.4, "folded maps": 0.52, "folding": 0.07, "classifier": 1.26}


def test_fold_stacks_parts_and_writes_totals():
    fig = plot_fold(BEFORE, AFTER, ("published", "folded"))
    ax = fig.axes[0]
    assert len(ax.patches) == 8
    before, after = ax.patches[:4], ax.patches[4:]
    np.testing.assert_allclose([p.get_y() for p in before], [0, 6.4, 6.92, 15.51])
    np.testing.assert_allclose([p.get_height() for p in after], [6.4, 0.52, 0.07, 1.26])
    assert {p.get_x() + p.get_width() / 2 for p in before} == {0.0}
    # a part in both bars keeps its colour; parts of one bar all differ
    assert before[0].get_facecolor() == after[0].get_facecolor()       # encoder
    assert before[3].get_facecolor() == after[3].get_facecolor()       # classifier
    assert len({p.get_facecolor() for p in ax.patches}) == 6
    texts = [t.get_text() for t in ax.texts]
    # totals 16.77 and 8.25; parts written when >= 8 % of 16.77 = 1.34: 6.4, 8.59, 6.4
    assert "16.8" in texts and "8.25" in texts
    assert sorted(t for t in texts if t not in ("16.8", "8.25")) == ["6.4", "6.4", "8.59"]
    assert ax.get_title() == "16.8 -> 8.25 GFLOPs, 2.0x fewer"            # 16.77 / 8.25 = 2.03
    assert [t.get_text() for t in ax.get_xticklabels()] == ["published", "folded"]
    assert len(ax.get_legend().get_texts()) == 6
    assert fig.get_size_inches()[0] <= BOOK_WIDTH


def test_fold_custom_unit_and_title():
    ax = plot_fold({"x": 3.0}, {"x": 1.0, "y": 0.5}, unit="ms", title="t").axes[0]
    assert ax.get_title() == "t" and ax.get_ylabel() == "ms"
    ax = plot_fold({"x": 3.0}, {"x": 1.0, "y": 0.5}, unit="ms").axes[0]
    assert ax.get_title() == "3 -> 1.5 ms, 2.0x fewer"


# --- serving SAM -------------------------------------------------------------------------------

def test_click_latency_cumulative_ms():
    fig = plot_click_latency(100.0, 2.0, clicks=3)
    ax = fig.axes[0]
    rerun, served = ax.lines
    assert rerun.get_xdata().tolist() == [1, 2, 3]
    np.testing.assert_allclose(served.get_ydata(), [102, 104, 106])   # 100 + k * 2
    np.testing.assert_allclose(rerun.get_ydata(), [102, 204, 306])    # k * (100 + 2)
    # 306 / 106 = 2.89
    assert [t.get_text() for t in ax.texts] == ["306 ms", "106 ms (2.9x less)"]
    assert ax.get_title() == "each click after the first: 2.0 ms vs 102 ms"
    assert fig.get_size_inches()[0] <= BOOK_WIDTH


def test_click_latency_one_click_costs_the_same():
    ax = plot_click_latency(450, 3.5, clicks=1).axes[0]
    assert [t.get_text() for t in ax.texts] == ["454 ms", "454 ms (1.0x less)"]


def test_click_latency_many_clicks_keeps_few_ticks():
    ax = plot_click_latency(100.0, 1.0, clicks=50).axes[0]
    ticks = ax.get_xticks().tolist()
    assert len(ticks) == 5 and ticks[0] == 1 and ticks[-1] == 50
    assert ax.lines[1].get_ydata()[-1] == pytest.approx(150.0)         # 100 + 50 * 1


# --- bad inputs --------------------------------------------------------------------------------

@pytest.mark.parametrize("call, message", [
    (lambda: plot_latency({}), "rows must be a non-empty mapping"),
    (lambda: plot_latency([("a", {"eager": 1.0})]), "rows must be a mapping .* got list"),
    (lambda: plot_latency({"a": {}}), r"rows\['a'\] must be a non-empty mapping"),
    (lambda: plot_latency({"a": 3.0}), r"rows\['a'\] must be a mapping"),
    (lambda: plot_latency({"a": {"eager": -1.0}}), r"rows\['a'\]\['eager'\] must be"),
    (lambda: plot_latency({"a": {"eager": 0.0}}), r"rows\['a'\]\['eager'\] must be .* > 0"),
    (lambda: plot_latency({"a": {"eager": float("inf")}}), r"rows\['a'\]\['eager'\]"),
    (lambda: plot_latency({"a": {"eager": "3"}}), r"rows\['a'\]\['eager'\]"),
    (lambda: plot_latency({"a": {"eager": True}}), r"rows\['a'\]\['eager'\]"),
    (lambda: plot_latency(ROWS, reference="onnx"), "reference must be one of"),
    (lambda: pareto_front({"ms": 1.0, "miou": 0.5}), "points must be a list"),
    (lambda: pareto_front([{"ms": 1.0}]), r"points\[0\] must be a dict with keys"),
    (lambda: pareto_front([{"ms": -1.0, "miou": 0.5}]), r"points\[0\]\['ms'\]"),
    (lambda: pareto_front([{"ms": 1.0, "miou": 1.5}]), r"points\[0\]\['miou'\]"),
    (lambda: plot_accuracy_speed([]), "points must hold at least one"),
    (lambda: plot_accuracy_speed([{"ms": 1.0, "miou": 0.5}]), r"points\[0\] must be a dict"),
    (lambda: plot_fold({}, AFTER), "before must be a non-empty mapping"),
    (lambda: plot_fold(BEFORE, [1.0]), "after must be a mapping"),
    (lambda: plot_fold(BEFORE, {"x": -1.0}), r"after\['x'\] must be a number >= 0"),
    (lambda: plot_fold(BEFORE, {"x": 0.0}), "after must have a total > 0"),
    (lambda: plot_fold(BEFORE, AFTER, labels=("one",)), "labels must be two names"),
    (lambda: plot_fold(BEFORE, AFTER, labels="ab"), "labels must be two names"),
    (lambda: plot_click_latency(0, 1.0), "encoder_ms must be"),
    (lambda: plot_click_latency(100, -1.0), "decoder_ms must be"),
    (lambda: plot_click_latency(100, 1.0, clicks=0), "clicks must be an int >= 1"),
    (lambda: plot_click_latency(100, 1.0, clicks=2.5), "clicks must be an int"),
    (lambda: plot_click_latency(100, 1.0, clicks=True), "clicks must be an int"),
])
def test_bad_inputs_name_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_accuracy_speed_axis_spans_at_least_min_span():
    points = [{"model": "m", "runtime": "eager", "ms": 10.0, "miou": 0.8068},
              {"model": "m", "runtime": "int8", "ms": 5.0, "miou": 0.8066}]
    fig = plot_accuracy_speed(points, min_span=0.05)
    low, high = fig.axes[0].get_ylim()
    assert abs((high - low) - 0.05) < 1e-9 and low < 0.8066 < 0.8068 < high
    plt.close(fig)
    with pytest.raises(ValueError, match="min_span"):
        plot_accuracy_speed(points, min_span=-1)
