"""SETR: position-embedding resampling by hand, the ViT encoder against HF transformers'
``ViTModel`` (random weights, no download), parameter counts, any input size, errors."""

import dataclasses

import pytest
import torch
import torch.nn as nn

from segcourse.models import build
from segcourse.models.setr import (
    ENCODERS,
    SETR,
    NaiveHead,
    PUPHead,
    ViTConfig,
    convert_hf_vit_state_dict,
    resize_pos_embed,
)


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- position embedding ----------------------------------------------------------------------

def test_resize_pos_embed_is_identity_on_the_trained_grid():
    torch.manual_seed(0)
    pos = torch.randn(1, 1 + 6 * 6, 5)
    torch.testing.assert_close(resize_pos_embed(pos, (6, 6)), pos, atol=0, rtol=0)


def test_resize_pos_embed_hand_computed_bicubic():
    # A 2 x 2 grid whose value is the column index, [[0, 1], [0, 1]], resampled to 2 x 4.
    # Rows: same size, unchanged. Columns, bicubic (Keys, a = -0.75), align_corners=False:
    # output column j samples source x = (j + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25 with
    # borders clamped. At x = 0.25 (t = 0.25 past column 0) the four taps [0, 0, 1, 1] have weights
    # [w(1.25), w(0.25), w(0.75), w(1.75)], so the value is w(0.75) + w(1.75) with
    # w(s) = (a+2)s^3 - (a+3)s^2 + 1 = 0.26171875 at s = 0.75 and
    # w(s) = a s^3 - 5a s^2 + 8a s - 4a = -0.03515625 at s = 1.75: 0.2265625.
    # At x = -0.25 only the last tap (column 1) is non-zero: w(1.25) = -0.10546875, an
    # undershoot; the other two follow by symmetry (1 - value).
    cls = torch.full((1, 1, 1), 7.0)
    grid = torch.tensor([[0.0, 1.0], [0.0, 1.0]]).reshape(1, 4, 1)  # (1, g*g, D=1)
    out = resize_pos_embed(torch.cat([cls, grid], dim=1), (2, 4))
    row = torch.tensor([-0.10546875, 0.2265625, 0.7734375, 1.10546875])
    assert out[0, 0, 0] == 7.0  # the class token's embedding is not resampled
    torch.testing.assert_close(out[0, 1:, 0], torch.cat([row, row]), atol=1e-6, rtol=0)


def test_resize_pos_embed_rejects_non_square_grids():
    with pytest.raises(ValueError, match="square"):
        resize_pos_embed(torch.zeros(1, 1 + 6, 4), (3, 3))


# --- the encoder is ViT: same features as HF's ViTModel ---------------------------------------

def hf_vit(config: ViTConfig):
    transformers = pytest.importorskip("transformers")
    return transformers.ViTModel(transformers.ViTConfig(
        hidden_size=config.dim, num_hidden_layers=config.depth,
        num_attention_heads=config.num_heads, intermediate_size=config.mlp_ratio * config.dim,
        image_size=config.image_size, patch_size=config.patch_size,
        layer_norm_eps=1e-6), add_pooling_layer=False)  # ViT's own eps; HF defaults to 1e-12


@pytest.mark.parametrize("size", [(64, 64), (48, 80), (96, 40)])
def test_encoder_equals_hf_vit_at_any_grid(size):
    torch.manual_seed(0)
    config = ENCODERS["small"]
    hf = hf_vit(config).eval()
    with torch.no_grad():  # untrained LayerNorms (1, 0) would hide a swapped weight/bias
        for m in hf.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    model = SETR(3, decoder="pup", encoder=config).eval()
    model.encoder.load_state_dict(convert_hf_vit_state_dict(hf.state_dict()))  # strict
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        # HF resamples its position embedding with the same bicubic interpolation
        tokens = hf(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state[:, 1:]
        ours = model.encoder(x)
    h, w = size[0] // 8, size[1] // 8
    assert ours.shape == (2, config.dim, h, w)
    torch.testing.assert_close(ours.flatten(2).transpose(1, 2), tokens, atol=1e-5, rtol=1e-5)


def test_convert_hf_vit_rejects_other_state_dicts():
    with pytest.raises(ValueError, match="not a HF ViT"):
        convert_hf_vit_state_dict({"backbone.conv1.weight": torch.zeros(1)})


# --- sizes ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["vit_b16", "vit_l16"])
def test_encoder_parameter_counts_match_hf_vit(name):
    config = ENCODERS[name]
    with torch.device("meta"):  # shapes only
        ours = SETR(150, encoder=name).encoder
        hf = hf_vit(config)
    assert count(ours) == count(hf)
    if name == "vit_b16":
        # ViT-B/16: "86M" (Dosovitskiy et al. 2021, Table 1); without its ImageNet head
        # HF's ViTModel has exactly 85,798,656
        assert count(ours) == 85_798_656


@pytest.mark.parametrize("name", ["setr_naive", "setr_pup"])
def test_registry_paper_switch_builds_vit_l16(name):
    with torch.device("meta"):
        assert build(name, 19).config == ENCODERS["small"]
        assert build(name, 19, paper=True).config == ENCODERS["vit_l16"]
        assert build(name, 19, encoder="vit_b16").config == ENCODERS["vit_b16"]
        # a row, then fields by keyword: ViT-L/16 at half depth
        half = build(name, 19, paper=True, depth=12)
        assert half.config == dataclasses.replace(ENCODERS["vit_l16"], depth=12)
        assert len(half.encoder.blocks) == 12
    with pytest.raises(ValueError, match="unknown SETR encoder"):
        build(name, 19, encoder="vit_h14")


def test_decoder_parameter_counts_by_hand():
    D, C, K = 1024, 256, 150  # ViT-L width, decoder width, ADE20K classes
    # naive: 1x1 conv D->C (no bias, BN follows) + BN (2C) + 1x1 conv C->K with bias
    assert count(NaiveHead(D, C, K)) == D * C + 2 * C + C * K + K
    # PUP with P = 16: four 3x3 conv + BN (the first from D, then from C) + 1x1 classifier
    assert count(PUPHead(D, C, K, 16)) == (9 * D * C + 2 * C) + 3 * (9 * C * C + 2 * C) + C * K + K


# --- the model contract -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["setr_naive", "setr_pup"])
@pytest.mark.parametrize("size", [(97, 131), (33, 47), (64, 64)])
def test_any_size_gives_input_size_logits(name, size):
    model = build(name, num_classes=4).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size)).shape == (1, 4, *size)


def test_padding_does_not_change_the_visible_pixels_logits():
    # A 60 x 60 input is padded to 64 x 64 and cropped back: its logits are the top-left corner
    # of the logits of the same image explicitly zero-padded to 64 x 64.
    torch.manual_seed(0)
    model = SETR(3, decoder="pup").eval()
    x = torch.randn(1, 3, 60, 60)
    padded = nn.functional.pad(x, (0, 4, 0, 4))
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(padded)[..., :60, :60])


def test_pup_upsamples_in_log2_p_steps():
    ups = [m for m in PUPHead(32, 16, 3, 16) if isinstance(m, nn.Upsample)]
    assert len(ups) == 4 and all(u.scale_factor == 2 for u in ups)
    with pytest.raises(ValueError, match="power of 2"):
        PUPHead(32, 16, 3, 12)


@pytest.mark.parametrize("decoder", ["naive", "pup"])
def test_gradients_reach_every_parameter(decoder):
    torch.manual_seed(0)
    model = SETR(4, in_channels=1, decoder=decoder)
    logits = model(torch.randn(2, 1, 40, 56))
    nn.functional.cross_entropy(logits, torch.randint(0, 4, (2, 40, 56))).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert missing == []


def test_clear_errors():
    model = SETR(3)
    with pytest.raises(ValueError, match="B, C, H, W"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="3 channels"):
        model(torch.randn(1, 4, 64, 64))
    with pytest.raises(ValueError, match="floating"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="at least 32"):
        model(torch.randn(1, 3, 64, 20))
    with pytest.raises(ValueError, match="unknown SETR decoder"):
        SETR(3, decoder="mla")
    with pytest.raises(ValueError, match="unknown SETR encoder"):
        SETR(3, encoder="vit_h14")
