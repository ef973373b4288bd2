"""SAM's prompt encoder: points, boxes and masks as embeddings for the mask decoder.

Paper: Kirillov et al., "Segment Anything", ICCV 2023, section 3 and appendix A ("Prompt
encoder"). Reference code: facebookresearch/segment-anything,
``segment_anything/modeling/prompt_encoder.py`` (``PromptEncoder``, ``PositionEmbeddingRandom``),
and HF transformers ``models/sam/modeling_sam.py`` (``SamPromptEncoder``,
``SamPositionalEmbedding``, ``SamMaskEmbedding``); checked against HF in
``tests/test_sam_decoder.py``.

* **Sparse prompts** (points, box corners) become tokens: a random-Fourier encoding of the
  coordinate (Tancik et al., 2020: ``[sin(2 pi G v), cos(2 pi G v)]`` with ``v`` in [-1, 1]^2 and
  a fixed Gaussian ``G`` of shape ``[2, C/2]``) plus a learned embedding saying what the token is
  -- a positive point, a negative point, the top-left or the bottom-right box corner. A padding
  point ("not a point", label -1) is the learned embedding alone.
* **Dense prompts** (a low-resolution mask, 4x the embedding grid, e.g. 256 x 256) are
  downscaled 4x by two 2 x 2 stride-2 convs (LayerNorm2d, GELU) and a 1 x 1 conv to the
  embedding width; without a mask every position gets the learned "no mask" embedding.
* The same Gaussian ``G`` encodes the image grid (:meth:`SamPromptEncoder.dense_pe`), so the
  decoder can compare a point's code with every image position.

Where we differ from the references:

* Points and boxes are in pixels of the encoder's square input (``image_size``, 1024 in the
  paper), as HF and the original ``SamPredictor`` pass them after resizing; the +0.5 shift to the
  pixel centre and the division by ``image_size`` happen here.
* Inputs are validated (labels in {-1, 0, 1}, points and boxes inside the image, x2 >= x1 and
  y2 >= y1, matching shapes, at least one prompt) with ``ValueError`` s; HF's extra label -10
  ("ignore this point entirely") is not accepted.
* Mask prompts are per prompt, ``[B, P, 4h, 4w]`` (the original's layout: one mask per
  prompt, which the click-training loop needs to feed each object's previous logits back);
  HF takes one mask per image. ``P = 1`` broadcasts over the prompts.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .blocks import LayerNorm2d

__all__ = ["RandomFourierEncoding", "MaskDownscaler", "SamPromptEncoder", "check_inside",
           "convert_hf_prompt_encoder_state_dict"]


class RandomFourierEncoding(nn.Module):
    """``[sin(2 pi (2v - 1) G), cos(2 pi (2v - 1) G)]`` of coordinates ``v`` in [0, 1]^2."""

    def __init__(self, num_feats: int, scale: float = 1.0):
        super().__init__()
        # never trained: a buffer, as in the original (and HF < 5; HF 5 makes it a parameter),
        # so parameter counts are the original's; saved with the weights
        self.register_buffer("gaussian", scale * torch.randn(2, num_feats))

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        v = (2 * coords - 1).to(self.gaussian.dtype) @ self.gaussian  # (..., 2) -> (..., C/2)
        v = 2 * math.pi * v
        return torch.cat([v.sin(), v.cos()], dim=-1)  # (..., C)


class MaskDownscaler(nn.Sequential):
    """Mask prompt -> dense embedding: conv 2x2 s2 -> LN2d -> GELU (twice) -> 1x1 conv."""

    def __init__(self, embed_dim: int, mask_in_chans: int = 16):
        super().__init__(nn.Conv2d(1, mask_in_chans // 4, 2, stride=2),
                         LayerNorm2d(mask_in_chans // 4), nn.GELU(),
                         nn.Conv2d(mask_in_chans // 4, mask_in_chans, 2, stride=2),
                         LayerNorm2d(mask_in_chans), nn.GELU(),
                         nn.Conv2d(mask_in_chans, embed_dim, 1))


def _check_tensor(x, name: str, dims: int, last: int | None, layout: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor {layout}, got {type(x).__name__}")
    if x.dim() != dims or (last is not None and x.shape[-1] != last):
        raise ValueError(f"{name} must have shape {layout}, got {tuple(x.shape)}")
    return x


def check_inside(points, labels, boxes, size: tuple[int, int]) -> None:
    """ValueError unless every real point (label != -1) ``[..., 2]`` and every box ``[..., 4]``
    lies in the ``(H, W)`` image: ``0 <= x <= W``, ``0 <= y <= H`` (pixel coordinates)."""
    H, W = size
    for name, xy, keep in (("points", points, None if labels is None else labels != -1),
                           ("boxes", boxes, None)):
        if xy is None:
            continue
        last = 2 if name == "points" else 4
        if not isinstance(xy, torch.Tensor) or xy.dim() < 2 or xy.shape[-1] != last:
            raise ValueError(f"{name} must be a tensor [..., {last}] of pixel coordinates, got "
                             f"{tuple(xy.shape) if isinstance(xy, torch.Tensor) else type(xy)}")
        xy = xy.unflatten(-1, (-1, 2))  # (..., 2 or 4) -> (..., 1 or 2, 2) as (x, y)
        if keep is not None:
            if not isinstance(keep, torch.Tensor) or keep.shape != xy.shape[:-2]:
                raise ValueError(f"point_labels must have shape {tuple(xy.shape[:-2])}")
            xy = xy[keep]
        x, y = xy[..., 0], xy[..., 1]
        if xy.numel() and ((x < 0) | (x > W) | (y < 0) | (y > H)).any():
            raise ValueError(f"{name} must lie inside the image (0 <= x <= {W}, "
                             f"0 <= y <= {H}), got x in [{x.min().item():g}, "
                             f"{x.max().item():g}], y in [{y.min().item():g}, "
                             f"{y.max().item():g}]")


class SamPromptEncoder(nn.Module):
    """Points, boxes and masks -> sparse tokens ``[B, P, N, C]`` and dense ``[B, P, C, h, w]``.

    ``image_size``: side of the encoder's square input (prompt coordinates are in its pixels);
    ``embedding_size``: side ``h = w`` of the image embedding (``image_size / 16``).
    """

    def __init__(self, embed_dim: int = 256, image_size: int = 1024, embedding_size: int = 64,
                 mask_in_chans: int = 16, pe_scale: float = 1.0):
        super().__init__()
        self.embed_dim, self.image_size, self.embedding_size = embed_dim, image_size, embedding_size
        self.pe = RandomFourierEncoding(embed_dim // 2, pe_scale)
        # what a token is: 0 negative point, 1 positive point, 2 top-left, 3 bottom-right corner
        self.point_embed = nn.Embedding(4, embed_dim)
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaler = MaskDownscaler(embed_dim, mask_in_chans)
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def dense_pe(self, height: int | None = None, width: int | None = None) -> torch.Tensor:
        """Encoding of the centres of the ``h x w`` embedding grid, ``[1, C, h, w]``."""
        h = height or self.embedding_size
        w = width or h
        device = self.pe.gaussian.device
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (h, w, 2) as (x, y)
        return self.pe(grid).permute(2, 0, 1).unsqueeze(0)  # (h, w, C) -> (1, C, h, w)

    def _encode_coords(self, coords: torch.Tensor) -> torch.Tensor:
        # pixel -> centre of the pixel -> [0, 1] of the square input
        return self.pe((coords + 0.5) / self.image_size)

    def _embed_points(self, points, labels, pad: bool) -> torch.Tensor:
        B, P = points.shape[:2]
        if pad:  # with no box, the original appends one padding point (label -1) to every prompt
            points = torch.cat([points, points.new_zeros(B, P, 1, 2)], dim=2)
            labels = torch.cat([labels, labels.new_full((B, P, 1), -1)], dim=2)
        emb = self._encode_coords(points)  # (B, P, N, C)
        lab = labels[..., None]
        emb = torch.where(lab == -1, self.not_a_point_embed.weight, emb)
        emb = emb + torch.where(lab == 0, self.point_embed.weight[0], 0.0)
        return emb + torch.where(lab == 1, self.point_embed.weight[1], 0.0)

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        B, P = boxes.shape[:2]
        emb = self._encode_coords(boxes.reshape(B, P, 2, 2))  # (B, P, 4) -> two corners (x, y)
        return emb + self.point_embed.weight[2:4]  # top-left, bottom-right corner embeddings

    def _check(self, points, labels, boxes, masks) -> tuple[int, int]:
        """Validate the prompts; return (B, P)."""
        if points is None and boxes is None and masks is None:
            raise ValueError("no prompt given: pass points (with point_labels), boxes or "
                             "mask_inputs")
        shapes = {}
        S = self.image_size
        if points is not None:
            _check_tensor(points, "points", 4, 2, "[B, P, N, 2] (x, y pixels)")
            if labels is None:
                raise ValueError("point_labels must be given with points: [B, P, N] with 1 "
                                 "(positive), 0 (negative) or -1 (padding)")
            _check_tensor(labels, "point_labels", 3, None, "[B, P, N]")
            if labels.shape != points.shape[:3]:
                raise ValueError(f"point_labels shape {tuple(labels.shape)} must match points "
                                 f"[B, P, N] = {tuple(points.shape[:3])}")
            bad = ~((labels == -1) | (labels == 0) | (labels == 1))
            if bad.any():
                raise ValueError(f"point_labels must be in {{-1, 0, 1}}, got "
                                 f"{sorted(set(labels[bad].tolist()))}")
            check_inside(points, labels, None, (S, S))
            shapes["points"] = tuple(points.shape[:2])
        elif labels is not None:
            raise ValueError("point_labels given without points")
        if boxes is not None:
            _check_tensor(boxes, "boxes", 3, 4, "[B, P, 4] (x1, y1, x2, y2 pixels)")
            check_inside(None, None, boxes, (S, S))
            if (boxes[..., 2] < boxes[..., 0]).any() or (boxes[..., 3] < boxes[..., 1]).any():
                raise ValueError("boxes must be (x1, y1, x2, y2) with x2 >= x1 and y2 >= y1")
            shapes["boxes"] = tuple(boxes.shape[:2])
        if masks is not None:
            side = 4 * self.embedding_size
            _check_tensor(masks, "mask_inputs", 4, None, f"[B, P, {side}, {side}]")
            if tuple(masks.shape[-2:]) != (side, side):
                raise ValueError(f"mask_inputs must be [B, P, {side}, {side}] (4x the image "
                                 f"embedding), got {tuple(masks.shape)}")
        if len(set(shapes.values())) > 1:
            raise ValueError(f"points and boxes must have the same [B, P] (one box per prompt), "
                             f"got {shapes['points']} and {shapes['boxes']}")
        if shapes:
            B, P = next(iter(shapes.values()))
            if masks is not None and (masks.shape[0] != B or masks.shape[1] not in (1, P)):
                raise ValueError(f"mask_inputs [B, P, ...] must have B = {B} and P = {P} "
                                 f"(or 1), got {tuple(masks.shape)}")
        else:
            B, P = masks.shape[:2]
        return B, P

    def forward(self, points=None, point_labels=None, boxes=None, mask_inputs=None):
        """Sparse ``[B, P, N, C]`` (points, then the two box corners) and dense
        ``[B, P or 1, C, h, w]`` prompt embeddings."""
        B, P = self._check(points, point_labels, boxes, mask_inputs)
        dtype = self.point_embed.weight.dtype  # float prompts in the parameters' precision
        sparse = [self.point_embed.weight.new_zeros(B, P, 0, self.embed_dim)]
        if points is not None:
            sparse.append(self._embed_points(points.to(dtype), point_labels, pad=boxes is None))
        if boxes is not None:
            sparse.append(self._embed_boxes(boxes.to(dtype)))
        sparse = torch.cat(sparse, dim=2)
        if mask_inputs is not None:
            Bm, Pm, H, W = mask_inputs.shape
            dense = self.mask_downscaler(mask_inputs.reshape(Bm * Pm, 1, H, W).to(dtype))
            dense = dense.reshape(Bm, Pm, *dense.shape[1:])  # (B*P, C, h, w) -> (B, P, C, h, w)
        else:
            h = self.embedding_size
            dense = self.no_mask_embed.weight.reshape(1, 1, -1, 1, 1).expand(B, 1, -1, h, h)
        return sparse, dense


_HF_NAMES = {"shared_embedding.positional_embedding": "pe.gaussian",
             "mask_embed.conv1": "mask_downscaler.0", "mask_embed.layer_norm1": "mask_downscaler.1",
             "mask_embed.conv2": "mask_downscaler.3", "mask_embed.layer_norm2": "mask_downscaler.4",
             "mask_embed.conv3": "mask_downscaler.6"}


def convert_hf_prompt_encoder_state_dict(hf_sd: dict) -> dict:
    """HF ``SamPromptEncoder`` state dict -> ours: module names, and HF's four one-row
    ``point_embed.i`` tables stacked into our one ``point_embed`` of four rows."""
    out, points = {}, {}
    for key, value in hf_sd.items():
        if key.startswith("point_embed."):
            points[int(key.split(".")[1])] = value
            continue
        prefix, _, leaf = key.rpartition(".")
        if key in _HF_NAMES:
            out[_HF_NAMES[key]] = value
        else:
            out[f"{_HF_NAMES.get(prefix, prefix)}.{leaf}"] = value
    out["point_embed.weight"] = torch.cat([points[i] for i in range(4)])
    return out
