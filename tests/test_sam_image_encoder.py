"""SAM's image encoder (segcourse.models.sam_image_encoder): windows and relative positions by
hand, equality with HF transformers' SamVisionEncoder (random weights, no download), HF's
parameter counts for vit_b / vit_l / vit_h, the official checkpoint's names, bad inputs."""

from functools import partial

import pytest
import torch

from segcourse.models.config import configure
from segcourse.models.sam_image_encoder import (
    ENCODERS,
    SamBlock,
    SamEncoderConfig,
    SamImageEncoder,
    config_from_hf,
    convert_hf_encoder_state_dict,
    convert_official_encoder_state_dict,
    rel_pos_table,
    window_partition,
    window_unpartition,
)

# 96-px images, 16-px patches: a 6 x 6 grid in 4 x 4 windows, padded to 8 x 8; block 1 global
SMALL = SamEncoderConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                         image_size=96, window_size=4, global_attn_indexes=(1,),
                         output_channels=24, mlp_dim=40)
# 64 px: a 4 x 4 grid in 3 x 3 windows (padded to 6 x 6), two global blocks, no qkv bias
SMALL_64 = SamEncoderConfig(hidden_size=24, num_hidden_layers=4, num_attention_heads=2,
                            image_size=64, window_size=3, global_attn_indexes=(0, 3),
                            output_channels=16, qkv_bias=False)


def randomise(model: torch.nn.Module, std: float = 0.5) -> torch.nn.Module:
    """Every weight random: position tables and LayerNorms no longer at their zero / one init."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    return model


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- pieces by hand ------------------------------------------------------------------------------

def test_rel_pos_table_by_hand():
    # 2 positions: offsets -1, 0, 1 are rows 0, 1, 2; table[i, j] = rel_pos[i - j + 1]
    rel_pos = torch.tensor([[10.0], [20.0], [30.0]])
    table = rel_pos_table(2, 2, rel_pos)
    assert table[..., 0].tolist() == [[20.0, 10.0], [30.0, 20.0]]
    # 3 rows resized to 5 (linear, align_corners=False) for 3 positions
    resized = rel_pos_table(3, 3, rel_pos)[..., 0]
    assert resized[2, 0].item() == 30.0 and resized[0, 2].item() == 10.0
    assert resized[1, 1].item() == pytest.approx(20.0)


def test_window_partition_pads_and_unpartition_inverts():
    x = torch.randn(2, 5, 3, 4)
    windows, padded = window_partition(x, 2)
    assert padded == (6, 4) and windows.shape == (2 * 3 * 2, 2, 2, 4)
    assert torch.equal(windows[0], x[0, :2, :2])  # first window of the first image
    assert torch.equal(windows[5, 1], torch.zeros(2, 4))  # bottom padding row of image 0
    assert torch.equal(window_unpartition(windows, 2, padded, (5, 3)), x)


@pytest.mark.parametrize("window", [2, 0])
def test_windowed_block_mixes_only_inside_its_window(window):
    c = configure(SMALL, hidden_size=8, num_attention_heads=2, image_size=80)  # 5 x 5 grid
    block = randomise(SamBlock(c, window), std=0.2).eval()
    x = torch.randn(1, 5, 5, 8)
    y = x.clone()
    y[0, 0, 0, 0] += 1.0  # one channel: a shift of all channels would vanish in LayerNorm
    with torch.no_grad():
        changed = (block(x) - block(y)).abs().sum(-1)[0] > 0
    expected = torch.ones(5, 5, dtype=torch.bool)
    if window:
        expected[:] = False
        expected[:2, :2] = True  # the 2 x 2 window holding token (0, 0)
    assert torch.equal(changed, expected)


def test_tiny_shapes_and_gradients():
    model = randomise(SamImageEncoder(ENCODERS["tiny"]), std=0.1)
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 64, 8, 8)                # the tiny neck is 64 wide
    out.square().mean().backward()
    for name in ("pos_embed", "blocks.0.attn.rel_pos_h", "blocks.1.attn.rel_pos_w"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name


# --- HF transformers -----------------------------------------------------------------------------

transformers = pytest.importorskip("transformers")
from transformers.models.sam.modeling_sam import SamVisionEncoder  # noqa: E402


def hf_config(c: SamEncoderConfig, attn_implementation: str = "eager"):
    return transformers.SamVisionConfig(
        hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads, mlp_dim=c.mlp_dim, image_size=c.image_size,
        patch_size=c.patch_size, window_size=c.window_size,
        global_attn_indexes=list(c.global_attn_indexes), output_channels=c.output_channels,
        qkv_bias=c.qkv_bias, layer_norm_eps=c.layer_norm_eps,
        attn_implementation=attn_implementation)


@pytest.mark.parametrize("config,batch,attn", [(SMALL, 2, "eager"), (SMALL, 1, "sdpa"),
                                               (SMALL_64, 2, "eager")])
def test_equals_hf_sam_vision_encoder(config, batch, attn):
    hf = randomise(SamVisionEncoder(hf_config(config, attn_implementation=attn))).eval()
    ours = SamImageEncoder(config).eval()
    ours.load_state_dict(convert_hf_encoder_state_dict(hf.state_dict()))  # strict
    x = torch.randn(batch, 3, config.image_size, config.image_size)
    with torch.no_grad():
        expected = hf(pixel_values=x).last_hidden_state  # after the neck: (B, 256, h, w)
        got = ours(x)
    grid = config.image_size // 16
    assert got.shape == expected.shape == (batch, config.output_channels, grid, grid)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_equals_hf_at_the_paper_geometry():
    # 1024 px: a 64 x 64 grid, 14 x 14 windows padded to 70 x 70, a global block's 127-row
    # tables -- vit_b's layout at width 16, so it runs in a fraction of a second
    c = configure(ENCODERS["vit_b"], hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                  global_attn_indexes=(1,), output_channels=8)
    hf = randomise(SamVisionEncoder(hf_config(c, attn_implementation="eager")), std=0.2).eval()
    ours = SamImageEncoder(c).eval()
    ours.load_state_dict(convert_hf_encoder_state_dict(hf.state_dict()))
    assert ours.blocks[1].attn.rel_pos_h.shape == (127, 8)
    x = torch.randn(1, 3, 1024, 1024)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(pixel_values=x).last_hidden_state, atol=1e-4,
                                   rtol=0)


@pytest.mark.parametrize("config", [SMALL, SMALL_64, ENCODERS["vit_h"], ENCODERS["tiny"]])
def test_config_from_hf_round_trips(config):
    hf_cfg = hf_config(config)
    got = config_from_hf(hf_cfg)
    assert got.mlp_width == hf_cfg.mlp_dim
    assert got == configure(config, mlp_dim=hf_cfg.mlp_dim)  # HF fills mlp_dim in


def test_config_from_hf_refuses_what_we_do_not_build():
    with pytest.raises(ValueError, match="vision_config.hidden_act"):
        config_from_hf(transformers.SamVisionConfig(hidden_act="relu"))


def test_rel_pos_table_equals_hf_get_rel_pos():
    attn = SamVisionEncoder(hf_config(SMALL)).layers[0].attn
    torch.manual_seed(0)
    for q, k, rows in [(4, 4, 7), (4, 4, 5), (3, 6, 11), (6, 3, 9), (5, 2, 3)]:
        rel_pos = torch.randn(rows, 6)
        torch.testing.assert_close(rel_pos_table(q, k, rel_pos), attn.get_rel_pos(q, k, rel_pos),
                                   atol=1e-6, rtol=0)


def test_converts_a_whole_hf_sam_model():
    hf = transformers.SamModel(transformers.SamConfig(vision_config=hf_config(SMALL).to_dict()))
    ours = SamImageEncoder(SMALL)
    ours.load_state_dict(convert_hf_encoder_state_dict(hf.state_dict()))  # vision_encoder.*


# authors' build_sam.py / HF's SamVisionConfig; the counts are HF's (and the authors')
PARAMS = {"vit_b": 89_670_912, "vit_l": 308_278_272, "vit_h": 637_026_048}


@pytest.mark.parametrize("variant", ["vit_b", "vit_l", "vit_h"])
def test_parameter_counts_equal_hf(variant):
    c = ENCODERS[variant]
    with torch.device("meta"):  # counting needs shapes only
        ours = SamImageEncoder(c)
        hf = SamVisionEncoder(hf_config(c))
    assert count(ours) == count(hf) == PARAMS[variant]
    assert c.image_size == 1024 and c.patch_size == 16 and c.window_size == 14
    # same names and shapes, not only the same total
    converted = convert_hf_encoder_state_dict(hf.state_dict())
    assert {k: v.shape for k, v in converted.items()} == {
        k: v.shape for k, v in ours.state_dict().items()}


# --- the official checkpoint's names (segment_anything's ImageEncoderViT) ------------------------

def official_layout(c: SamEncoderConfig) -> dict[str, tuple[int, ...]]:
    """Names and shapes of ``sam_vit_*.pth``'s image encoder, written from segment_anything's
    ``image_encoder.py`` (PatchEmbed.proj, Block.norm1 / attn / norm2 / mlp.lin1 / lin2, neck)."""
    D, M, C, P, g = c.hidden_size, c.mlp_width, c.output_channels, c.patch_size, c.grid_size
    head = D // c.num_attention_heads
    e = "image_encoder."
    layout = {e + "patch_embed.proj.weight": (D, 3, P, P), e + "patch_embed.proj.bias": (D,),
              e + "pos_embed": (1, g, g, D)}
    for i in range(c.num_hidden_layers):
        s = g if i in c.global_attn_indexes else c.window_size
        b = f"{e}blocks.{i}."
        layout.update({b + "norm1.weight": (D,), b + "norm1.bias": (D,),
                       b + "attn.qkv.weight": (3 * D, D), b + "attn.qkv.bias": (3 * D,),
                       b + "attn.proj.weight": (D, D), b + "attn.proj.bias": (D,),
                       b + "attn.rel_pos_h": (2 * s - 1, head),
                       b + "attn.rel_pos_w": (2 * s - 1, head),
                       b + "norm2.weight": (D,), b + "norm2.bias": (D,),
                       b + "mlp.lin1.weight": (M, D), b + "mlp.lin1.bias": (M,),
                       b + "mlp.lin2.weight": (D, M), b + "mlp.lin2.bias": (D,)})
    layout.update({e + "neck.0.weight": (C, D, 1, 1), e + "neck.1.weight": (C,),
                   e + "neck.1.bias": (C,), e + "neck.2.weight": (C, C, 3, 3),
                   e + "neck.3.weight": (C,), e + "neck.3.bias": (C,)})
    return layout


@pytest.mark.parametrize("variant", ["vit_b", "vit_l", "vit_h"])
def test_official_layout_loads_with_every_shape(variant):
    c = ENCODERS[variant]
    with torch.device("meta"):
        ours = SamImageEncoder(c)
        sd = {k: torch.empty(s) for k, s in official_layout(c).items()}
    sd["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = torch.empty(2, 128)
    ours.load_state_dict(convert_official_encoder_state_dict(sd), strict=True)  # shapes checked
    assert sum(torch.Size(s).numel() for s in official_layout(c).values()) == PARAMS[variant]


@pytest.mark.parametrize("config", [SMALL, ENCODERS["tiny"]])
def test_official_names_round_trip_exactly(config):
    torch.manual_seed(0)
    sd = {k: torch.randn(s) for k, s in official_layout(config).items()}
    sd["mask_decoder.iou_token.weight"] = torch.randn(1, 256)  # not the encoder's: ignored
    ours = SamImageEncoder(config)
    ours.load_state_dict(convert_official_encoder_state_dict(sd))
    state = ours.state_dict()
    renamed = {"patch_embed.proj.": "patch_embed.", ".mlp.lin1.": ".mlp.0.",
               ".mlp.lin2.": ".mlp.2."}
    for name, tensor in sd.items():
        if not name.startswith("image_encoder."):
            continue
        ours_name = name.removeprefix("image_encoder.")
        for old, new in renamed.items():
            ours_name = ours_name.replace(old, new)
        assert torch.equal(state[ours_name], tensor), name
    assert len(state) == len(sd) - 1
    # the encoder's own state dict (no "image_encoder." prefix) converts the same way
    bare = {k.removeprefix("image_encoder."): v for k, v in sd.items() if "image_encoder" in k}
    ours.load_state_dict(convert_official_encoder_state_dict(bare))


def test_equals_the_authors_image_encoder_vit():
    # where segment_anything (and the torchvision it imports) is installed: the authors' module
    sa = pytest.importorskip("segment_anything.modeling.image_encoder")
    c = SMALL
    theirs = randomise(sa.ImageEncoderViT(
        img_size=c.image_size, patch_size=c.patch_size, embed_dim=c.hidden_size,
        depth=c.num_hidden_layers, num_heads=c.num_attention_heads,
        mlp_ratio=c.mlp_width / c.hidden_size, out_chans=c.output_channels,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
        window_size=c.window_size, global_attn_indexes=c.global_attn_indexes)).eval()
    ours = SamImageEncoder(c).eval()
    ours.load_state_dict(convert_official_encoder_state_dict(theirs.state_dict()))
    x = torch.randn(2, 3, c.image_size, c.image_size)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-4, rtol=0)


# --- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("images,match", [
    (torch.zeros(3, 64, 64), "images must have shape"),
    (torch.zeros(1, 1, 64, 64), "images must have 3 channels"),
    (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "images must be a floating-point"),
    (torch.zeros(1, 3, 64, 64, dtype=torch.float64), "images is float64"),
    (torch.zeros(1, 3, 48, 64), "images must be 64 x 64"),
    (torch.zeros(1, 3, 128, 128), "images must be 64 x 64"),
    ([[0.0]], "images must be a torch.Tensor"),
])
def test_bad_images_are_value_errors(images, match):
    with pytest.raises(ValueError, match=match):
        SamImageEncoder(ENCODERS["tiny"])(images)


@pytest.mark.parametrize("overrides,match", [
    ({"hidden_size": 30}, "num_attention_heads"),
    ({"image_size": 100}, "config.image_size"),
    ({"global_attn_indexes": (12,)}, "config.global_attn_indexes"),
    ({"window_size": -1}, "config.window_size"),
    ({"num_hidden_layers": 0}, "config.num_hidden_layers"),
])
def test_bad_configs_are_value_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        SamImageEncoder(configure(ENCODERS["vit_b"], **overrides))


@pytest.mark.parametrize("convert", [convert_hf_encoder_state_dict,
                                     convert_official_encoder_state_dict])
def test_foreign_state_dicts_are_value_errors(convert):
    with pytest.raises(ValueError, match="state_dict"):
        convert({"backbone.conv1.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="state_dict"):
        convert([torch.zeros(1)])
