"""Before/after figures of the inference refinements (chapter 8): dense CRF and TTA.

Each draws image | ground truth | network | refined, with each prediction's mIoU.
"""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import torch

from ._checks import check_labels_match
from .masks import colorize, to_numpy_image

__all__ = ["crf_figure", "tta_figure"]


def _label_row(panels, palette, title_size: int = 9):
    """One row of panels: ``(title, tensor, is_image)``; label maps are coloured by ``palette``."""
    fig, axes = plt.subplots(1, len(panels), figsize=(2.5 * len(panels), 2.9))
    for ax, (title, panel, is_image) in zip(axes, panels):
        ax.imshow(to_numpy_image(panel) if is_image else colorize(panel, palette),
                  interpolation="nearest")
        ax.set_title(title, fontsize=title_size)
        ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    return fig


def crf_figure(image: torch.Tensor, probs: torch.Tensor, mask: torch.Tensor, palette, **crf_params):
    """Image, ground truth, network prediction and dense-CRF prediction, each with its mIoU.

    ``image`` ``[3, H, W]`` in [0, 1] (scaled to 0-255 for the CRF), ``probs`` ``[K, H, W]`` the
    network's softmax, ``mask`` ``[H, W]``; ``crf_params`` go to :func:`segcourse.crf.dense_crf`.
    """
    from ..crf import dense_crf
    from ..metrics import mean_iou

    if not isinstance(probs, torch.Tensor) or probs.dim() != 3:
        raise ValueError(f"probs must be a tensor [K, H, W], got shape {tuple(probs.shape)}")
    check_labels_match(image, {"mask": mask, "probs[0]": probs[0]})
    K = probs.shape[0]
    raw = probs.argmax(0)
    refined = dense_crf(image * 255, probs, **crf_params).argmax(0)
    return _label_row([("image", image, True), ("ground truth", mask, False),
                       (f"network, mIoU {mean_iou(raw[None], mask[None], K):.3f}", raw, False),
                       (f"+ dense CRF, mIoU {mean_iou(refined[None], mask[None], K):.3f}",
                        refined, False)],
                      palette)


def tta_figure(model, image: torch.Tensor, mask: torch.Tensor, palette,
               scales: Sequence[float] = (0.75, 1.0, 1.25), flip: bool = True):
    """Image, ground truth, the plain prediction and the TTA prediction, each with its mIoU."""
    from ..metrics import mean_iou
    from ..tta import tta_predict

    check_labels_match(image, {"mask": mask})
    plain = tta_predict(model, image[None], scales=(1.0,), flip=False)[0]
    averaged = tta_predict(model, image[None], scales=scales, flip=flip)[0]
    K = plain.shape[0]
    plain, averaged = plain.argmax(0).cpu(), averaged.argmax(0).cpu()
    views = f"{len(scales)} scale{'s' if len(scales) > 1 else ''}{' x 2 flips' if flip else ''}"
    return _label_row([("image", image, True), ("ground truth", mask, False),
                       (f"plain, mIoU {mean_iou(plain[None], mask[None], K):.3f}", plain, False),
                       (f"TTA {views}, mIoU {mean_iou(averaged[None], mask[None], K):.3f}",
                        averaged, False)],
                      palette)
