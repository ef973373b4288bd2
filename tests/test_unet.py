"""U-Net and Attention U-Net: reference parameter counts, odd sizes, the attention gate."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from segcourse.models import build
from segcourse.models.unet import (
    PAPER,
    SMALL,
    AttentionGate,
    AttentionUNet,
    UNet,
    UNetConfig,
    pad_to,
)

# --- published sizes -----------------------------------------------------------------------------

def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_count_matches_milesial_transposed():
    # milesial/Pytorch-UNet @ 21d7850 (unet/unet_model.py, unet_parts.py): UNet(n_channels=3,
    # n_classes=2, bilinear=False), features 64..1024, convs without bias + BatchNorm, 2x2
    # transposed convs with bias: 31,037,698 parameters (counted by instantiating that code).
    assert count(UNet(2, in_channels=3, config=PAPER)) == 31_037_698
    assert count(build("unet", 2, paper=True)) == 31_037_698
    # One input channel instead of three removes 2 x 64 x 3 x 3 weights of the first conv.
    assert count(UNet(2, in_channels=1, base_channels=64)) == 31_037_698 - 1152


def test_parameter_count_matches_milesial_bilinear():
    # Same code, UNet(n_channels=3, n_classes=2, bilinear=True): 17,263,042 parameters.
    with torch.device("meta"):
        assert count(build("unet", 2, paper=True, bilinear=True)) == 17_263_042
        assert count(UNet(2, 3, base_channels=64, bilinear=True)) == 17_263_042


def test_parameter_count_of_a_tiny_unet_by_hand():
    # depth 1, base 2, 3 -> 2 classes, transposed conv. Conv3x3 (no bias) + BN (2 per channel).
    inc = (3 * 2 * 9 + 2 * 2) + (2 * 2 * 9 + 2 * 2)          # 3->2, 2->2
    down = (2 * 4 * 9 + 2 * 4) + (4 * 4 * 9 + 2 * 4)          # 2->4, 4->4
    # convT 4->2 (k 2), then the concatenation 4->2 and 2->2
    up = (4 * 2 * 4 + 2) + (4 * 2 * 9 + 2 * 2) + (2 * 2 * 9 + 2 * 2)
    out = 2 * 2 + 2
    assert count(UNet(2, 3, base_channels=2, depth=1)) == inc + down + up + out


def test_config_and_keyword_arguments_build_the_same_network():
    # The chapters call UNet(num_classes=..., base_channels=...): SMALL with that field replaced,
    # the same network (same seed, same weights) as the config spelled out.
    assert SMALL == UNetConfig(base_channels=16) and PAPER == UNetConfig()
    assert UNet(5, base_channels=8).config == replace(SMALL, base_channels=8)
    for cls in (UNet, AttentionUNet):
        torch.manual_seed(0)
        a = cls(5, config=UNetConfig(base_channels=4, depth=2, bilinear=True)).state_dict()
        torch.manual_seed(0)
        b = cls(5, base_channels=4, depth=2, bilinear=True).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="valid fields"):
        UNet(5, base_channel=8)  # misspelt


# --- sizes ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("model_cls", [UNet, AttentionUNet])
@pytest.mark.parametrize("bilinear", [False, True])
@pytest.mark.parametrize("depth", [1, 3, 5])
def test_any_size_gives_input_size_logits(model_cls, bilinear, depth):
    model = model_cls(3, in_channels=2, base_channels=4, depth=depth, bilinear=bilinear).eval()
    smallest = max(32, 2 ** (depth + 1))  # the contract: 32 px, 2 x 2 at the bottleneck
    for h, w in [(100, 90), (97, 131), (33, 47), (smallest, smallest + 1)]:
        if min(h, w) < smallest:
            continue
        assert model(torch.rand(1, 2, h, w)).shape == (1, 3, h, w)


def test_too_small_input_is_refused():
    with pytest.raises(ValueError, match="at least 32"):
        UNet(2, base_channels=4, depth=4)(torch.rand(1, 3, 31, 40))
    with pytest.raises(ValueError, match="at least 64 .depth 5"):
        UNet(2, base_channels=4, depth=5)(torch.rand(1, 3, 63, 64))


@pytest.mark.parametrize("model_cls", [UNet, AttentionUNet])
def test_smallest_input_trains_at_batch_one(model_cls):
    model = model_cls(2, base_channels=4).train()  # depth 4: the bottleneck is 2 x 2
    model(torch.rand(1, 3, 32, 32)).sum().backward()


def test_pad_to_pads_the_missing_last_row_and_column():
    x = torch.arange(4.0).reshape(1, 1, 2, 2)
    padded = pad_to(x, torch.zeros(1, 1, 3, 3))
    expected = torch.tensor([[0.0, 1.0, 0.0], [2.0, 3.0, 0.0], [0.0, 0.0, 0.0]])
    assert torch.equal(padded[0, 0], expected)
    with pytest.raises(RuntimeError):
        pad_to(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 3, 3))


def test_skips_carry_information():
    # Change one input pixel: in U-Net the full-resolution skip carries it to the output pixel
    # directly, so the logits there change even if the deeper path is cut off.
    torch.manual_seed(0)
    model = UNet(2, 1, base_channels=4, depth=2).eval()
    x = torch.zeros(1, 1, 32, 32)
    y = x.clone()
    y[0, 0, 10, 10] = 1
    with torch.no_grad():
        for p in model.downs.parameters():
            p.zero_()  # the encoder below level 0 now outputs only constants
        diff = (model(x) - model(y)).abs().sum(1)[0]
    assert diff[10, 10] > 0 and diff[25, 25] == 0  # local change, carried by the skip


# --- the attention gate --------------------------------------------------------------------------

def _gate_by_hand(gate: AttentionGate, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Oktay et al. Eq. 1-2 written as loops over the gating grid, for one image."""
    Wx = gate.theta.weight.double()      # (F_int, F_x, 2, 2)
    Wg = gate.phi.weight.double()[:, :, 0, 0]
    bg = gate.phi.bias.double()
    psi = gate.psi.weight.double()[0, :, 0, 0]
    bpsi = gate.psi.bias.double()[0]
    x, g = x[0].double(), g[0].double()
    h, w = x.shape[1] // 2, x.shape[2] // 2
    q = torch.zeros(h, w, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            patch = x[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2]         # (F_x, 2, 2)
            wx = (Wx * patch).sum(dim=(1, 2, 3))                   # W_x^T x
            wg = Wg @ g[:, i, j] + bg                               # W_g^T g + b_g
            q[i, j] = psi @ torch.relu(wx + wg) + bpsi
    return torch.sigmoid(q)


def test_attention_coefficients_match_the_paper_formula():
    torch.manual_seed(0)
    gate = AttentionGate(skip_channels=6, gating_channels=10).eval()
    x = torch.randn(1, 6, 25, 23)   # odd skip
    g = torch.randn(1, 10, 12, 11)  # one level coarser: 25 // 2, 23 // 2
    out, alpha = gate(x, g)
    coarse = _gate_by_hand(gate, x, g).float()[None, None]
    # The coefficients are computed on the gating grid and resampled to the skip's size.
    expected = F.interpolate(coarse, size=(25, 23), mode="bilinear", align_corners=False)
    assert alpha.shape == (1, 1, 25, 23)
    torch.testing.assert_close(alpha, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out, gate.out(expected * x), rtol=1e-5, atol=1e-5)


def test_attention_maps_are_exposed_finest_first():
    model = build("attention_unet", 3).eval()
    model(torch.rand(2, 3, 100, 90))
    shapes = [tuple(a.shape) for a in model.attention_maps]
    assert shapes == [(2, 1, 100, 90), (2, 1, 50, 45), (2, 1, 25, 22), (2, 1, 12, 11)]
    assert all(((a > 0) & (a < 1)).all() and not a.requires_grad for a in model.attention_maps)


def test_a_gate_can_close_a_skip():
    # With psi's bias very negative, alpha ~ 0: the gated skip is W(0) = the 1x1 conv's bias
    # through BatchNorm, the same for every input.
    gate = AttentionGate(4, 8).eval()
    with torch.no_grad():
        gate.psi.bias.fill_(-100.0)
    a, _ = gate(torch.randn(1, 4, 16, 16), torch.randn(1, 8, 8, 8))
    b, _ = gate(torch.randn(1, 4, 16, 16), torch.randn(1, 8, 8, 8))
    torch.testing.assert_close(a, b)
