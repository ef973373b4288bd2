"""The whole SAM against HF transformers' ``SamModel`` (random weights, no download)."""

import pytest
import torch

from segcourse.models.sam import (
    Sam,
    SamConfig,
    convert_official_state_dict,
    from_hf,
    input_size,
    postprocess_masks,
    preprocess,
    sam,
    scale_prompts,
    to_official_state_dict,
)

transformers = pytest.importorskip("transformers")

S = 64  # input side: a 4 x 4 embedding, 16 x 16 low-res masks


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    vision = transformers.SamVisionConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=S, patch_size=16,
        window_size=2, global_attn_indexes=[1], output_channels=32, mlp_dim=64, num_pos_feats=16)
    config = transformers.SamConfig(
        vision_config=vision.to_dict(),
        prompt_encoder_config=dict(hidden_size=32, image_size=S, patch_size=16),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_attention_heads=2,
                                 iou_head_hidden_dim=32))
    hf = transformers.SamModel(config).eval()
    with torch.no_grad():  # every weight off its init; heads scaled so outputs are O(1)
        for p in hf.parameters():
            p.add_(0.1 * torch.randn_like(p))
        hf.prompt_encoder.shared_embedding.positional_embedding.copy_(
            hf.shared_image_embedding.positional_embedding)
        for mlp in hf.mask_decoder.output_hypernetworks_mlps:
            mlp.proj_out.weight.mul_(30.0)
        hf.mask_decoder.iou_prediction_head.proj_out.weight.mul_(10.0)
    return hf, from_hf(hf)


def _compare(models, images, multimask=True, **prompts):
    hf, ours = models
    names = {"points": "input_points", "point_labels": "input_labels", "boxes": "input_boxes",
             "mask_inputs": "input_masks"}
    with torch.no_grad():
        ref = hf(pixel_values=images, multimask_output=multimask,
                 **{names[k]: v for k, v in prompts.items()})
        out = ours(images, multimask_output=multimask, **prompts)
    B, P = images.shape[0], ref.iou_scores.shape[1]
    M = 3 if multimask else 1
    assert out["mask_logits"].shape == (B, P, M, S // 4, S // 4)
    assert out["iou_scores"].shape == (B, P, M)
    torch.testing.assert_close(out["mask_logits"], ref.pred_masks, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["iou_scores"], ref.iou_scores, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("B, P", [(1, 1), (2, 2)])
@pytest.mark.parametrize("multimask", [True, False])
def test_equal_hf(models, B, P, multimask):
    g = torch.Generator().manual_seed(10 * B + P)
    images = torch.randn(B, 3, S, S, generator=g)
    points = torch.rand(B, P, 2, 2, generator=g) * (S - 1)
    labels = torch.tensor([1, 0]).expand(B, P, 2)  # a positive and a negative click
    xy = torch.rand(B, P, 2, 2, generator=g) * (S - 1)
    boxes = torch.cat([xy.min(dim=2).values, xy.max(dim=2).values], dim=-1)
    masks = torch.randn(B, 1, S // 4, S // 4, generator=g)
    _compare(models, images, multimask, points=points, point_labels=labels)
    _compare(models, images, multimask, boxes=boxes)
    _compare(models, images, multimask, points=points, point_labels=labels, boxes=boxes)
    _compare(models, images, multimask, points=points, point_labels=labels, mask_inputs=masks)


def test_embed_once_decode_many(models):
    _, ours = models
    images = torch.randn(2, 3, S, S)
    points, labels = torch.tensor([[[[10.0, 20.0]]]] * 2), torch.ones(2, 1, 1, dtype=torch.long)
    with torch.no_grad():
        emb = ours.embed(images)
        torch.testing.assert_close(ours.decode(emb, points, labels)["mask_logits"],
                                   ours(images, points, labels)["mask_logits"])
    with pytest.raises(ValueError, match="embeddings must be"):
        ours.decode(emb[:, :8], points, labels)
    with pytest.raises(ValueError, match="prompts are for 2 images"):
        ours.decode(emb[:1], points, labels)


@pytest.mark.parametrize("variant", ["vit_b", "vit_l", "vit_h"])
def test_parameter_counts_equal_hf(variant):
    sizes = {"vit_b": {}, "vit_l": dict(hidden_size=1024, num_hidden_layers=24,
                                        num_attention_heads=16,
                                        global_attn_indexes=[5, 11, 17, 23]),
             "vit_h": dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16,
                           global_attn_indexes=[7, 15, 23, 31])}
    with torch.device("meta"):
        ours = sam(variant)
        hf = transformers.SamModel(transformers.SamConfig(
            vision_config=transformers.SamVisionConfig(**sizes[variant]).to_dict()))
    count = sum(p.numel() for p in ours.parameters())
    # the Fourier Gaussian is a buffer in the original and in HF < 5, a parameter in HF 5
    gaussian = sum(p.numel() for n, p in hf.named_parameters() if "positional_embedding" in n)
    assert count == sum(p.numel() for p in hf.parameters()) - gaussian
    if variant == "vit_b":  # segment_anything's sam_model_registry["vit_b"], sam_vit_b_01ec64
        assert count == 93_735_472
    # the paper's sizes (Kirillov et al., appendix; HF's model cards): 91M / 308M / 636M
    # image encoders, a ~4M prompt encoder + mask decoder
    decoder = count - sum(p.numel() for p in ours.image_encoder.parameters())
    assert 3.5e6 < decoder < 4.5e6


def test_official_names_load():
    """The segment_anything names (segment_anything/modeling/*.py; sam_vit_*.pth keys) all map
    onto ours, values in place."""
    model = Sam(sam("tiny").config)
    ours = model.state_dict()
    official = {}
    for k in ours:  # our names -> the authors', by hand, to feed the converter
        o = k.replace("image_encoder.patch_embed.", "image_encoder.patch_embed.proj.")
        o = o.replace("prompt_encoder.pe.gaussian",
                      "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix")
        o = o.replace("mask_downscaler.", "mask_downscaling.")
        o = o.replace(".mlp.0.", ".mlp.lin1.").replace(".mlp.2.", ".mlp.lin2.")
        for i, j in ((0, 0), (2, 1), (4, 2)):
            for head in [f"output_hypernetworks_mlps.{n}" for n in range(4)] + \
                    ["iou_prediction_head"]:
                o = o.replace(f"{head}.{i}.", f"{head}.layers.{j}.")
        if o == "prompt_encoder.point_embed.weight":
            for n in range(4):
                official[f"prompt_encoder.point_embeddings.{n}.weight"] = ours[o][n:n + 1]
            continue
        official[o] = ours[k]
    back = to_official_state_dict(ours)  # the inverse, against the names written by hand
    assert back.keys() == official.keys()
    assert all(torch.equal(back[k], official[k]) for k in official)
    converted = convert_official_state_dict(official)
    assert set(converted) == set(ours)
    for k, v in converted.items():
        assert torch.equal(v, ours[k]), k
    with pytest.raises(ValueError, match="segment_anything"):
        convert_official_state_dict({"foo": torch.zeros(1)})


def test_bad_config():
    with pytest.raises(ValueError, match="variant"):
        sam("vit_x")
    tiny = sam("tiny").config
    with pytest.raises(ValueError, match="embed_dim"):
        Sam(SamConfig(encoder=tiny.encoder, decoder=type(tiny.decoder)(embed_dim=32)))
    # HF's num_pos_feats defaults to 128 (for width 256): a narrower HF model must set it
    narrow = transformers.SamConfig(
        vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=64, output_channels=32, global_attn_indexes=[0]),
        prompt_encoder_config=dict(hidden_size=32, image_size=64),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, iou_head_hidden_dim=32))
    with pytest.raises(ValueError, match="num_pos_feats \\(128\\) must be half"):
        from_hf(transformers.SamModel(narrow))


def _hf_scale(coords, original):
    """HF's SamProcessor coordinate scaling (original pixels -> resized-input pixels)."""
    proc = transformers.SamProcessor(image_processor=transformers.SamImageProcessor())
    out = proc._normalize_coordinates(S, coords.numpy(), original,
                                      is_bounding_box=coords.shape[-1] == 4)
    return torch.from_numpy(out).float().reshape(coords.shape)


@pytest.mark.parametrize("original", [(37, 53), (64, 64), (81, 29), (1, 200)])
def test_sizes_and_prompt_scaling_equal_hf(original):
    assert input_size(original, S) == transformers.SamImageProcessor()._get_preprocess_shape(
        original, S)
    points = torch.tensor([[[[3.0, 7.0], [20.0, 0.5]]]])
    boxes = torch.tensor([[[1.0, 0.0, 25.0, 1.0]]])
    ours_points, ours_boxes = scale_prompts(original, S, points, boxes)
    torch.testing.assert_close(ours_points, _hf_scale(points, original))
    torch.testing.assert_close(ours_boxes, _hf_scale(boxes, original))


def test_preprocess_by_hand():
    images = torch.rand(2, 3, 37, 53)
    x = preprocess(images, S)
    h, w = input_size((37, 53), S)
    assert (h, w) == (45, 64) and x.shape == (2, 3, S, S)
    assert torch.all(x[..., h:, :] == 0)  # padding after normalising: bottom rows are 0
    resized = torch.nn.functional.interpolate(images, (h, w), mode="bilinear", antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(x[..., :h, :w], (resized - mean) / std)
    # a constant image of the mean colour is 0 everywhere
    assert preprocess(mean.expand(1, 3, 10, 7), S).abs().max() < 1e-6


def test_postprocess_equal_hf():
    logits = torch.randn(2, 3, 3, S // 4, S // 4)
    ours = postprocess_masks(logits, (37, 53), S)
    ref = transformers.SamImageProcessor().post_process_masks(
        [logits[0], logits[1]], [(37, 53)] * 2, [input_size((37, 53), S)] * 2, binarize=False,
        pad_size={"height": S, "width": S})
    assert ours.shape == (2, 3, 3, 37, 53)
    torch.testing.assert_close(ours, torch.stack(ref))


@pytest.mark.parametrize("kind", ["points", "boxes", "both"])
def test_predict_odd_non_square_image_equals_hf_pipeline(models, kind):
    """A 37 x 53 image, batch 1: our predict = HF's SamModel on the same input pixels with
    HF's own coordinate scaling and post-processing."""
    hf, ours = models
    original = (37, 53)
    images = torch.rand(1, 3, *original)
    points = torch.tensor([[[[10.0, 30.0], [52.0, 2.0]], [[0.0, 36.0], [5.0, 5.0]]]])
    labels = torch.tensor([[[1, 0], [1, -1]]])
    boxes = torch.tensor([[[2.0, 3.0, 40.0, 30.0], [0.0, 0.0, 53.0, 37.0]]])
    prompts = {"points": dict(points=points, point_labels=labels), "boxes": dict(boxes=boxes),
               "both": dict(points=points, point_labels=labels, boxes=boxes)}[kind]
    out = ours.predict(images, **prompts)
    hf_prompts = {}
    if "points" in prompts:
        hf_prompts["input_points"] = _hf_scale(points, original)
        hf_prompts["input_labels"] = labels
    if "boxes" in prompts:
        hf_prompts["input_boxes"] = _hf_scale(boxes, original)
    with torch.no_grad():
        ref = hf(pixel_values=preprocess(images, S), **hf_prompts)
    torch.testing.assert_close(out["mask_logits"], ref.pred_masks, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["iou_scores"], ref.iou_scores, atol=1e-4, rtol=1e-4)
    hf_masks = transformers.SamImageProcessor().post_process_masks(
        ref.pred_masks, [original], [input_size(original, S)], pad_size={"height": S, "width": S})
    assert out["masks"].shape == (1, 2, 3, *original) and out["masks"].dtype == torch.bool
    # thresholded at 0: equal except where a logit is within float noise of 0
    assert (out["masks"] != hf_masks[0][None]).float().mean() < 1e-3


def test_predict_feeds_back_the_previous_logits(models):
    """A second click with the first prediction's best low-res logits as the mask prompt (the
    interactive loop) equals forward on the preprocessed image with the same prompts."""
    _, ours = models
    images = torch.rand(1, 3, 37, 53)
    first = ours.predict(images, torch.tensor([[[[20.0, 10.0]]]]), torch.ones(1, 1, 1))
    best = first["iou_scores"].argmax(dim=-1)  # (B, P)
    previous = first["mask_logits"].gather(
        2, best[..., None, None, None].expand(-1, -1, 1, S // 4, S // 4))[:, :, 0]
    clicks, labels = torch.tensor([[[[20.0, 10.0], [40.0, 30.0]]]]), torch.tensor([[[1, 0]]])
    second = ours.predict(images, clicks, labels, mask_inputs=previous, multimask_output=False)
    assert second["masks"].shape == (1, 1, 1, 37, 53)
    points, _ = scale_prompts((37, 53), S, clicks)
    with torch.no_grad():
        ref = ours(preprocess(images, S), points, labels, mask_inputs=previous,
                   multimask_output=False)
    torch.testing.assert_close(second["mask_logits"], ref["mask_logits"])


def test_predict_checks_original_image_bounds(models):
    _, ours = models
    images = torch.rand(1, 3, 37, 53)
    with pytest.raises(ValueError, match="inside the image"):  # y = 40 > 37: in the padding
        ours.predict(images, torch.tensor([[[[10.0, 40.0]]]]), torch.ones(1, 1, 1))
    with pytest.raises(ValueError, match="inside the image"):
        ours.predict(images, boxes=torch.tensor([[[0.0, 0.0, 54.0, 10.0]]]))


def test_equal_official_segment_anything():
    """Against the authors' code (``pip install segment-anything``; skipped without it): their
    modules with random weights, ours through convert_official_state_dict, equal to 1e-4."""
    modeling = pytest.importorskip("segment_anything.modeling")
    from functools import partial

    from segcourse.models.sam_image_encoder import SamEncoderConfig
    from segcourse.models.sam_mask_decoder import MaskDecoderConfig
    torch.manual_seed(0)
    C = 32
    encoder = modeling.ImageEncoderViT(
        img_size=S, patch_size=16, embed_dim=C, depth=2, num_heads=2, mlp_ratio=2.0,
        out_chans=C, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
        window_size=2, global_attn_indexes=[1])
    prompt = modeling.PromptEncoder(embed_dim=C, image_embedding_size=(S // 16, S // 16),
                                    input_image_size=(S, S), mask_in_chans=16)
    decoder = modeling.MaskDecoder(
        transformer_dim=C, iou_head_hidden_dim=C,
        transformer=modeling.TwoWayTransformer(depth=2, embedding_dim=C, mlp_dim=64, num_heads=2))
    official = modeling.Sam(encoder, prompt, decoder).eval()
    with torch.no_grad():
        for p in official.parameters():
            p.add_(0.1 * torch.randn_like(p))
        for mlp in decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(30.0)
    ours = Sam(SamConfig(
        encoder=SamEncoderConfig(hidden_size=C, num_hidden_layers=2, num_attention_heads=2,
                                 mlp_ratio=2.0, image_size=S, window_size=2,
                                 global_attn_indexes=(1,), output_channels=C),
        decoder=MaskDecoderConfig(embed_dim=C, num_heads=2, mlp_dim=64, iou_head_hidden_dim=C)))
    ours.load_state_dict(convert_official_state_dict(official.state_dict()))
    ours.eval()
    images = torch.randn(1, 3, S, S)
    points, labels = torch.rand(3, 2, 2) * (S - 1), torch.tensor([[1, 0]] * 3)
    xy = torch.rand(3, 2, 2) * (S - 1)
    boxes = torch.cat([xy.min(dim=1).values, xy.max(dim=1).values], dim=-1)
    masks = torch.randn(3, 1, S // 4, S // 4)  # the original: one mask per prompt
    with torch.no_grad():
        embedding = encoder(images)
        torch.testing.assert_close(ours.embed(images), embedding, atol=1e-4, rtol=1e-4)
        for pts, box, mask in [(True, False, False), (False, True, False), (True, True, False),
                               (True, False, True)]:
            sparse, dense = prompt((points, labels) if pts else None, boxes if box else None,
                                   masks if mask else None)
            ref, ref_iou = decoder(embedding, prompt.get_dense_pe(), sparse, dense, True)
            out = ours.decode(embedding, points[None] if pts else None,
                              labels[None] if pts else None, boxes[None] if box else None,
                              masks[None, :, 0] if mask else None)
            torch.testing.assert_close(out["mask_logits"][0], ref, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(out["iou_scores"][0], ref_iou, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tiny_forward_backward(dtype):
    """The CPU-sized model: 64 x 64 input, 8 x 8 embedding, 32 x 32 low-res masks; every
    prompt kind at once, gradients reach the encoder, the decoder and the prompt embeddings."""
    torch.manual_seed(0)
    model = sam("tiny").to(dtype)
    images = torch.randn(2, 3, 64, 64, dtype=dtype)
    points = torch.tensor([[[[5.0, 9.0], [60.0, 1.0]]] * 3] * 2)  # B = 2, P = 3, N = 2
    labels = torch.tensor([1, 0]).expand(2, 3, 2)
    boxes = torch.tensor([[[1.0, 2.0, 30.0, 40.0]] * 3] * 2)
    masks = torch.randn(2, 3, 32, 32, dtype=dtype)
    out = model(images, points, labels, boxes, masks)
    assert out["mask_logits"].shape == (2, 3, 3, 32, 32) and out["mask_logits"].dtype == dtype
    assert out["iou_scores"].shape == (2, 3, 3)
    (out["mask_logits"].mean() + out["iou_scores"].mean()).backward()
    for name in ("image_encoder.patch_embed.weight", "prompt_encoder.point_embed.weight",
                 "prompt_encoder.mask_downscaler.0.weight", "mask_decoder.mask_tokens.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    assert not model.prompt_encoder.pe.gaussian.requires_grad  # the Fourier Gaussian stays fixed
