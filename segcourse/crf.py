"""Mean-field inference in a fully connected CRF (Kraehenbuehl & Koltun, NeurIPS 2011).

A segmentation network's probabilities ``P`` are blurry at object borders. The dense CRF sharpens
them with a prior that *every* pair of pixels that are close, or close and similar in colour,
should take the same label. Its energy, with a Potts compatibility ``mu(l, l') = [l != l']``, is

    E(x) = sum_i -log P_i(x_i) + sum_{i<j} mu(x_i, x_j) k(f_i, f_j)
    k(f_i, f_j) = w_g exp(-|p_i - p_j|^2 / 2 theta_gamma^2)                            (smoothness)
        + w_b exp(-|p_i - p_j|^2 / 2 theta_alpha^2 - |I_i - I_j|^2 / 2 theta_beta^2)   (appearance)

with ``p`` the pixel's (row, col) and ``I`` its RGB colour on 0-255. Mean-field inference
(the paper's Alg. 1) starts from ``Q = P`` and repeats, for every pixel ``i`` and label ``l``,

    Q_i(l) <- softmax_l( log P_i(l) + sum_{j != i} k(f_i, f_j) Q_j(l) ).

(With Potts, the penalty ``-sum_{l' != l} sum_j k_ij Q_j(l')`` differs from ``+sum_j k_ij Q_j(l)``
by a term that does not depend on ``l``, which the softmax cancels.)

Two implementations of the same update:

- :func:`dense_crf` is exact: all ``N^2`` pixel pairs. The smoothness kernel is separable (a
  Gaussian blur along rows and columns); the appearance kernel is built in blocks of rows so that
  a 128 x 128 image (268 M pairs) needs 256 MB, not 1 GB. The paper makes this fast with a
  permutohedral lattice (approximate Gaussian filtering); here exactness is the point.
- :func:`conv_crf` keeps only the pairs inside a ``k x k`` window, so a message is a locally
  weighted sum -- ``F.unfold`` plus a multiply-add, as in ConvCRF (Teichmann & Cipolla, BMVC 2019).
  ``benchmarks/crf.py`` measures its speed-up and how often it agrees with the exact one.

Reference code for the parameters: pydensecrf (github.com/lucasb-eyer/pydensecrf), whose README's
``addPairwiseGaussian(sxy=3, compat=3)`` and ``addPairwiseBilateral(sxy=80, srgb=13, compat=10)``
are our defaults. pydensecrf also normalises the kernels by default; we do not (as in the paper).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["dense_crf", "conv_crf"]


def _check_inputs(image: torch.Tensor, probs: torch.Tensor) -> torch.dtype:
    if not isinstance(probs, torch.Tensor) or probs.dim() != 3 or not probs.is_floating_point():
        raise ValueError("probs must be a float tensor [K, H, W] of class probabilities, got "
                         + (f"{probs.dtype} {tuple(probs.shape)}" if isinstance(probs, torch.Tensor)
                            else type(probs).__name__))
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError("image must be an RGB tensor [3, H, W] on 0-255, got "
                         + (f"{tuple(image.shape)}" if isinstance(image, torch.Tensor)
                            else type(image).__name__))
    if image.shape[1:] != probs.shape[1:]:
        raise ValueError(f"image {tuple(image.shape)} and probs {tuple(probs.shape)} "
                         "must have the same H, W")
    if not torch.isfinite(image).all():
        raise ValueError("image must be finite: it holds NaN or inf values")
    if (probs < 0).any() or not torch.allclose(probs.sum(0), torch.ones_like(probs[0]), atol=1e-3):
        raise ValueError("probs must be non-negative and sum to 1 over classes (dim 0); "
                         "pass softmax(logits), not logits")
    return torch.promote_types(probs.dtype, torch.float32)


def _check_parameters(iterations, weights: dict | None = None, **thetas) -> None:
    if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 0:
        raise ValueError(f"iterations must be a non-negative int, got {iterations!r}")
    for name, value in thetas.items():
        if not value > 0 or value == float("inf"):
            raise ValueError(f"{name} must be a positive, finite number, got {value}")
    # a negative weight would reward neighbours for disagreeing: not a CRF prior any more
    for name, value in (weights or {}).items():
        if not 0 <= value < float("inf"):
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")


def _mean_field(unary: torch.Tensor, probs: torch.Tensor, message, iterations: int) -> torch.Tensor:
    """``Q <- softmax(unary + message(Q))`` over dim 0 (the labels), ``iterations`` times."""
    q = probs
    for _ in range(iterations):
        q = (unary + message(q)).softmax(0)
    return q


# --- exact: all pixel pairs -----------------------------------------------------------------

def _gaussian_message(q: torch.Tensor, theta: float) -> torch.Tensor:
    """``sum_{j != i} exp(-|p_i - p_j|^2 / 2 theta^2) Q_j`` for every pixel, exactly.

    The spatial Gaussian is separable, ``exp(-dr^2 / 2t^2) exp(-dc^2 / 2t^2)``, so the sum over
    all pixels is a blur along the columns then along the rows: ``G_H @ Q @ G_W`` with
    ``G[a, b] = exp(-(a - b)^2 / 2 theta^2)``; ``O(N (H + W))`` instead of ``O(N^2)``. The ``j = i``
    term is ``1 * Q_i``: subtracted.
    """
    K, H, W = q.shape

    def gauss(n: int) -> torch.Tensor:
        idx = torch.arange(n, device=q.device, dtype=q.dtype)
        return torch.exp(-(idx[:, None] - idx[None, :]) ** 2 / (2 * theta ** 2))   # [n, n]

    return gauss(H) @ q @ gauss(W) - q


def _bilateral_features(image: torch.Tensor, theta_alpha: float, theta_beta: float):
    """Features whose dot products are the appearance kernel's exponent: ``a_i . b_j``.

    With ``f = (row / theta_alpha, col / theta_alpha, RGB / theta_beta)`` the exponent is
    ``-|f_i - f_j|^2 / 2 = f_i . f_j - |f_i|^2 / 2 - |f_j|^2 / 2``, a dot product of
    ``a_i = (f_i, -|f_i|^2 / 2, 1)`` and ``b_j = (f_j, 1, -|f_j|^2 / 2)``: one matrix product
    gives a whole block of exponents. Centring ``f`` first keeps the rounding error of this
    expansion small (about 1e-5 of the kernel value in float32).
    """
    _, H, W = image.shape
    rows, cols = torch.meshgrid(torch.arange(H, device=image.device, dtype=image.dtype),
                                torch.arange(W, device=image.device, dtype=image.dtype),
                                indexing="ij")
    f = torch.cat([torch.stack([rows, cols]) / theta_alpha, image / theta_beta])     # [5, H, W]
    f = f.reshape(5, H * W).T                                                        # [N, 5]
    f = f - f.mean(0)
    half_norm = (f * f).sum(1, keepdim=True) / 2
    ones = torch.ones_like(half_norm)
    return torch.cat([f, -half_norm, ones], 1), torch.cat([f, ones, -half_norm], 1)  # [N, 7] each


def dense_crf(image: torch.Tensor, probs: torch.Tensor, iterations: int = 5,
              w_gaussian: float = 3.0, theta_gamma: float = 3.0,
              w_bilateral: float = 10.0, theta_alpha: float = 80.0, theta_beta: float = 13.0, *,
              clip: float = 1e-5, memory_mb: float = 256) -> torch.Tensor:
    """Exact mean-field inference of the fully connected CRF; returns ``Q`` ``[K, H, W]``.

    Args:
        image: ``[3, H, W]`` RGB on 0-255 (``theta_beta`` is in those units; multiply a [0, 1]
            image by 255 first).
        probs: ``[K, H, W]`` class probabilities from the network (the unary is ``-log probs``,
            clipped at ``clip`` as pydensecrf's ``unary_from_softmax`` does, so no label is
            ruled out for good).
        iterations: mean-field steps; 0 returns ``probs``.
        w_gaussian, theta_gamma: weight and spatial width (pixels) of the smoothness kernel.
        w_bilateral, theta_alpha, theta_beta: weight, spatial width (pixels) and colour width
            (0-255 units) of the appearance kernel.
        memory_mb: budget for the appearance kernel's ``[rows, N]`` blocks. When the whole
            ``N x N`` matrix fits it is built once; otherwise each block is rebuilt in every
            iteration (a 128 x 128 image needs 1 GB in float32 at once, 256 MB in blocks).

    Cost: ``O(N^2)`` per iteration for ``N = H W`` pixels (the appearance kernel; the smoothness
    kernel is separable and costs ``O(N (H + W))``).
    """
    dtype = _check_inputs(image, probs)
    _check_parameters(iterations, {"w_gaussian": w_gaussian, "w_bilateral": w_bilateral},
                      theta_gamma=theta_gamma, theta_alpha=theta_alpha, theta_beta=theta_beta)
    K, H, W = probs.shape
    N = H * W
    probs = probs.to(dtype)
    a, b = _bilateral_features(image.to(device=probs.device, dtype=dtype), theta_alpha, theta_beta)
    itemsize = torch.finfo(dtype).bits // 8
    chunk = max(1, min(N, int(memory_mb * 2 ** 20 / (N * itemsize))))
    bounds = [(start, min(start + chunk, N)) for start in range(0, N, chunk)]

    def appearance_rows(start: int, stop: int) -> torch.Tensor:     # [stop - start, N]
        kernel = (a[start:stop] @ b.T).exp_()                       # in place: one block in memory
        rows = torch.arange(stop - start, device=kernel.device)
        kernel[rows, rows + start] = 0                              # the sum runs over j != i
        return kernel

    cached = ([appearance_rows(*bound) for bound in bounds]
              if len(bounds) == 1 and iterations > 0 else None)

    def message(q: torch.Tensor) -> torch.Tensor:                   # [K, H, W] -> [K, H, W]
        q_flat = q.reshape(K, N).T                                  # [N, K]
        appearance = torch.empty_like(q_flat)
        for index, (start, stop) in enumerate(bounds):
            kernel = cached[index] if cached is not None else appearance_rows(start, stop)
            appearance[start:stop] = kernel @ q_flat                # sum_j k_ij Q_j
        return (w_gaussian * _gaussian_message(q, theta_gamma)
                + w_bilateral * appearance.T.reshape(K, H, W))

    unary = probs.clamp(min=clip).log()
    return _mean_field(unary, probs, message, iterations)


# --- local: pairs within a k x k window (ConvCRF) -------------------------------------------

def conv_crf(image: torch.Tensor, probs: torch.Tensor, iterations: int = 5,
             w_gaussian: float = 3.0, theta_gamma: float = 3.0,
             w_bilateral: float = 10.0, theta_alpha: float = 80.0, theta_beta: float = 13.0, *,
             kernel_size: int = 11, clip: float = 1e-5) -> torch.Tensor:
    """Mean-field inference with messages only from the ``kernel_size x kernel_size`` window.

    Same model and arguments as :func:`dense_crf`, but ``k(f_i, f_j) = 0`` when ``j`` is more than
    ``kernel_size // 2`` pixels from ``i`` in row or column. The kernel of each pixel with each
    of its ``k^2`` neighbours is computed once (``[k^2, H, W]``); a message is then
    ``F.unfold(Q)`` times the kernel, summed over the window: ``O(N k^2)`` per iteration instead
    of ``O(N^2)``. A window at least ``2 max(H, W) - 1`` wide covers every pair and gives
    :func:`dense_crf` exactly. The appearance kernel's ``theta_alpha = 80`` reaches much further
    than a small window, so the two differ most in how far colour evidence spreads.
    """
    dtype = _check_inputs(image, probs)
    _check_parameters(iterations, {"w_gaussian": w_gaussian, "w_bilateral": w_bilateral},
                      theta_gamma=theta_gamma, theta_alpha=theta_alpha, theta_beta=theta_beta)
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
    K, H, W = probs.shape
    k, r = kernel_size, kernel_size // 2
    probs = probs.to(dtype)
    image = image.to(device=probs.device, dtype=dtype)

    def window(x: torch.Tensor) -> torch.Tensor:                    # [C, H, W] -> [C, k*k, H, W]
        return F.unfold(x[None], k, padding=r).reshape(x.shape[0], k * k, H, W)

    # Offsets (dy, dx) of the k*k window positions, in unfold's row-major order.
    offsets = torch.arange(-r, r + 1, device=probs.device, dtype=dtype)
    d_pos = (offsets[:, None] ** 2 + offsets[None, :] ** 2).reshape(k * k, 1, 1)     # [k*k, 1, 1]
    d_rgb = ((window(image) - image[:, None]) ** 2).sum(0)                           # [k*k, H, W]
    kernel = (w_gaussian * torch.exp(-d_pos / (2 * theta_gamma ** 2))
              + w_bilateral * torch.exp(-d_pos / (2 * theta_alpha ** 2)
                                        - d_rgb / (2 * theta_beta ** 2)))
    kernel[k * k // 2] = 0                                                           # j != i

    def message(q: torch.Tensor) -> torch.Tensor:                   # [K, H, W] -> [K, H, W]
        # unfold pads Q with zeros, so neighbours off the image contribute nothing.
        return (window(q) * kernel).sum(1)

    unary = probs.clamp(min=clip).log()
    return _mean_field(unary, probs, message, iterations)
