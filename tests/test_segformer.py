"""SegFormer against HF transformers (logits and parameter counts) and the published sizes.

The reference is ``transformers.SegformerForSemanticSegmentation`` built from a
``SegformerConfig`` with random weights (nothing is downloaded).
"""

import dataclasses

import pytest
import torch
import torch.nn as nn

from segcourse.models import build
from segcourse.models.segformer import (
    VARIANTS,
    EfficientSelfAttention,
    MixFFN,
    SegFormer,
    convert_hf_state_dict,
)

transformers = pytest.importorskip("transformers")


def hf_config(variant: str, num_labels: int):
    v = VARIANTS[variant]
    return transformers.SegformerConfig(
        hidden_sizes=list(v.hidden_sizes), depths=list(v.depths),
        num_attention_heads=list(v.num_heads), sr_ratios=list(v.sr_ratios),
        decoder_hidden_size=v.decoder_width, num_labels=num_labels)


def random_hf_model(variant: str, num_labels: int = 7) -> nn.Module:
    torch.manual_seed(0)
    hf = transformers.SegformerForSemanticSegmentation(hf_config(variant, num_labels)).eval()
    with torch.no_grad():
        for m in hf.modules():
            # make every parameter matter: untrained norms (1, 0) and BN statistics (0, 1) would
            # hide a swapped weight/bias or mean/var
            if isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return hf


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- equivalence with HF ----------------------------------------------------------------------

@pytest.mark.parametrize("fold", [False, True], ids=["published", "folded"])
@pytest.mark.parametrize("variant, size", [("b0", (97, 131)), ("b1", (64, 48)), ("b2", (33, 47))])
def test_logits_equal_hf(variant, size, fold, monkeypatch):
    # random_hf_model randomises BatchNorm's running statistics, which the folded decoder
    # (tests/test_segformer_fold.py) builds into its per-stage maps
    hf = random_hf_model(variant)
    ours = SegFormer(7, variant=variant).eval()
    ours.load_state_dict(convert_hf_state_dict(hf.state_dict()))  # strict: every key maps
    ours.decoder.fold = fold
    if fold:  # make sure the folded path is the one that runs
        monkeypatch.setattr(ours.decoder, "fused", None)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected = hf(pixel_values=x).logits  # HF stops at 1/4 resolution
        quarter = ours.forward_quarter(x)
        full = ours(x)
    assert quarter.shape == expected.shape == (2, 7, -(-size[0] // 4), -(-size[1] // 4))
    torch.testing.assert_close(quarter, expected, atol=1e-4, rtol=0)
    # our forward is HF's logits bilinearly upsampled to the input, as HF's loss does
    upsampled = nn.functional.interpolate(expected, size=size, mode="bilinear", align_corners=False)
    torch.testing.assert_close(full, upsampled, atol=1e-4, rtol=0)


def test_only_difference_from_hf_is_layernorm_eps():
    # The original MiT uses eps=1e-6 in its block and stage LayerNorms, HF the default 1e-5.
    # With HF's eps set to ours the mapping is exact up to float rounding.
    hf = random_hf_model("b0")
    ours = SegFormer(7, variant="b0").eval()
    ours.load_state_dict(convert_hf_state_dict(hf.state_dict()))
    ours_eps = {name: m.eps for name, m in ours.named_modules() if isinstance(m, nn.LayerNorm)}
    hf_norms = [m for m in hf.modules() if isinstance(m, nn.LayerNorm)]
    assert sorted(set(ours_eps.values())) == [1e-6, 1e-5] and len(hf_norms) == len(ours_eps)
    for name, m in hf.named_modules():
        # HF names the kv-reduction norm "sequence_reduction" (>= 5) or "attention.self" (< 5)
        kept = ("patch_embeddings", "sequence_reduction", "attention.self")
        if isinstance(m, nn.LayerNorm) and not any(k in name for k in kept):
            m.eps = 1e-6
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_quarter(x), hf(pixel_values=x).logits,
                                   atol=2e-6, rtol=0)


def test_convert_accepts_old_hf_names_and_mit_checkpoints():
    # transformers < 5 and the checkpoint files on the Hub use the names below; rename the
    # current ones back to them and check the conversion lands on the same keys.
    hf = random_hf_model("b0")
    new = hf.state_dict()
    old_names = [
        ("stages.{i}.patch_embeddings.", "encoder.patch_embeddings.{i}."),
        ("stages.{i}.blocks.", "encoder.block.{i}."),
        ("stages.{i}.layer_norm.", "encoder.layer_norm.{i}."),
    ]
    old = {}
    for key, value in new.items():
        for i in range(4):
            for a, b in old_names:
                key = key.replace(a.format(i=i), b.format(i=i))
        for a, b in [("attention.q_proj", "attention.self.query"),
                     ("attention.k_proj", "attention.self.key"),
                     ("attention.v_proj", "attention.self.value"),
                     ("attention.sequence_reduction.sequence_reduction", "attention.self.sr"),
                     ("attention.sequence_reduction.layer_norm", "attention.self.layer_norm"),
                     ("attention.o_proj", "attention.output.dense"),
                     ("mlp.fc1", "mlp.dense1"), ("mlp.fc2", "mlp.dense2"),
                     ("layernorm_before", "layer_norm_1"), ("layernorm_after", "layer_norm_2"),
                     ("linear_projections", "linear_c")]:
            key = key.replace(a, b)
        old[key] = value
    assert "segformer.encoder.block.0.0.attention.self.query.weight" in old
    assert convert_hf_state_dict(old).keys() == convert_hf_state_dict(new).keys()

    # an ImageNet MiT (nvidia/mit-b*): its classifier is dropped, the encoder loads strictly
    mit = transformers.SegformerForImageClassification(hf_config("b0", 1000))
    converted = convert_hf_state_dict(mit.state_dict())
    model = SegFormer(3, variant="b0")
    model.encoder.load_state_dict({k.removeprefix("encoder."): v for k, v in converted.items()})

    with pytest.raises(ValueError, match="not a HF SegFormer"):
        convert_hf_state_dict({"backbone.layer1.weight": torch.zeros(1)})


# --- sizes ------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant, published", [("b0", 3.8), ("b5", 84.7)])
def test_parameter_counts_match_hf_and_paper(variant, published):
    # Published: SegFormer paper (Xie et al. 2021) Table 4, ADE20K (150 classes):
    # SegFormer-B0 3.8 M, SegFormer-B5 84.7 M parameters.
    with torch.device("meta"):  # counting needs shapes only
        ours = SegFormer(150, variant=variant)
        hf = transformers.SegformerForSemanticSegmentation(hf_config(variant, 150))
    assert count(ours) == count(hf)
    assert count(ours.encoder) == count(hf.segformer)
    assert round(count(ours) / 1e6, 1) == published


def test_variant_table_matches_the_paper():
    # Paper Table 6: widths C_i, depths L_i; decoder width 256 for B0/B1 and 768 for B2..B5.
    assert VARIANTS["b0"].hidden_sizes == (32, 64, 160, 256)
    wide = {VARIANTS[v].hidden_sizes for v in ("b1", "b2", "b3", "b4", "b5")}
    assert wide == {(64, 128, 320, 512)}
    assert [VARIANTS[v].depths for v in VARIANTS] == [
        (2, 2, 2, 2), (2, 2, 2, 2), (3, 4, 6, 3), (3, 4, 18, 3), (3, 8, 27, 3), (3, 6, 40, 3)]
    assert [VARIANTS[v].decoder_width for v in VARIANTS] == [256, 256, 768, 768, 768, 768]
    assert all(VARIANTS[v].sr_ratios == (8, 4, 2, 1) for v in VARIANTS)


# --- pieces -----------------------------------------------------------------------------------

def test_efficient_attention_shrinks_keys_by_r_squared_and_matches_explicit_softmax():
    torch.manual_seed(0)
    attn = EfficientSelfAttention(dim=16, num_heads=2, sr_ratio=4).eval()
    x = torch.randn(2, 16 * 24, 16)  # a 16 x 24 token grid
    weights = attn.attention_map(x, 16, 24)
    assert weights.shape == (2, 2, 16 * 24, (16 // 4) * (24 // 4))  # N x N / R^2
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 16 * 24))
    # forward (fused SDPA) equals softmax(q k^T / sqrt(d)) v written out by hand
    _, _, v = attn.queries_keys_values(x, 16, 24)
    by_hand = attn.proj((weights @ v).transpose(1, 2).reshape(2, 16 * 24, 16))
    torch.testing.assert_close(attn(x, 16, 24), by_hand, atol=1e-5, rtol=1e-5)


def test_mix_ffn_depthwise_conv_sees_position():
    # Without the 3x3 depthwise conv, Mix-FFN would be a per-token MLP: equal tokens would give
    # equal outputs wherever they are. With it, zero padding makes corners differ from centres.
    torch.manual_seed(0)
    ffn = MixFFN(8, 32)
    x = torch.ones(1, 5 * 5, 8)  # every token identical
    out = ffn(x, 5, 5).reshape(5, 5, 8)
    assert not torch.allclose(out[0, 0], out[2, 2])
    torch.testing.assert_close(out[1, 1], out[2, 2])  # interior tokens see the same neighbours
    assert ffn.dwconv.groups == ffn.dwconv.in_channels == 32


def test_single_sr_ratio_breaks_on_small_inputs_but_published_ratios_do_not():
    # The widely copied version reduces keys by 4 in every stage; stage 4 of a 32 x 32 input is
    # a 1 x 1 map that a 4 x 4 conv cannot reduce.
    wrong = SegFormer(3, variant=dataclasses.replace(VARIANTS["b0"], sr_ratios=(4, 4, 4, 4)))
    with pytest.raises(RuntimeError):
        wrong(torch.randn(1, 3, 32, 32))
    assert SegFormer(3)(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)


def test_stochastic_depth_grows_linearly_to_drop_path():
    model = SegFormer(3, variant="b2", drop_path=0.1)
    rates = [block.drop_path.p for stage in model.encoder.stages for block in stage.blocks]
    assert len(rates) == 16 and rates[0] == 0.0 and rates[-1] == pytest.approx(0.1)
    assert rates == sorted(rates)


def test_registry_paper_switch_variants_and_overrides():
    # B0 is both the CPU default and the paper configuration; variant picks a published row and
    # keywords replace fields of that row
    with torch.device("meta"):
        assert build("segformer", 5).config == VARIANTS["b0"]
        assert build("segformer", 5, paper=True).config == VARIANTS["b0"]
        b2 = build("segformer", 5, paper=True, variant="b2", drop_path=0.0)
    assert b2.config == dataclasses.replace(VARIANTS["b2"], drop_path=0.0)
    assert {block.drop_path.p for stage in b2.encoder.stages for block in stage.blocks} == {0.0}
    with pytest.raises(ValueError, match="unknown SegFormer variant"):
        build("segformer", 5, variant="b9")


# --- the model contract -----------------------------------------------------------------------

@pytest.mark.parametrize("size", [(97, 131), (33, 47), (32, 32)])
def test_any_size_gives_input_size_logits(size):
    model = build("segformer", num_classes=4).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size)).shape == (1, 4, *size)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = SegFormer(4, in_channels=1, drop_path=0.0)
    logits = model(torch.randn(2, 1, 40, 56))
    nn.functional.cross_entropy(logits, torch.randint(0, 4, (2, 40, 56))).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert missing == []


def test_clear_errors():
    model = SegFormer(3)
    with pytest.raises(ValueError, match="B, C, H, W"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="3 channels"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="floating"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.long))
    with pytest.raises(ValueError, match="at least 32"):
        model(torch.randn(1, 3, 16, 64))
    with pytest.raises(ValueError, match="unknown SegFormer variant"):
        SegFormer(3, variant="b9")
