"""Interactive segmentation: the simulated user's next click, and the number of clicks (NoC).

Protocol: Xu et al., "Deep Interactive Object Selection", CVPR 2016; as evaluated by RITM
(Sofiiuk et al., "Reviving Iterative Training with Mask Guidance for Interactive Segmentation",
ICIP 2022; reference code SamsungLabs/ritm_interactive_segmentation,
``isegm/inference/clicker.py`` ``Clicker._get_next_click`` and ``isegm/inference/utils.py``
``compute_noc_metric``) and by SAM (Kirillov et al., ICCV 2023, appendix D.1: "the next point
is sampled at the point farthest from the object boundary of the error region").

- :func:`next_click`: the false negatives (object pixels the prediction misses) and the false
  positives (predicted pixels off the object); the Euclidean distance of each error pixel to
  the nearest non-error pixel, the image border counting as non-error (RITM pads the masks with
  one pixel of background before its distance transform); the click goes to the error pixel
  farthest from any boundary -- positive in the false negatives, negative in the false
  positives.
- :func:`clicks_to_reach` / :func:`noc`: with IoUs ``[N, K]`` after clicks 1..K, the first
  click at which an object's IoU reaches the threshold, K for an object that never does; NoC is
  their mean, and the number of objects that never reach it is reported as failures (NoF).

Decisions, checked against RITM's code:

- Tie between the two error kinds: RITM clicks positive only if ``fn_max_dist >
  fp_max_dist`` (strictly); an equal distance gives a *negative* click. We do the same.
- Tie between pixels at the same distance: the first in row-major order (RITM takes
  ``np.where(dt == max)[0]``, which is row-major first; ``np.argmax`` is the same).
- Distances: RITM uses ``cv2.distanceTransform(..., cv2.DIST_L2, 0)``, the exact Euclidean
  transform; ``scipy.ndimage.distance_transform_edt`` computes the same values.
- Points are ``(x, y) = (column, row)`` pixel indices, as float: segcourse's convention for SAM
  prompts (``sam_training.sample_points``, ``Sam.predict``); the prompt encoder adds the +0.5
  that moves an index to the pixel centre, as the original ``PromptEncoder._embed_points``.
- Ignored pixels (``ignore``) are neither error nor object, so they count as boundary (RITM's
  ``not_ignore_mask``).

Where we differ from RITM:

- No error at all: RITM still returns a (negative) click at the first pixel; we return the
  padding label -1 at (0, 0), which SAM's prompt encoder reads as "no point" (what
  ``sam_training.next_clicks`` does too).
- :func:`next_click` is stateless: RITM also zeroes the distance at pixels clicked before
  (``not_clicked_map``), so a click the model ignored is not repeated. Repeating the same pixel
  is only possible when the model did not change its error there.
- Failures: RITM's ``over_max`` counts objects whose NoC equals ``max_clicks``, which includes
  those that reach the threshold exactly at the last click; :func:`noc` counts only the
  objects that never reach it.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt

from .._checks import as_tensor, check_number

__all__ = ["next_click", "clicks_to_reach", "noc"]


def _check_masks(pred, target, ignore):
    pred, target = as_tensor(pred, "pred"), as_tensor(target, "target")
    for name, m in (("pred", pred), ("target", target)):
        if m.dim() not in (2, 3):
            raise ValueError(f"{name} must be a bool mask [H, W] or [P, H, W], got shape "
                             f"{tuple(m.shape)}")
        if m.dtype != torch.bool:
            raise ValueError(f"{name} must be a bool mask, got {m.dtype} (pass e.g. "
                             f"logits > 0 or mask.bool())")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")
    if ignore is not None:
        ignore = as_tensor(ignore, "ignore")
        if ignore.dtype != torch.bool or ignore.shape not in (target.shape, target.shape[-2:]):
            raise ValueError(f"ignore must be a bool mask of shape {tuple(target.shape)} or "
                             f"{tuple(target.shape[-2:])}, got {ignore.dtype} "
                             f"{tuple(ignore.shape)}")
    return pred, target, ignore


def _border_distance(error: np.ndarray) -> np.ndarray:
    """Distance ``[H, W]`` of each error pixel to the nearest non-error pixel, the outside of
    the image counting as non-error (a 1-px pad of False, as RITM); 0 off the error."""
    padded = np.pad(error, 1, constant_values=False)
    return distance_transform_edt(padded)[1:-1, 1:-1]


def next_click(pred, target, ignore=None):
    """The simulated user's next click: ``pred`` and ``target`` bool ``[H, W]`` or ``[P, H, W]``
    (``ignore``: pixels excluded from both errors, ``[H, W]`` or the same shape) ->
    ``points [P, 2]`` float ``(x, y)`` pixel indices (column, row; SAM's prompt encoder adds
    the +0.5 to the pixel centre) and ``labels [P]`` long: 1 at the centre of the false
    negatives (the pixel farthest from their boundary, the image edge included) if it is
    farther than that of the false positives, else 0 there; -1 at (0, 0) where the prediction
    has no error. 2-D inputs give ``points [2]`` and a 0-d label. On the input's device."""
    pred, target, ignore = _check_masks(pred, target, ignore)
    single = pred.dim() == 2
    device = pred.device
    p, t = pred.cpu().numpy(), target.cpu().numpy()
    if single:
        p, t = p[None], t[None]
    valid = np.ones_like(t) if ignore is None else ~np.broadcast_to(ignore.cpu().numpy(), t.shape)
    fn, fp = t & ~p & valid, p & ~t & valid
    points = np.zeros((len(t), 2), dtype=np.float32)
    labels = np.full(len(t), -1, dtype=np.int64)
    W = t.shape[-1]
    for i in range(len(t)):
        fn_dist, fp_dist = _border_distance(fn[i]), _border_distance(fp[i])
        fn_max, fp_max = fn_dist.max(), fp_dist.max()
        if fn_max == 0 and fp_max == 0:
            continue  # no error: a padding point
        positive = fn_max > fp_max  # RITM's strict rule: a tie is a negative click
        index = int(np.argmax(fn_dist if positive else fp_dist))  # row-major first
        points[i] = (index % W, index // W)
        labels[i] = int(positive)
    points, labels = torch.from_numpy(points).to(device), torch.from_numpy(labels).to(device)
    return (points[0], labels[0]) if single else (points, labels)


def _check_ious(ious, threshold):
    ious = as_tensor(ious, "ious")
    if ious.dim() != 2 or ious.shape[0] == 0 or ious.shape[1] == 0:
        raise ValueError(f"ious must be [N, K] (N >= 1 objects, IoU after clicks 1..K >= 1), "
                         f"got shape {tuple(ious.shape)}")
    if not ious.is_floating_point():
        raise ValueError(f"ious must be floating point IoUs in [0, 1], got {ious.dtype}")
    if bool(((ious < 0) | (ious > 1) | ious.isnan()).any()):
        raise ValueError("ious must lie in [0, 1] (no NaN)")
    threshold = check_number(threshold, "threshold", 0, 1)
    if threshold == 0:
        raise ValueError("threshold must be a number in (0, 1], got 0 (every IoU reaches it)")
    return ious, threshold


def clicks_to_reach(ious, threshold: float) -> torch.Tensor:
    """Per object, the click (1-based) at which its IoU first reaches ``>= threshold``:
    ``ious [N, K]`` (after clicks 1..K) -> long ``[N]``; K where it never does (RITM's
    ``compute_noc_metric``, with ``max_clicks = K``)."""
    ious, threshold = _check_ious(ious, threshold)
    reached = ious >= threshold
    first = reached.long().argmax(1) + 1  # argmax: the first True (0 if none)
    return torch.where(reached.any(1), first, torch.full_like(first, ious.shape[1]))


def noc(ious, threshold: float) -> tuple[float, int]:
    """NoC@threshold and NoF@threshold of ``ious [N, K]``: the mean of
    :func:`clicks_to_reach` (never reached counts K) and the number of objects whose IoU
    never reaches ``threshold`` within the K clicks."""
    ious, threshold = _check_ious(ious, threshold)
    clicks = clicks_to_reach(ious, threshold)
    failures = int((~(ious >= threshold).any(1)).sum())
    return float(clicks.float().mean()), failures
