"""Hungarian matching against a brute-force search over every assignment.

The reference enumerates all ``min(N, M)``-element injections of the smaller side into the
larger one (itertools.permutations), so it shares nothing with SciPy's algorithm; costs are
compared (not the assignments: ties make several optimal).
"""

import itertools
import math

import numpy as np
import pytest
import torch

from segcourse.ops import hungarian


def brute_force(cost: torch.Tensor) -> float:
    """The least total over every one-to-one assignment of min(N, M) pairs (inf if none)."""
    c = cost.double()
    if c.shape[0] > c.shape[1]:
        c = c.T
    N, M = c.shape
    best = math.inf
    for cols in itertools.permutations(range(M), N):
        best = min(best, float(sum(c[i, j] for i, j in enumerate(cols))))
    return best


def check_assignment(cost, rows, cols):
    N, M = cost.shape
    assert rows.dtype == cols.dtype == torch.int64
    assert len(rows) == len(cols) == min(N, M)
    assert len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)
    assert torch.all(rows[1:] > rows[:-1])  # sorted, hence also distinct
    assert rows.min() >= 0 and rows.max() < N and cols.min() >= 0 and cols.max() < M


@pytest.mark.parametrize("shape", [(1, 1), (2, 5), (5, 3), (4, 4), (3, 6), (6, 2), (5, 5)])
def test_matches_brute_force(shape):
    g = torch.Generator().manual_seed(sum(shape))
    for _ in range(5):
        cost = torch.randn(*shape, generator=g)
        rows, cols = hungarian(cost)
        check_assignment(cost, rows, cols)
        assert float(cost[rows, cols].double().sum()) == pytest.approx(brute_force(cost))


def test_ties_and_integer_valued_costs():
    g = torch.Generator().manual_seed(0)
    for shape in [(4, 4), (3, 5), (5, 3)]:
        for _ in range(5):
            cost = torch.randint(0, 3, shape, generator=g).float()  # many equal totals
            rows, cols = hungarian(cost)
            check_assignment(cost, rows, cols)
            assert float(cost[rows, cols].sum()) == brute_force(cost)
    rows, cols = hungarian(torch.zeros(3, 3))  # every assignment optimal
    check_assignment(torch.zeros(3, 3), rows, cols)


def test_hand_computed_3x3():
    # Greedy (the cheapest remaining pair first) takes (0,0)=1, then (1,2)=3, then (2,1)=7:
    # 11. The six assignments cost 15, 11, 20, 9, 25, 18; the optimum is 2 + 3 + 4 = 9.
    cost = torch.tensor([[1.0, 2.0, 9.0], [9.0, 5.0, 3.0], [4.0, 7.0, 9.0]])
    rows, cols = hungarian(cost)
    assert rows.tolist() == [0, 1, 2] and cols.tolist() == [1, 2, 0]
    assert float(cost[rows, cols].sum()) == 9.0


@pytest.mark.parametrize("shape", [(3, 3), (2, 4), (4, 2), (5, 5)])
def test_inf_is_forbidden_when_a_finite_assignment_exists(shape):
    g = torch.Generator().manual_seed(1)
    for _ in range(10):
        cost = torch.rand(*shape, generator=g) * 10
        cost[torch.rand(*shape, generator=g) < 0.4] = math.inf
        best = brute_force(cost)
        if math.isinf(best):
            with pytest.raises(ValueError, match="no finite assignment"):
                hungarian(cost)
            continue
        rows, cols = hungarian(cost)
        check_assignment(cost, rows, cols)
        assert torch.isfinite(cost[rows, cols]).all()
        assert float(cost[rows, cols].double().sum()) == pytest.approx(best)


def test_inf_with_large_and_offset_finite_costs():
    # the replacement for inf must beat any finite total, whatever the scale and offset
    cost = torch.tensor([[1e6, math.inf], [1e6 + 5, 1e6]], dtype=torch.float64)
    rows, cols = hungarian(cost)
    assert cols.tolist() == [0, 1]
    cost = torch.tensor([[100.0, 100.0, math.inf], [math.inf, 100.0, 100.0]])
    rows, cols = hungarian(cost)
    assert torch.isfinite(cost[rows, cols]).all()
    # a single finite pair among forbidden ones, on a [3, 3]: the rest must be infeasible
    cost = torch.full((2, 3), math.inf)
    cost[0, 2], cost[1, 0] = -5.0, 7.0
    rows, cols = hungarian(cost)
    assert rows.tolist() == [0, 1] and cols.tolist() == [2, 0]


def test_no_finite_assignment_raises():
    with pytest.raises(ValueError, match="no finite assignment"):
        hungarian(torch.full((2, 2), math.inf))
    # two rows that can only take the same column
    cost = torch.tensor([[1.0, math.inf], [2.0, math.inf]])
    with pytest.raises(ValueError, match="no finite assignment"):
        hungarian(cost)


@pytest.mark.parametrize("shape", [(0, 0), (0, 4), (3, 0)])
def test_empty(shape):
    rows, cols = hungarian(torch.zeros(shape))
    assert rows.shape == cols.shape == (0,)
    assert rows.dtype == cols.dtype == torch.int64


def test_dtypes_devices_and_numpy():
    cost = torch.randn(4, 6, generator=torch.Generator().manual_seed(3))
    expected = hungarian(cost)
    for c in (cost.double(), cost.half(), cost.bfloat16(), cost.numpy()):
        rows, cols = hungarian(c)
        assert rows.device == cols.device == torch.device("cpu")
        best = brute_force(torch.as_tensor(c).float())
        assert float(torch.as_tensor(c).float()[rows, cols].sum()) == pytest.approx(best)
    assert torch.equal(hungarian(cost.double())[1], expected[1])
    cost.requires_grad_(True)
    rows, cols = hungarian(cost)  # a cost with a graph is fine: matching is not differentiated
    assert len(rows) == 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_device():
    cost = torch.randn(3, 5, device="cuda")
    rows, cols = hungarian(cost)
    assert rows.device == cols.device == cost.device
    assert float(cost[rows, cols].sum()) == pytest.approx(brute_force(cost.cpu()), abs=1e-5)


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(3), "2-D"),
    (torch.zeros(2, 2, 2), "2-D"),
    (torch.zeros(2, 2, dtype=torch.int64), "floating-point"),
    (torch.zeros(2, 2, dtype=torch.bool), "floating-point"),
    (torch.tensor([[0.0, float("nan")], [1.0, 2.0]]), "NaN"),
    (torch.tensor([[0.0, -math.inf], [1.0, 2.0]]), "-inf"),
    ([[0.0, 1.0]], "numpy array"),
    (torch.tensor([[1e308, math.inf], [-1e308, 0.0]], dtype=torch.float64), "too wide"),
])
def test_errors_name_cost(bad, match):
    with pytest.raises(ValueError, match="cost") as info:
        hungarian(bad)
    assert match in str(info.value)


def test_numpy_int_cost_refused():
    with pytest.raises(ValueError, match="floating-point"):
        hungarian(np.zeros((2, 2), dtype=np.int64))
