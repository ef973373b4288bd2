"""Dense CRF mean field against a brute-force per-pixel loop of the paper's update."""

import math

import pytest
import torch

from segcourse.crf import conv_crf, dense_crf

PARAMS = dict(w_gaussian=3.0, theta_gamma=1.5, w_bilateral=10.0, theta_alpha=4.0, theta_beta=40.0)


def _brute_force(image, probs, iterations, w_gaussian, theta_gamma, w_bilateral, theta_alpha,
                 theta_beta, clip=1e-5, window=None):
    """Kraehenbuehl & Koltun Alg. 1 with a Potts model, one pixel and one label at a time.

    Written in the energy form, Q_i(l) ~ exp(-psi_u(l) - sum_{l' != l} sum_{j != i} k_ij Q_j(l')),
    with plain Python floats; ``window`` restricts j to |row_i - row_j|, |col_i - col_j| <= window.
    """
    K, H, W = probs.shape
    pixels = [(r, c) for r in range(H) for c in range(W)]
    img = image.tolist()
    unary = [[-math.log(max(float(probs[label, r, c]), clip)) for label in range(K)]
             for r, c in pixels]

    def kernel(i, j):
        (ri, ci), (rj, cj) = pixels[i], pixels[j]
        if window is not None and (abs(ri - rj) > window or abs(ci - cj) > window):
            return 0.0
        d_pos = (ri - rj) ** 2 + (ci - cj) ** 2
        d_rgb = sum((img[ch][ri][ci] - img[ch][rj][cj]) ** 2 for ch in range(3))
        return (w_gaussian * math.exp(-d_pos / (2 * theta_gamma ** 2))
                + w_bilateral * math.exp(-d_pos / (2 * theta_alpha ** 2)
                                         - d_rgb / (2 * theta_beta ** 2)))

    k = [[kernel(i, j) for j in range(len(pixels))] for i in range(len(pixels))]
    q = [[float(probs[label, r, c]) for label in range(K)] for r, c in pixels]
    for _ in range(iterations):
        new_q = []
        for i in range(len(pixels)):
            energy = []
            for label in range(K):
                penalty = sum(k[i][j] * q[j][other] for j in range(len(pixels)) if j != i
                              for other in range(K) if other != label)
                energy.append(unary[i][label] + penalty)
            low = min(energy)
            weights = [math.exp(low - e) for e in energy]
            new_q.append([w / sum(weights) for w in weights])
        q = new_q
    return torch.tensor(q, dtype=torch.float64).T.reshape(K, H, W)


def _case(seed, K=3, H=4, W=5):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(3, H, W, generator=g, dtype=torch.float64) * 255
    probs = (torch.randn(K, H, W, generator=g, dtype=torch.float64) * 2).softmax(0)
    return image, probs


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("iterations", [1, 3])
def test_dense_crf_matches_brute_force(seed, iterations):
    image, probs = _case(seed)
    expected = _brute_force(image, probs, iterations, **PARAMS)
    torch.testing.assert_close(dense_crf(image, probs, iterations, **PARAMS), expected,
                               rtol=1e-9, atol=1e-10)
    # Float32 with the default parameters agrees to float32 rounding of the feature expansion.
    default = dict(w_gaussian=3.0, theta_gamma=3.0,
                   w_bilateral=10.0, theta_alpha=80.0, theta_beta=13.0)
    expected = _brute_force(image, probs, iterations, **default)
    torch.testing.assert_close(dense_crf(image.float(), probs.float(), iterations, **default),
                               expected.float(), rtol=1e-4, atol=1e-5)


def test_dense_crf_chunked_equals_one_block():
    image, probs = _case(3, K=4, H=9, W=7)
    one_block = dense_crf(image, probs, 4, **PARAMS)
    # 5 rows a block: N = 9 * 7 pixels, 8 bytes a float64
    chunked = dense_crf(image, probs, 4, **PARAMS, memory_mb=9 * 7 * 8 * 5 / 2 ** 20)
    torch.testing.assert_close(chunked, one_block, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_conv_crf_matches_windowed_brute_force(kernel_size):
    image, probs = _case(4, H=5, W=6)
    expected = _brute_force(image, probs, 2, **PARAMS, window=kernel_size // 2)
    torch.testing.assert_close(conv_crf(image, probs, 2, **PARAMS, kernel_size=kernel_size),
                               expected, rtol=1e-9, atol=1e-10)


def test_conv_crf_with_full_window_is_dense_crf():
    image, probs = _case(5, K=4, H=6, W=8)
    torch.testing.assert_close(conv_crf(image, probs, 5, kernel_size=15),
                               dense_crf(image, probs, 5), rtol=1e-9, atol=1e-10)


def test_zero_iterations_and_zero_weights_return_probs():
    image, probs = _case(6)
    torch.testing.assert_close(dense_crf(image, probs, iterations=0), probs)
    torch.testing.assert_close(conv_crf(image, probs, iterations=0), probs)
    torch.testing.assert_close(dense_crf(image, probs, 3, w_gaussian=0.0, w_bilateral=0.0), probs)


def test_crf_fixes_a_blurry_edge():
    # A left/right two-colour image whose probabilities put the edge two columns too far right:
    # the appearance kernel pulls the misplaced columns to the colour of their side.
    H, W = 8, 12
    image = torch.zeros(3, H, W)
    image[:, :, 6:] = 255.0
    truth = torch.zeros(H, W, dtype=torch.long)
    truth[:, 6:] = 1
    p1 = torch.full((H, W), 0.1)
    p1[:, 8:] = 0.9
    p1[:, 6:8] = 0.45  # wrong, but not confident
    probs = torch.stack([1 - p1, p1])
    assert (probs.argmax(0) != truth).sum() == 2 * H
    for refine in (dense_crf, conv_crf):
        assert torch.equal(refine(image, probs).argmax(0), truth)


def test_output_is_a_distribution_and_keeps_dtype():
    image, probs = _case(7, K=5, H=33, W=47)
    for refine in (dense_crf, conv_crf):
        q = refine(image.float(), probs.float())
        assert q.shape == (5, 33, 47) and q.dtype == torch.float32
        torch.testing.assert_close(q.sum(0), torch.ones(33, 47))
        assert refine(image, probs).dtype == torch.float64


def test_bad_input_raises():
    image, probs = _case(8)
    for refine in (dense_crf, conv_crf):
        with pytest.raises(ValueError, match="same H, W"):
            refine(image[:, :3], probs)
        with pytest.raises(ValueError, match="RGB"):
            refine(image[:2], probs)
        with pytest.raises(ValueError, match="sum to 1"):
            refine(image, probs.log())  # logits, not probabilities
        with pytest.raises(ValueError, match=r"\[K, H, W\]"):
            refine(image, probs[None])
        with pytest.raises(ValueError, match="iterations"):
            refine(image, probs, iterations=-1)
        with pytest.raises(ValueError, match="theta_beta"):
            refine(image, probs, theta_beta=0.0)
    with pytest.raises(ValueError, match="odd"):
        conv_crf(image, probs, kernel_size=4)


def test_crf_figure_and_explorer():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from segcourse.viz import crf_figure
    from segcourse.widgets import crf_explorer

    image, probs = _case(9, K=3, H=8, W=10)
    image, probs = image.float() / 255, probs.float()
    mask = probs.argmax(0)                          # the network is right everywhere: mIoU 1
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]], dtype=np.uint8)
    fig = crf_figure(image, probs, mask, palette, iterations=0)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[2] == "network, mIoU 1.000" and titles[3] == "+ dense CRF, mIoU 1.000"
    plt.close(fig)
    explorer = crf_explorer(image[None].expand(2, -1, -1, -1), probs[None].expand(2, -1, -1, -1),
                            mask[None].expand(2, -1, -1), palette)
    assert len(explorer.children) == 2
    theta = crf_explorer(image[None], probs[None], mask[None], palette, theta_alpha=5.0)
    assert theta.children[0].children[1].children[1].value == 5.0   # second column: w appear, θα
    with pytest.raises(ValueError, match="unknown CRF parameter"):
        crf_explorer(image[None], probs[None], mask[None], palette, theta=1.0)
    plt.close("all")


@pytest.mark.parametrize("refine", ["dense_crf", "conv_crf"])
@pytest.mark.parametrize("kwargs, match", [
    ({"w_gaussian": -1.0}, "w_gaussian"),
    ({"w_bilateral": float("nan")}, "w_bilateral"),
    ({"theta_alpha": float("inf")}, "theta_alpha"),
    ({"iterations": True}, "iterations"),
    ({"image": "nan"}, "image must be finite"),
])
def test_nonsense_parameters_and_nan_images_are_refused(refine, kwargs, match):
    """A NaN image used to give NaN probabilities, a negative weight an anti-smoothing 'prior'."""
    import segcourse.crf as crf

    torch.manual_seed(0)
    image = torch.rand(3, 8, 8) * 255
    probs = torch.softmax(torch.randn(3, 8, 8), 0)
    if kwargs.get("image") == "nan":
        kwargs = {"image": image.clone().fill_(float("nan"))}
    args = {"image": image, "probs": probs, **kwargs}
    with pytest.raises(ValueError, match=match):
        getattr(crf, refine)(**args)
