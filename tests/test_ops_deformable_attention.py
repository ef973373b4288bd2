"""Multi-scale deformable attention: a brute-force bilinear loop, HF's pure-PyTorch function,
the reference initialisation, and bad inputs."""

import math

import pytest
import torch

from segcourse.ops.deformable_attention import (
    MultiScaleDeformableAttention,
    multi_scale_deformable_attention,
)


def bilinear(image, x, y):
    """Read ``image [D, h, w]`` at the pixel-coordinate point (x, y), zeros outside: the four
    neighbouring pixel centres, each weighted by the area of the opposite rectangle."""
    D, h, w = image.shape
    x0, y0 = math.floor(x), math.floor(y)
    total = torch.zeros(D, dtype=image.dtype)
    for yy in (y0, y0 + 1):
        for xx in (x0, x0 + 1):
            if 0 <= yy < h and 0 <= xx < w:
                total += (1 - abs(x - xx)) * (1 - abs(y - yy)) * image[:, yy, xx]
    return total


def loop_reference(value, shapes, locations, weights):
    """Eq. 3 of Deformable DETR, one query, head, level and point at a time."""
    B, S, M, D = value.shape
    Q, P = locations.shape[1], locations.shape[4]
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(B, Q, M, D, dtype=value.dtype)
    for b in range(B):
        for q in range(Q):
            for m in range(M):
                for lev, (h, w) in enumerate(shapes):
                    image = value[b, starts[lev]:starts[lev + 1], m].T.reshape(D, h, w)
                    for k in range(P):
                        x, y = locations[b, q, m, lev, k].tolist()
                        # normalised (0 = left edge, 1 = right edge) -> pixel coordinates
                        sample = bilinear(image, x * w - 0.5, y * h - 0.5)
                        out[b, q, m] += weights[b, q, m, lev, k] * sample
    return out.reshape(B, Q, M * D)


def random_inputs(seed=0, B=2, Q=3, M=2, D=3, P=2, shapes=((3, 5), (2, 3), (1, 2))):
    g = torch.Generator().manual_seed(seed)
    S = sum(h * w for h, w in shapes)
    value = torch.randn(B, S, M, D, generator=g, dtype=torch.float64)
    # some points fall outside [0, 1]: they must read zeros (partly, near the border)
    locations = torch.rand(B, Q, M, len(shapes), P, 2, generator=g, dtype=torch.float64)
    locations = locations * 1.4 - 0.2
    weights = torch.rand(B, Q, M, len(shapes), P, generator=g, dtype=torch.float64)
    return value, list(shapes), locations, weights


def test_equals_brute_force_loop():
    value, shapes, locations, weights = random_inputs()
    ours = multi_scale_deformable_attention(value, shapes, locations, weights)
    torch.testing.assert_close(ours, loop_reference(value, shapes, locations, weights),
                               rtol=1e-10, atol=1e-10)


def test_sampling_at_a_pixel_centre_reads_that_pixel():
    # hand-checkable: one level 2 x 3, one point at the centre of pixel (1, 2), weight 0.5
    value = torch.arange(1.0, 7.0).view(1, 6, 1, 1)       # pixel (i, j) holds 3 i + j + 1
    locations = torch.tensor([(2 + 0.5) / 3, (1 + 0.5) / 2]).view(1, 1, 1, 1, 1, 2)
    out = multi_scale_deformable_attention(value, [(2, 3)], locations, torch.full((1,) * 5, .5))
    assert out.item() == pytest.approx(0.5 * 6.0)
    # half-way between pixels (0, 0) and (0, 1): their mean 1.5; on the left edge: half of
    # pixel (0, 0) plus half of the zero outside
    for x, expected in ((1.0 / 3, 1.5), (0.0, 0.5)):
        loc = torch.tensor([x, 0.25]).view(1, 1, 1, 1, 1, 2)
        assert multi_scale_deformable_attention(value, [(2, 3)], loc, torch.ones((1,) * 5)) \
            .item() == pytest.approx(expected)


def test_equals_hf_pure_pytorch_function():
    mod = pytest.importorskip("transformers.models.mask2former.modeling_mask2former")
    value, shapes, locations, weights = random_inputs(seed=1, B=1, Q=5, M=4, D=2, P=3)
    ours = multi_scale_deformable_attention(value, torch.tensor(shapes), locations, weights)
    theirs = mod.multi_scale_deformable_attention(value, shapes, locations, weights)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_module_equals_hf_module():
    mod = pytest.importorskip("transformers.models.mask2former.modeling_mask2former")
    torch.manual_seed(0)
    ours = MultiScaleDeformableAttention(embed_dim=8, num_heads=2, num_levels=3, num_points=4)
    theirs = mod.Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention(8, 2, 3, 4)
    with torch.no_grad():  # random offsets and weights, so the points are really spread out
        for p in ours.parameters():
            p.normal_(0, 0.5)
    theirs.load_state_dict(ours.state_dict())
    shapes = [(4, 6), (2, 3), (1, 2)]
    S = sum(h * w for h, w in shapes)
    x, ref = torch.randn(2, S, 8), torch.rand(2, S, 3, 2)
    expected, _ = theirs(x, encoder_hidden_states=x, reference_points=ref,
                         spatial_shapes_list=shapes)
    torch.testing.assert_close(ours(x, ref, x, shapes), expected, rtol=1e-5, atol=1e-5)


def test_reference_initialisation():
    m = MultiScaleDeformableAttention(embed_dim=16, num_heads=8, num_levels=3, num_points=4)
    offsets = m.sampling_offsets.bias.view(8, 3, 4, 2)
    # head 0 looks right (+x), head 2 down (+y), head 1 along the diagonal; point k at k pixels
    torch.testing.assert_close(offsets[0, 1, :, 0], torch.tensor([1.0, 2.0, 3.0, 4.0]))
    torch.testing.assert_close(offsets[2, 0, 2], torch.tensor([0.0, 3.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(offsets[1, 2, 0], torch.tensor([1.0, 1.0]))
    assert (offsets[:, 0] == offsets[:, 2]).all()               # the same at every level
    assert m.sampling_offsets.weight.abs().sum() == 0
    assert m.attention_weights.weight.abs().sum() == 0


@pytest.mark.parametrize("bad, match", [
    ("shapes", "cover"), ("locations", "sampling_locations must have shape"),
    ("weights", "attention_weights must have shape"), ("value", "value must be a 4-D"),
])
def test_bad_inputs(bad, match):
    value, shapes, locations, weights = random_inputs()
    if bad == "shapes":
        shapes = shapes[:-1] + [(2, 2)]
    elif bad == "locations":
        locations = locations[:, :, :, :2]
    elif bad == "weights":
        weights = weights[..., :1]
    else:
        value = value[0]
    with pytest.raises(ValueError, match=match):
        multi_scale_deformable_attention(value, shapes, locations, weights)


def test_module_bad_arguments():
    with pytest.raises(ValueError, match="divisible"):
        MultiScaleDeformableAttention(embed_dim=10, num_heads=4)
    m = MultiScaleDeformableAttention(embed_dim=8, num_heads=2, num_levels=2, num_points=1)
    with pytest.raises(ValueError, match="expected 2 levels"):
        m(torch.randn(1, 6, 8), torch.rand(1, 6, 2, 2), torch.randn(1, 6, 8), [(2, 3)])
