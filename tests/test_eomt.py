"""EoMT (segcourse.models.eomt): outputs on odd sizes, masked attention and its annealing, losses,
and equality with HF transformers' EomtForUniversalSegmentation (random weights, no download)."""

import math

import pytest
import torch
import torch.nn.functional as F

from segcourse.models import build
from segcourse.models.config import configure
from segcourse.models.eomt import (
    PAPER,
    SMALL,
    EoMT,
    EomtConfig,
    from_hf,
    mask_annealing_probs,
    mask_annealing_windows,
)

# 3 blocks (2 with queries) of width 32 on 8 x 8 patches: a few ms per forward
TINY = EomtConfig(num_classes=3, hidden_size=32, num_layers=3, num_heads=2, patch_size=8,
                  image_size=(32, 32), num_register_tokens=2, num_queries=6, num_blocks=2,
                  num_upscale_blocks=1, layerscale_init=0.5, anneal_steps=0, num_points=64)


def tiny(**overrides) -> EoMT:
    torch.manual_seed(0)
    return EoMT(configure(TINY, **overrides), thing_classes=(1, 2))


def perturb(model: torch.nn.Module, std: float = 0.1) -> torch.nn.Module:
    """Add noise to every weight: trained-looking scales, no zero / one initial values left."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn_like(p))
    return model


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- outputs --------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 33, 47), (1, 97, 131), (2, 32, 32), (2, 40, 64)])
def test_outputs_cover_the_image_at_stride_4(shape):
    B, H, W = shape
    model = tiny()
    x = torch.randn(B, 3, H, W)
    cells = (math.ceil(H / 4), math.ceil(W / 4))  # patch 8, one ScaleBlock: stride 4
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert set(out) == {"class_logits", "mask_logits"}
    assert out["class_logits"].shape == (B, 6, 4)
    assert out["mask_logits"].shape == (B, 6, *cells)
    model.train()
    out = model(x)
    assert len(out["aux_outputs"]) == 2  # one per query block, from its input
    for aux in out["aux_outputs"]:
        assert aux["class_logits"].shape == (B, 6, 4) and aux["mask_logits"].shape == (B, 6, *cells)
    assert all(torch.isfinite(v).all() for v in (out["class_logits"], out["mask_logits"]))


def test_padding_does_not_leak_into_the_crop_and_batch_items_are_independent():
    model = tiny().eval()
    x = torch.randn(2, 3, 33, 47)
    with torch.no_grad():
        both = model(x)["mask_logits"]
        one = model(x[1:])["mask_logits"]
    torch.testing.assert_close(both[1:], one, atol=1e-5, rtol=1e-5)


def test_small_and_paper_configs():
    assert SMALL.mask_stride == 4 and PAPER.mask_stride == 4  # 8 / 2 and 16 / 4
    model = build("eomt", num_classes=5, thing_classes=(2, 3, 4))
    assert model.stuff_classes == (0, 1) and model.thing_classes == (2, 3, 4)
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        assert model(x)["mask_logits"].shape == (2, 16, 16, 16)


@pytest.mark.parametrize("bad, message", [
    ([[0.0]], "torch.Tensor"),
    (torch.rand(3, 64, 64), "shape"),
    (torch.rand(1, 4, 64, 64), "channels"),
    (torch.randint(0, 255, (1, 3, 64, 64)), "floating"),
    (torch.rand(1, 3, 31, 64), "at least 32"),
    (torch.rand(1, 3, 64, 64).double(), "float64"),
])
def test_bad_images_raise_value_error(bad, message):
    model = tiny().eval()
    with pytest.raises(ValueError, match=message):
        model(bad)


@pytest.mark.parametrize("overrides, message", [
    ({"num_heads": 5}, "divisible by config.num_heads"),
    ({"num_blocks": 4}, "num_blocks"),
    ({"num_upscale_blocks": 4}, "patch_size"),
    ({"image_size": (36, 32)}, "image_size"),
    ({"num_queries": 0}, "num_queries"),
    ({"anneal_steps": -1}, "anneal_steps"),
])
def test_bad_configs_raise_value_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        EoMT(configure(TINY, **overrides))


def test_bad_builder_arguments_raise_value_error():
    with pytest.raises(ValueError, match="unknown EomtConfig field"):
        build("eomt", 3, hidden=64)
    with pytest.raises(ValueError, match="below num_classes"):
        build("eomt", 3, thing_classes=(3,))
    with pytest.raises(ValueError, match="EomtConfig"):
        EoMT({"num_classes": 3})


# --- masked attention -----------------------------------------------------------------------------

def test_attention_mask_keeps_each_query_inside_its_previous_mask():
    model = tiny()
    torch.manual_seed(1)
    logits = torch.randn(2, 6, 8, 8)  # mask cells of a 4 x 4 patch grid
    mask = model.attention_mask(logits, (4, 4), torch.tensor(1.0))
    Q, prefix = 6, 3  # queries, then class token and 2 registers, then 16 patches
    assert mask.shape == (2, 1, Q + prefix + 16, Q + prefix + 16)
    # independent formulation: bilinear 2x downsampling reads the mean of each 2 x 2 cell
    inside = F.avg_pool2d(logits, 2).flatten(2) > 0
    assert torch.equal(mask[:, 0, :Q, Q + prefix:], inside)
    assert mask[:, 0, :Q, :Q + prefix].all()  # queries always see queries, class, registers
    assert mask[:, 0, Q:].all()  # patches and prefix tokens attend everywhere
    assert model.attention_mask(logits, (4, 4), torch.tensor(0.0)) is None


def test_annealed_mask_frees_a_share_one_minus_p_of_the_queries():
    model = tiny(num_queries=200)
    logits = -torch.ones(8, 200, 8, 8)  # every mask empty: a query is free iff its row is all True
    torch.manual_seed(0)
    mask = model.attention_mask(logits, (4, 4), torch.tensor(0.25))
    free = mask[:, 0, :200, 203:].all(-1).float().mean()
    assert abs(float(free) - 0.75) < 0.05  # 1600 draws: std 0.011


def test_masked_attention_only_in_training_and_off_at_inference():
    model = perturb(tiny(), std=0.3)  # masks with some negative logits, so masking matters
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        model.attn_mask_probs.fill_(1.0)
        eval_masked = model(x)
        model.attn_mask_probs.fill_(0.0)
        eval_free = model(x)
        model.train()
        train_free = model(x)
        model.attn_mask_probs.fill_(1.0)
        train_masked = model(x)
    for key in ("class_logits", "mask_logits"):
        assert torch.equal(eval_masked[key], eval_free[key])  # P is ignored at inference
        torch.testing.assert_close(train_free[key], eval_free[key])
    first_masks = F.interpolate(train_masked["aux_outputs"][0]["mask_logits"], size=(4, 4),
                                mode="bilinear")
    assert (first_masks <= 0).any()  # the first query block did restrict some queries
    assert (train_masked["mask_logits"] - eval_free["mask_logits"]).abs().max() > 1e-2


# --- mask annealing -------------------------------------------------------------------------------

def test_annealing_windows_reproduce_the_authors_configs():
    # tue-mps/eomt configs/dinov2/coco/panoptic: 12 epochs = 88692 steps at batch 16
    coco = 88692
    large = mask_annealing_windows(coco, 4)  # eomt_large_640.yaml
    assert [s for s, _ in large] == [14782, 29564, 44346, 59128]
    assert [e for _, e in large] == [29564, 44346, 59128, 73910]
    small = mask_annealing_windows(coco, 3)  # eomt_small_640.yaml
    assert [s for s, _ in small] == [14782, 36955, 59128]
    assert [e for _, e in small] == [29564, 51737, 73910]
    giant = mask_annealing_windows(coco, 5)  # eomt_giant_640.yaml (the authors round)
    assert [round(s) for s, _ in giant] == pytest.approx([14782, 25869, 36955, 48042, 59128],
                                                         abs=1)
    base_2x = mask_annealing_windows(2 * coco, 3)  # eomt_base_640_2x.yaml: 24 epochs
    assert base_2x == [(29564, 59128), (73910, 103474), (118256, 147820)]
    # ade20k/semantic/eomt_large_512.yaml: 31 epochs = 39120 steps
    assert mask_annealing_windows(39120, 4)[-1] == (26080, 32600)


def test_annealing_probabilities_by_hand():
    # T = 600, 4 blocks: windows [100, 200], [200, 300], [300, 400], [400, 500]
    def probs(step):
        return mask_annealing_probs(step, 600, 4).tolist()
    assert probs(0) == [1, 1, 1, 1] and probs(100) == [1, 1, 1, 1]
    assert probs(150) == pytest.approx([0.5 ** 0.9, 1, 1, 1])
    assert probs(175) == pytest.approx([0.25 ** 0.9, 1, 1, 1])
    assert probs(200) == pytest.approx([0, 1, 1, 1])
    assert probs(330) == pytest.approx([0, 0, 0.7 ** 0.9, 1])
    assert probs(500) == [0, 0, 0, 0] and probs(10 ** 6) == [0, 0, 0, 0]
    assert mask_annealing_probs(150, 600, 4, power=1.0).tolist() == [0.5, 1, 1, 1]
    assert mask_annealing_probs(450, 600, 1).tolist() == [0]  # one block: [100, 200]
    with pytest.raises(ValueError, match="total_steps"):
        mask_annealing_probs(0, 0, 4)


def semantic_targets(B=2, H=32, W=32):
    target = torch.zeros(B, H, W, dtype=torch.long)
    target[:, 4:20, 6:22] = 1
    target[1, 20:, 20:] = 2
    return target


def test_each_training_step_advances_the_schedule():
    model = tiny(num_layers=4, num_blocks=4, anneal_steps=600).train()
    x, target = torch.randn(2, 3, 32, 32), semantic_targets()
    model.train_step.fill_(150)  # e.g. resumed: the count is in the state dict
    model(x, target)
    assert model.attn_mask_probs.tolist() == pytest.approx([0.5 ** 0.9, 1, 1, 1])
    assert int(model.train_step) == 151
    model(x)  # no targets: not a training step
    assert int(model.train_step) == 151
    model.eval()
    model(x, target)  # eval: outputs, no step
    assert int(model.train_step) == 151
    assert "train_step" in model.state_dict() and "attn_mask_probs" in model.state_dict()
    off = tiny(anneal_steps=0).train()
    off.attn_mask_probs.fill_(0.3)
    off(x, target)
    assert off.attn_mask_probs.tolist() == pytest.approx([0.3, 0.3])  # schedule off: left as set


# --- training -------------------------------------------------------------------------------------

def test_a_training_step_lowers_the_loss():
    model = tiny(num_points=256).train()
    x, target = torch.randn(2, 3, 32, 32), semantic_targets()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    totals = []
    for _ in range(4):
        torch.manual_seed(0)  # the same sampled points each step
        losses = model(x, target)
        assert set(losses) == {"loss_class", "loss_mask", "loss_dice"}
        total = sum(losses.values())
        totals.append(total.item())
        opt.zero_grad()
        total.backward()
        opt.step()
    assert totals[-1] < totals[0]


def test_instance_targets_train_through_fit():
    from segcourse.train import fit
    model = tiny(anneal_steps=100)
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[0, 2:12, 2:12], masks[1, 16:30, 10:28] = True, True
    semantic = torch.zeros(32, 32, dtype=torch.long)
    semantic[masks[0]], semantic[masks[1]] = 1, 2
    target = {"labels": torch.tensor([1, 2]), "masks": masks, "semantic": semantic}
    data = [(torch.randn(3, 32, 32), target)] * 2
    loader = torch.utils.data.DataLoader(data, batch_size=2,
                                         collate_fn=lambda b: (torch.stack([i for i, _ in b]),
                                                               [t for _, t in b]))
    history = fit(model, loader, epochs=None, max_steps=3, progress=False, device="cpu")
    assert int(model.train_step) == 3 and len(history["loss_class"]) >= 1
    assert torch.isfinite(torch.tensor(history["loss_mask"])).all()


# --- equality with HF transformers ----------------------------------------------------------------

def hf_model(swiglu=False, grid=(4, 9)):
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "EomtForUniversalSegmentation"):
        pytest.skip("this transformers has no EoMT")
    # HF's forward reshapes patches to `grid_size`, square config.image_size // patch_size; its
    # position embeddings are a flat table, so a non-square grid of as many patches (4 x 9 = 36 =
    # 6 x 6) runs HF on a non-square image once `grid_size` is set to it.
    config = transformers.EomtConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, patch_size=8, image_size=48,
        num_queries=5, num_blocks=2, num_register_tokens=2, num_upscale_blocks=1, num_labels=4,
        use_swiglu_ffn=swiglu)
    torch.manual_seed(0)
    hf = perturb(transformers.EomtForUniversalSegmentation(config))  # registers start at 0 ...
    hf.grid_size = grid
    return hf


@pytest.mark.parametrize("swiglu", [False, True], ids=["mlp", "swiglu"])
def test_from_hf_equals_hf_in_eval_on_a_non_square_image(swiglu):
    hf = hf_model(swiglu).eval()
    hf.attn_mask_probs.zero_()  # HF masks in eval while P > 0; trained checkpoints hold 0
    ours = from_hf(hf, thing_classes=(0, 1)).eval()
    assert ours.config.image_size == (32, 72) and count(ours) == count(hf)
    x = torch.randn(2, 3, 32, 72)
    with torch.no_grad():
        theirs, mine = hf(pixel_values=x), ours(x)
    torch.testing.assert_close(mine["class_logits"], theirs.class_queries_logits,
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(mine["mask_logits"], theirs.masks_queries_logits,
                               atol=1e-4, rtol=1e-4)


class PackedSwiGLU:
    """The same HF model under transformers < 5's names: SwiGLU's gate and up in one matrix
    (``mlp.weights_in``, gate first: ``x1, x2 = weights_in(x).chunk(2)``), ``mlp.weights_out``."""

    def __init__(self, hf):
        self.hf, self.config, self.grid_size = hf, hf.config, hf.grid_size

    def state_dict(self):
        sd = dict(self.hf.state_dict())
        for gate in [k for k in sd if ".mlp.gate_proj." in k]:
            up, down = gate.replace("gate_proj", "up_proj"), gate.replace("gate_proj", "down_proj")
            sd[gate.replace("gate_proj", "weights_in")] = torch.cat([sd.pop(gate), sd.pop(up)])
            sd[down.replace("down_proj", "weights_out")] = sd.pop(down)
        return sd


def test_from_hf_reads_transformers_4_packed_swiglu_names():
    hf = hf_model(swiglu=True).eval()
    packed = PackedSwiGLU(hf)
    assert any(".mlp.weights_in." in k for k in packed.state_dict())
    x = torch.randn(1, 3, 32, 72)
    with torch.no_grad():
        torch.testing.assert_close(from_hf(packed).eval()(x), from_hf(hf).eval()(x))


@pytest.mark.parametrize("p", [1.0, 0.5])
def test_from_hf_equals_hf_with_masked_attention_in_training(p):
    hf = hf_model().train()  # P = 1: every query masked; P = 0.5: half, drawn like HF's
    ours = from_hf(hf).train()
    assert ours.attn_mask_probs.tolist() == [1.0, 1.0]  # HF's buffer, copied
    hf.attn_mask_probs.fill_(p)
    ours.attn_mask_probs.fill_(p)
    x = torch.randn(2, 3, 32, 72)
    with torch.no_grad():
        torch.manual_seed(3)  # the same draws: HF's rand(B, Q) > P, ours rand(B, Q, 1) > P
        theirs = hf(pixel_values=x)
        torch.manual_seed(3)
        mine = ours(x)
        hf.eval().attn_mask_probs.zero_()
        unmasked = hf(pixel_values=x)
    torch.testing.assert_close(mine["class_logits"], theirs.class_queries_logits,
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(mine["mask_logits"], theirs.masks_queries_logits,
                               atol=1e-4, rtol=1e-4)
    # the masks did change the result, so the comparison above tested the masked path
    assert (theirs.masks_queries_logits - unmasked.masks_queries_logits).abs().max() > 1e-2


def test_from_hf_model_runs_at_other_sizes_by_resizing_position_embeddings():
    ours = from_hf(hf_model()).eval()
    with torch.no_grad():
        out = ours(torch.randn(1, 3, 33, 47))
    assert out["mask_logits"].shape == (1, 5, 9, 12)
    with pytest.raises(ValueError, match="hidden_act"):
        hf = hf_model()
        hf.config.hidden_act = "relu"
        from_hf(hf)


def test_paper_parameter_count_equals_hf_coco_panoptic_large():
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "EomtForUniversalSegmentation"):
        pytest.skip("this transformers has no EoMT")
    # tue-mps/coco_panoptic_eomt_large_640: HF EomtConfig's defaults with COCO's 133 classes
    with torch.device("meta"):
        hf = transformers.EomtForUniversalSegmentation(transformers.EomtConfig(num_labels=133))
        ours = build("eomt", 133, paper=True)
    assert count(ours) == count(hf) == EOMT_L_640_COCO


# By hand from the architecture (paper Sec. 3, HF EomtConfig defaults): D = 1024, 24 blocks,
# 40 x 40 patches of 16 x 16, 4 registers, 200 queries, 133 + 1 classes, 2 ScaleBlocks.
D = 1024
BLOCK = (2 * 2 * D + 4 * (D * D + D)  # 2 LayerNorms, q / k / v / output projections
         + (D * 4 * D + 4 * D) + (4 * D * D + D) + 2 * D)  # MLP, 2 LayerScales
SCALE_BLOCK = (4 * D * D + D) + 9 * D + 2 * D  # 2x2 transposed conv, 3x3 depthwise, LN2d
EOMT_L_640_COCO = ((3 * 16 * 16 * D + D) + D + 4 * D + 40 * 40 * D  # patches, class, registers
                   + 24 * BLOCK + 2 * D + 200 * D  # blocks, final LayerNorm, queries
                   + (D * 134 + 134) + 3 * (D * D + D) + 2 * SCALE_BLOCK)  # heads, upscaling


def test_semantic_and_segment_answer_all_three_tasks_at_the_input_size():
    model = tiny().train()  # MaskClassifier runs eval mode and restores the caller's
    x = torch.randn(1, 3, 33, 47)
    scores = model.semantic(x)
    (result,) = model.segment(x)
    assert model.training
    assert scores.shape == (1, 3, 33, 47)
    assert result["panoptic"].shape == (33, 47, 2) and result["masks"].shape[-2:] == (33, 47)
    assert set(result["categories"].tolist()) <= {1, 2}  # thing classes only


def test_small_anneals_over_the_run_fit_plans(monkeypatch):
    """SMALL has anneal_steps=None: fit announces its run (plan_training) and the annealing
    spans it; outside fit, without a plan, training refuses with a clear error."""
    import segcourse.models.eomt as eomt_module

    assert eomt_module.SMALL.anneal_steps is None
    model = tiny(anneal_steps=None, num_blocks=2).train()
    images, targets = torch.rand(1, 3, 32, 32), torch.zeros(1, 32, 32, dtype=torch.long)
    with pytest.raises(ValueError, match="plan_training"):
        model(images, targets)
    model.plan_training(60)                    # windows [10, 20] and [40, 50] of 60 steps
    seen = []
    for step in range(61):
        model.train_step.fill_(step)
        model._anneal()
        seen.append(model.attn_mask_probs.tolist())
    assert seen[10] == [1.0, 1.0] and seen[20] == [0.0, 1.0] and seen[50] == [0.0, 0.0]
    torch.testing.assert_close(torch.tensor(seen[15][0]), torch.tensor(0.5 ** 0.9))


def test_fit_tells_the_model_its_run_length():
    from segcourse.train import fit

    model = tiny(anneal_steps=None)
    data = (torch.rand(4, 3, 32, 32), torch.randint(0, 3, (4, 32, 32)))
    fit(model, data, max_steps=3, batch_size=2, progress=False, device="cpu")
    assert model._run == (0, 3) and int(model.train_step) == 3
    # set at step 2 of 3: block 0's window [0.5, 1] is over, block 1's [2, 2.5] just begins
    assert model.attn_mask_probs.tolist() == [0.0, 1.0]
