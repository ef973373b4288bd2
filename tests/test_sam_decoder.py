"""SAM's prompt encoder and mask decoder against HF transformers' (random weights, no download).

HF's own image embeddings (``SamModel.get_image_embeddings``) go into both HF's prompt encoder +
mask decoder and ours (with converted weights); mask logits and IoU scores must agree to 1e-4.
"""

import math

import pytest
import torch

from segcourse.models.sam_mask_decoder import (
    MaskDecoderConfig,
    SamMaskDecoder,
    convert_hf_mask_decoder_state_dict,
)
from segcourse.models.sam_prompt_encoder import (
    RandomFourierEncoding,
    SamPromptEncoder,
    convert_hf_prompt_encoder_state_dict,
)

transformers = pytest.importorskip("transformers")

S, C = 64, 32  # input side, embedding width: a 4 x 4 image embedding, 16 x 16 low-res masks


@pytest.fixture(scope="module")
def hf():
    torch.manual_seed(0)
    vision = transformers.SamVisionConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=S, patch_size=16,
        window_size=2, global_attn_indexes=[1], output_channels=C, mlp_dim=64, num_pos_feats=C // 2)
    config = transformers.SamConfig(
        vision_config=vision.to_dict(),
        prompt_encoder_config=dict(hidden_size=C, image_size=S, patch_size=16),
        mask_decoder_config=dict(hidden_size=C, mlp_dim=64, num_attention_heads=2,
                                 iou_head_hidden_dim=C))
    model = transformers.SamModel(config).eval()
    with torch.no_grad():  # move every weight off its init (LayerNorm 1 / 0, zero biases)
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        # HF's init gives logits ~ 0.02, too small for a 1e-4 check to mean much: scale the
        # heads so that logits and IoUs are O(1)
        for mlp in model.mask_decoder.output_hypernetworks_mlps:
            mlp.proj_out.weight.mul_(30.0)
        model.mask_decoder.iou_prediction_head.proj_out.weight.mul_(10.0)
        # one Gaussian in both places (HF ties them; keep them equal after the nudge)
        model.prompt_encoder.shared_embedding.positional_embedding.copy_(
            model.shared_image_embedding.positional_embedding)
    images = torch.randn(2, 3, S, S)
    return model, model.get_image_embeddings(images)


@pytest.fixture(scope="module")
def ours(hf):
    model, _ = hf
    prompt = SamPromptEncoder(C, S, S // 16)
    prompt.load_state_dict(convert_hf_prompt_encoder_state_dict(
        model.prompt_encoder.state_dict()))
    decoder = SamMaskDecoder(MaskDecoderConfig(embed_dim=C, num_heads=2, mlp_dim=64,
                                               iou_head_hidden_dim=C, layer_norm_eps=1e-6))
    decoder.load_state_dict(convert_hf_mask_decoder_state_dict(model.mask_decoder.state_dict()))
    return prompt.eval(), decoder.eval()


def _run_both(hf, ours, B, points=None, labels=None, boxes=None, masks=None, multimask=True):
    model, emb = hf
    prompt, decoder = ours
    emb = emb[:B]
    with torch.no_grad():
        ref = model(image_embeddings=emb, input_points=points, input_labels=labels,
                    input_boxes=boxes, input_masks=masks, multimask_output=multimask)
        sparse, dense = prompt(points, labels, boxes, masks)
        logits, iou = decoder(emb, prompt.dense_pe(), sparse, dense, multimask)
    assert logits.shape == ref.pred_masks.shape
    assert iou.shape == ref.iou_scores.shape
    assert logits.shape[-2:] == (S // 4, S // 4)
    assert logits.shape[2] == (3 if multimask else 1)
    torch.testing.assert_close(logits, ref.pred_masks, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(iou, ref.iou_scores, atol=1e-4, rtol=1e-4)
    return logits


def _points(B, P, N):
    g = torch.Generator().manual_seed(B * 100 + P * 10 + N)
    points = torch.rand(B, P, N, 2, generator=g) * (S - 1)
    labels = torch.randint(0, 2, (B, P, N), generator=g)
    labels[..., 0] = 1  # at least one positive point, the rest positive or negative
    return points, labels


def _boxes(B, P):
    g = torch.Generator().manual_seed(7 * B + P)
    xy = torch.rand(B, P, 2, 2, generator=g) * (S - 1)
    return torch.cat([xy.min(dim=2).values, xy.max(dim=2).values], dim=-1)  # (x1, y1, x2, y2)


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("B, P, N", [(1, 1, 1), (2, 3, 2), (1, 2, 3)])
def test_points_equal_hf(hf, ours, B, P, N, multimask):
    points, labels = _points(B, P, N)
    _run_both(hf, ours, B, points, labels, multimask=multimask)


def test_padding_points_equal_hf(hf, ours):
    points, labels = _points(2, 2, 3)
    labels[0, 1, 2] = labels[1, 0, 1] = -1  # "not a point": padding of a shorter prompt
    _run_both(hf, ours, 2, points, labels)


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("B, P", [(1, 1), (2, 3)])
def test_boxes_equal_hf(hf, ours, B, P, multimask):
    _run_both(hf, ours, B, boxes=_boxes(B, P), multimask=multimask)


@pytest.mark.parametrize("B, P", [(1, 1), (2, 2)])
def test_points_and_boxes_equal_hf(hf, ours, B, P):
    points, labels = _points(B, P, 2)
    _run_both(hf, ours, B, points, labels, _boxes(B, P))
    _run_both(hf, ours, B, points, labels, _boxes(B, P), multimask=False)


@pytest.mark.parametrize("B, P", [(1, 1), (2, 2)])
def test_mask_prompt_equal_hf(hf, ours, B, P):
    # HF takes one mask per image, [B, 1, 4h, 4w]; ours is per prompt and broadcasts P = 1
    masks = torch.randn(B, 1, S // 4, S // 4)
    points, labels = _points(B, P, 1)
    _run_both(hf, ours, B, points, labels, masks=masks)
    _run_both(hf, ours, B, boxes=_boxes(B, P), masks=masks, multimask=False)
    _run_both(hf, ours, B, masks=masks)  # a mask alone is a prompt (no sparse tokens)


def test_per_prompt_masks_equal_separate_calls(hf, ours):
    """One mask per prompt [B, P, ...] gives each prompt what a call with its mask alone gives."""
    _, emb = hf
    prompt, decoder = ours
    points, labels = _points(1, 2, 1)
    masks = torch.randn(1, 2, S // 4, S // 4)
    with torch.no_grad():
        both = decoder(emb[:1], prompt.dense_pe(), *prompt(points, labels, mask_inputs=masks))[0]
        for p in range(2):
            sparse, dense = prompt(points[:, p:p + 1], labels[:, p:p + 1],
                                   mask_inputs=masks[:, p:p + 1])
            one = decoder(emb[:1], prompt.dense_pe(), sparse, dense)[0]
            torch.testing.assert_close(both[:, p:p + 1], one, atol=1e-5, rtol=1e-5)


def test_fourier_encoding_by_hand():
    enc = RandomFourierEncoding(2)
    with torch.no_grad():
        enc.gaussian.copy_(torch.tensor([[1.0, 0.0], [0.25, 0.5]]))
    out = enc(torch.tensor([[0.75, 0.5]]))  # 2v - 1 = (0.5, 0): projections (0.5, 0)
    a = 2 * math.pi * 0.5
    torch.testing.assert_close(out, torch.tensor([[math.sin(a), 0.0, math.cos(a), 1.0]]))


def test_pixel_centre_shift_and_dense_pe():
    """A point at pixel (x, y) is encoded at ((x + 0.5) / S, (y + 0.5) / S); the dense grid of an
    S/16 embedding samples cell centres, so pixel 16 i + 7.5 lands on cell i."""
    prompt = SamPromptEncoder(C, S, S // 16)
    pe = prompt.dense_pe()
    assert pe.shape == (1, C, S // 16, S // 16)
    i, j = 2, 1  # row 2 (y), column 1 (x)
    code = prompt._encode_coords(torch.tensor([16 * j + 7.5, 16 * i + 7.5]))
    torch.testing.assert_close(code, pe[0, :, i, j])


def test_bad_prompts():
    prompt = SamPromptEncoder(C, S, S // 16)
    pts, lab = torch.full((1, 1, 1, 2), 10.0), torch.ones(1, 1, 1, dtype=torch.long)
    with pytest.raises(ValueError, match="no prompt"):
        prompt()
    with pytest.raises(ValueError, match="point_labels must be in"):
        prompt(pts, torch.full((1, 1, 1), 2))
    with pytest.raises(ValueError, match="point_labels must be given"):
        prompt(pts)
    with pytest.raises(ValueError, match="must match points"):
        prompt(pts, torch.ones(1, 1, 2))
    with pytest.raises(ValueError, match="inside"):
        prompt(torch.full((1, 1, 1, 2), S + 1.0), lab)
    with pytest.raises(ValueError, match="inside"):
        prompt(torch.full((1, 1, 1, 2), -1.0), lab)
    with pytest.raises(ValueError, match="x2 >= x1"):
        prompt(boxes=torch.tensor([[[20.0, 5.0, 10.0, 30.0]]]))
    with pytest.raises(ValueError, match="x2 >= x1"):
        prompt(boxes=torch.tensor([[[5.0, 30.0, 10.0, 20.0]]]))
    with pytest.raises(ValueError, match="same \\[B, P\\]"):
        prompt(pts, lab, torch.tensor([[[1.0, 1.0, 5.0, 5.0]] * 2]))
    with pytest.raises(ValueError, match="mask_inputs must be"):
        prompt(mask_inputs=torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="shape"):
        prompt(torch.zeros(1, 2), lab)
