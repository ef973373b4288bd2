"""Bipartite matching: the assignment of rows to columns with the least total cost.

Set-prediction models (DETR, MaskFormer, Mask2Former) match their N predictions one-to-one to
the M ground-truth objects of an image before any loss is computed; the matching minimises a
cost summed over the matched pairs. Kuhn's "Hungarian method" (1955) solves this in polynomial
time; here SciPy's ``linear_sum_assignment`` (a shortest augmenting path algorithm, Crouse,
"On implementing 2D rectangular assignment algorithms", IEEE TAES 2016) does the work, as in
DETR's and Mask2Former's ``HungarianMatcher`` (facebookresearch/detr ``models/matcher.py``,
facebookresearch/Mask2Former ``mask2former/modeling/matcher.py``).

What is added around it: any device and float dtype, empty matrices, and ``inf`` meaning
"forbidden" -- SciPy refuses infinite entries, so they are replaced by a finite cost too large
for any optimal assignment to use while a finite one exists.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from .._checks import as_tensor

__all__ = ["hungarian"]


def _without_inf(matrix: np.ndarray, forbidden: np.ndarray, pairs: int) -> np.ndarray:
    """``matrix`` with its finite entries shifted to start at 0 and its forbidden ones replaced
    by a cost larger than the total of any assignment of ``pairs`` finite entries.

    Shifting is harmless: every assignment has ``pairs`` entries, so subtracting a constant
    from all of them lowers every total alike. Every all-finite total then lies in
    ``[0, pairs * spread]``, and one forbidden entry alone costs more than that.
    """
    finite = matrix[~forbidden]
    low = float(finite.min()) if finite.size else 0.0
    spread = float(finite.max()) - low if finite.size else 0.0
    big = 2.0 * pairs * spread + 1.0
    if not np.isfinite(big):
        raise ValueError("cost's finite entries span too wide a range to mark its forbidden "
                         f"(inf) pairs: max - min = {spread:.3g}")
    return np.where(forbidden, big, matrix - low)


def hungarian(cost) -> tuple[torch.Tensor, torch.Tensor]:
    """The one-to-one assignment of least total cost.

    Args:
        cost: float ``[N, M]`` tensor (or NumPy array) on any device; ``cost[i, j]`` is the cost
            of matching row ``i`` (a prediction) to column ``j`` (a target). ``+inf`` marks a
            forbidden pair.

    Returns:
        ``(rows, cols)``, int64 tensors of length ``min(N, M)`` on ``cost``'s device, ``rows``
        increasing: row ``rows[k]`` is matched to column ``cols[k]``, and
        ``cost[rows, cols].sum()`` is the least possible. Among equally cheap assignments one
        is returned (SciPy's choice).

    Raises:
        ValueError: ``cost`` not a 2-D float tensor, holding NaN or ``-inf``, or every
        assignment of ``min(N, M)`` pairs using a forbidden (``inf``) entry.
    """
    cost = as_tensor(cost, "cost")
    if cost.dim() != 2:
        raise ValueError(f"cost must be a 2-D [N, M] matrix, got shape {tuple(cost.shape)}")
    if not cost.is_floating_point():
        raise ValueError(f"cost must be a floating-point tensor, got dtype {cost.dtype}")
    device = cost.device
    N, M = cost.shape
    pairs = min(N, M)
    if pairs == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return empty, empty.clone()
    matrix = cost.detach().to("cpu", torch.float64).numpy()
    if np.isnan(matrix).any():
        raise ValueError(f"cost holds NaN ({int(np.isnan(matrix).sum())} of {matrix.size} "
                         "entries): a matching cost must be a number (inf = forbidden)")
    if np.isneginf(matrix).any():
        raise ValueError("cost holds -inf: only +inf (a forbidden pair) is allowed")
    forbidden = np.isposinf(matrix)
    if forbidden.any():
        matrix = _without_inf(matrix, forbidden, pairs)
    rows, cols = linear_sum_assignment(matrix)
    if forbidden[rows, cols].any():
        raise ValueError(f"cost has no finite assignment: every way of matching {pairs} of its "
                         f"{N} rows and {M} columns uses a forbidden (inf) entry")
    order = np.argsort(rows, kind="stable")  # SciPy sorts rows already; make it a promise
    return (torch.as_tensor(rows[order], dtype=torch.int64, device=device),
            torch.as_tensor(cols[order], dtype=torch.int64, device=device))
