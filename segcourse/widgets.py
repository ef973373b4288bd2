"""Interactive explorers for the chapters (ipywidgets), redrawing the static figures of
:mod:`segcourse.viz`, which tests check.

A live widget needs a running kernel, so a chapter shows the static figure first, then the
widget in a cell the book does not render.

- :func:`dilation_explorer` -- sliders for the dilation rates, redrawing the figure (chapter 4).
- :func:`crf_explorer` -- :func:`~segcourse.viz.crf_figure` with sliders for the CRF's kernel
  widths, weights and iterations (chapter 8).
- :func:`tta_explorer` -- :func:`~segcourse.viz.tta_figure` with checkboxes for the scales and the
  flip (chapter 8).
- :func:`click_explorer` -- click on an image and see SAM's mask, click after click (chapter 11);
  its state and model calls are a plain :class:`ClickSession`, which the tests check against
  :meth:`~segcourse.models.sam.Sam.predict`. It needs ``ipyevents`` for the clicks.
"""

from __future__ import annotations

import io
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from ._checks import check_count, check_rgb_image
from .models.sam import Sam, preprocess
from .models.sam_training import mask_iou
from .viz import (
    crf_figure,
    multimask_figure,
    overlay,
    plot_receptive_field,
    receptive_field_extent,
    tta_figure,
)
from .viz._checks import check_batch
from .viz.prompts import MASK_PALETTE, NEGATIVE, POSITIVE

__all__ = ["dilation_explorer", "crf_explorer", "tta_explorer", "ClickSession",
           "click_explorer"]


def _show(fig) -> None:
    """Display a figure inside an ``ipywidgets.Output`` on any backend, then free it."""
    from IPython.display import display

    display(fig)
    plt.close(fig)


def _check_explorer_inputs(images, masks) -> None:
    """At least one image, and one mask of its size per image (the slider indexes both)."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or len(images) == 0:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a non-empty tensor [N, 3, H, W], got {got}")
    check_batch(images, {"masks": masks})


def dilation_explorer(num_layers: int = 3, max_dilation: int = 8):
    """Sliders for the dilation rate of each 3x3 layer; redraws the receptive field live.

    Returns an ``ipywidgets.VBox``; display it in a notebook with a running kernel.
    """
    import ipywidgets as widgets  # only needed for the live explorer

    if num_layers < 1 or max_dilation < 1:
        raise ValueError("num_layers and max_dilation must be >= 1")
    sliders = [widgets.IntSlider(value=2, min=1, max=max_dilation, description=f"layer {i + 1}",
                                 continuous_update=False) for i in range(num_layers)]
    # a fixed canvas for the largest setting, so the picture does not jump as rates change
    size = receptive_field_extent([max_dilation] * num_layers)
    out = widgets.Output()

    def redraw(*_):
        with out:
            out.clear_output(wait=True)
            _show(plot_receptive_field([s.value for s in sliders], size=size))

    for s in sliders:
        s.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox(sliders[:3]), *([widgets.HBox(sliders[3:])]
                                                      if num_layers > 3 else []), out])


def crf_explorer(images: torch.Tensor, probs: torch.Tensor, masks: torch.Tensor, palette, **start):
    """Sliders for the dense CRF's iterations, weights and widths on one of ``images`` (live).

    ``images`` ``[N, 3, H, W]`` in [0, 1], ``probs`` ``[N, K, H, W]``, ``masks`` ``[N, H, W]``;
    ``start`` sets sliders' initial values by parameter name (default: ``dense_crf``'s defaults).
    Returns an ``ipywidgets.VBox`` that redraws :func:`crf_figure`.
    """
    import ipywidgets as widgets  # only needed for the live explorer

    _check_explorer_inputs(images, masks)
    if not isinstance(probs, torch.Tensor) or probs.dim() != 4 or len(probs) != len(images):
        got = tuple(probs.shape) if isinstance(probs, torch.Tensor) else type(probs).__name__
        raise ValueError(f"probs must be [N, K, H, W] with one map per image "
                         f"(N = {len(images)}), got {got}")

    def slider(kind, value, low, high, step, label):
        return kind(value=value, min=low, max=high, step=step, description=label,
                    continuous_update=False)

    controls = {
        "index": slider(widgets.IntSlider, 0, 0, len(images) - 1, 1, "image"),
        "iterations": slider(widgets.IntSlider, 5, 0, 15, 1, "iterations"),
        "w_gaussian": slider(widgets.FloatSlider, 3.0, 0.0, 10.0, 0.5, "w smooth"),
        "theta_gamma": slider(widgets.FloatSlider, 3.0, 0.5, 10.0, 0.5, "θγ (px)"),
        "w_bilateral": slider(widgets.FloatSlider, 10.0, 0.0, 30.0, 1.0, "w appear"),
        "theta_alpha": slider(widgets.FloatSlider, 80.0, 2.0, 160.0, 2.0, "θα (px)"),
        "theta_beta": slider(widgets.FloatSlider, 13.0, 1.0, 80.0, 1.0, "θβ (RGB)"),
    }
    unknown = set(start) - set(controls)
    if unknown:
        raise ValueError(f"unknown CRF parameter(s) {sorted(unknown)}; "
                         f"choose from {sorted(controls)}")
    for name, value in start.items():
        controls[name].value = value
    out = widgets.Output()

    def redraw(*_):
        params = {name: c.value for name, c in controls.items()}
        index = params.pop("index")
        with out:
            out.clear_output(wait=True)
            _show(crf_figure(images[index], probs[index], masks[index], palette, **params))

    for control in controls.values():
        control.observe(redraw, names="value")
    redraw()
    column = list(controls.values())
    return widgets.VBox([widgets.HBox([widgets.VBox(column[:4]), widgets.VBox(column[4:])]), out])


def tta_explorer(model, images: torch.Tensor, masks: torch.Tensor, palette,
                 scales: Sequence[float] = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)):
    """Tick the scales and the flip to average over and watch the TTA prediction change (live)."""
    import ipywidgets as widgets  # only needed for the live explorer

    _check_explorer_inputs(images, masks)
    index = widgets.IntSlider(value=0, min=0, max=len(images) - 1, description="image",
                              continuous_update=False)
    boxes = [widgets.Checkbox(value=s == 1.0, description=f"scale {s:g}", indent=False)
             for s in scales]
    flip = widgets.Checkbox(value=False, description="flip", indent=False)
    out = widgets.Output()

    def redraw(*_):
        chosen = [s for s, box in zip(scales, boxes) if box.value] or [1.0]
        with out:
            out.clear_output(wait=True)
            _show(tta_figure(model, images[index.value], masks[index.value], palette,
                             scales=chosen, flip=flip.value))

    for control in (index, flip, *boxes):
        control.observe(redraw, names="value")
    redraw()
    return widgets.VBox([index, widgets.HBox(boxes + [flip]), out])


# --- chapter 11: clicking on SAM --------------------------------------------------------------

class ClickSession:
    """One image's clicks and SAM's mask for them: the image is embedded once
    (:meth:`Sam.embed`), each click decodes all clicks so far with the previous low-res logits
    as the mask prompt -- multimask only for the first click, keeping the mask of highest
    predicted IoU -- through the chain :meth:`Sam.predict` uses (``preprocess``, ``embed``,
    :meth:`Sam.decode_image`). Put the model in ``eval()`` first.

    Clicks ``(x, y)`` are pixel indices (column, row), as every SAM prompt in segcourse.
    """

    def __init__(self, model: Sam, image: torch.Tensor):
        if not isinstance(model, Sam):
            raise ValueError(f"model must be a segcourse Sam, got {type(model).__name__}")
        check_rgb_image(image)
        self.model, self.image = model, image
        self.size = tuple(image.shape[-2:])
        weight = model.mask_decoder.iou_token.weight
        self._dtype, self._device = weight.dtype, weight.device
        S = model.config.encoder.image_size
        with torch.no_grad():  # the heavy encoder, once per image
            x = preprocess(image[None].to(self._device, self._dtype), S)
            self.embedding = model.embed(x)
        self.reset()

    @property
    def num_clicks(self) -> int:
        return len(self._steps)

    def reset(self) -> None:
        """Forget every click (the embedding stays)."""
        self._points: list[tuple[int, int]] = []
        self._labels: list[int] = []
        self._steps: list[dict] = []  # per click: the decoder's answer

    def undo(self) -> None:
        """Forget the last click (nothing to undo is no error: the button may be pressed
        twice)."""
        if self._steps:
            self._points.pop()
            self._labels.pop()
            self._steps.pop()

    @torch.no_grad()
    def add_click(self, x: int, y: int, positive: bool = True) -> dict:
        """Click pixel ``(x, y)``; returns :meth:`result`."""
        H, W = self.size
        x, y = check_count(x, "x", minimum=0), check_count(y, "y", minimum=0)
        if x >= W or y >= H:
            raise ValueError(f"the click ({x}, {y}) must lie inside the {W} x {H} image "
                             f"(0 <= x < {W}, 0 <= y < {H})")
        self._points.append((x, y))
        self._labels.append(1 if positive else 0)
        points = torch.tensor(self._points, dtype=torch.float32, device=self._device)
        labels = torch.tensor(self._labels, device=self._device).view(1, 1, -1)
        previous = self._steps[-1]["logits"][None, None] if self._steps else None
        first = not self._steps  # one click is ambiguous: ask for 3 masks
        out = self.model.decode_image(self.embedding, self.size, points.view(1, 1, -1, 2),
                                      labels, mask_inputs=previous, multimask_output=first)
        logits, iou = out["mask_logits"][0, 0], out["iou_scores"][0, 0]  # [M, 4h, 4w], [M]
        best = int(iou.argmax())
        masks = out["logits"][0, 0] > 0  # [M, H, W]
        self._steps.append({"logits": logits[best], "masks": masks, "iou_scores": iou,
                            "best": best})
        return self.result()

    def result(self) -> dict:
        """``mask`` bool ``[H, W]`` (empty before the first click), ``iou`` (SAM's predicted
        IoU, ``None`` before), ``points [N, 2]``, ``labels [N]``, and the last decode's
        ``masks [M, H, W]`` and ``iou_scores [M]`` (M = 3 after the first click, then 1)."""
        points = torch.tensor(self._points, dtype=torch.float32).view(-1, 2)
        labels = torch.tensor(self._labels, dtype=torch.long)
        if not self._steps:
            empty = torch.zeros(self.size, dtype=torch.bool)
            return {"mask": empty, "iou": None, "points": points, "labels": labels,
                    "masks": empty[None], "iou_scores": torch.zeros(1)}
        step = self._steps[-1]
        masks, scores = step["masks"].cpu(), step["iou_scores"].float().cpu()
        return {"mask": masks[step["best"]], "iou": float(scores[step["best"]]),
                "points": points, "labels": labels, "masks": masks, "iou_scores": scores}


def _click_picture(image, mask, points, labels, scale: int) -> bytes:
    """The image with the mask overlaid, upscaled ``scale`` x (nearest), each click a square
    over its pixel with a white rim; as PNG bytes."""
    rgb = overlay(image, mask.numpy().astype(np.int64), MASK_PALETTE, 0.55, ignore_index=0)
    big = np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)
    rim = max(1, scale // 3)
    for (x, y), label in zip(points.long().tolist(), labels.tolist()):
        x0, y0 = x * scale, y * scale
        big[max(0, y0 - rim):y0 + scale + rim, max(0, x0 - rim):x0 + scale + rim] = 1.0
        colour = POSITIVE if label == 1 else NEGATIVE
        big[y0:y0 + scale, x0:x0 + scale] = [int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    buffer = io.BytesIO()
    plt.imsave(buffer, np.clip(big, 0, 1), format="png")
    return buffer.getvalue()


def _event_pixel(event: dict, scale: int, size) -> tuple[int, int]:
    """An ipyevents click on the upscaled picture -> the image pixel ``(x, y)``. ipyevents 2
    gives ``dataX`` / ``dataY`` in the PNG's own pixels for an ``Image`` widget (whatever size it
    is displayed at); without them, ``relativeX`` / ``relativeY`` scaled by the displayed size."""
    H, W = size
    if "dataX" in event and event["dataX"] is not None:
        px, py = event["dataX"], event["dataY"]
    else:
        px = event["relativeX"] * W * scale / (event.get("boundingRectWidth") or W * scale)
        py = event["relativeY"] * H * scale / (event.get("boundingRectHeight") or H * scale)
    return (min(max(int(px // scale), 0), W - 1), min(max(int(py // scale), 0), H - 1))


def _object_masks(targets, n: int, size_of) -> list:
    """Per image its object masks ``[k, H, W]`` (bool), from masks or target dicts."""
    if targets is None:
        return [None] * n
    if len(targets) != n:
        raise ValueError(f"targets holds {len(targets)} entries but images holds {n}: pass "
                         "one per image")
    out = []
    for i, t in enumerate(targets):
        m = t["masks"] if isinstance(t, dict) else t
        m = torch.as_tensor(m).bool()
        m = m[None] if m.dim() == 2 else m
        if m.dim() != 3 or tuple(m.shape[1:]) != size_of(i):
            raise ValueError(f"targets[{i}] must be object masks [k, H, W] (or [H, W], or a "
                             f"dict with 'masks') of images[{i}]'s size {size_of(i)}, got "
                             f"{tuple(m.shape)}")
        out.append(m)
    return out


def click_explorer(model: Sam, images, targets=None, scale: int = 6):
    """Click on an image and see SAM's mask (live): "positive" / "negative" clicks
    (shift-click is negative), undo, reset, a slider over ``images`` (``[N, 3, H, W]`` in
    [0, 1]), and "show 3 masks" for the first, ambiguous click. The text line gives SAM's
    predicted IoU and, with ``targets`` (per image its object masks ``[k, H, W]``, or
    ``InstanceTargets`` dicts), the true IoU with the object the mask overlaps most.

    Needs ``ipyevents`` (``pip install ipyevents``); on Colab run ``from google.colab import
    output; output.enable_custom_widget_manager()`` first. Returns an ``ipywidgets.VBox``
    whose ``sessions`` (one :class:`ClickSession` per image, made when first shown) hold the
    clicks and ``events`` is the ``ipyevents.Event``.
    """
    try:
        import ipyevents
    except ImportError as error:
        raise ImportError("click_explorer needs ipyevents for the clicks: pip install "
                          "ipyevents (on Colab also run: from google.colab import output; "
                          "output.enable_custom_widget_manager())") from error
    import ipywidgets as widgets

    if not isinstance(images, torch.Tensor) or images.dim() != 4 or len(images) == 0 \
            or images.shape[1] != 3:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a non-empty tensor [N, 3, H, W], got {got}")
    scale = check_count(scale, "scale")
    size = tuple(images.shape[-2:])
    objects = _object_masks(targets, len(images), lambda i: size)
    sessions: list[ClickSession | None] = [None] * len(images)

    H, W = size
    picture = widgets.Image(format="png", layout=widgets.Layout(width=f"{W * scale}px",
                                                                height=f"{H * scale}px"))
    events = ipyevents.Event(source=picture, watched_events=["click"],
                             prevent_default_action=True)
    mode = widgets.ToggleButtons(options=["positive", "negative"], value="positive")
    undo, reset = widgets.Button(description="undo"), widgets.Button(description="reset")
    index = widgets.IntSlider(value=0, min=0, max=len(images) - 1, description="image",
                              continuous_update=False)
    three = widgets.Checkbox(value=False, description="show 3 masks", indent=False)
    status, out = widgets.HTML(), widgets.Output()

    def session() -> ClickSession:
        i = index.value
        if sessions[i] is None:
            sessions[i] = ClickSession(model, images[i])
        return sessions[i]

    def redraw(*_):
        s, i = session(), index.value
        r = s.result()
        picture.value = _click_picture(images[i], r["mask"], r["points"], r["labels"], scale)
        if r["iou"] is None:
            status.value = "click on an object (shift-click: a negative click)"
        else:
            text = f"{s.num_clicks} click(s): predicted IoU {r['iou']:.2f}"
            if objects[i] is not None and len(objects[i]):
                text += f", true IoU {mask_iou(r['mask'][None], objects[i]).max():.2f}"
            status.value = text
        with out:
            out.clear_output(wait=True)
            if three.value and s.num_clicks == 1:
                best = int(r["iou_scores"].argmax())
                truth = None
                if objects[i] is not None and len(objects[i]):
                    truth = objects[i][mask_iou(r["masks"][best][None], objects[i]).argmax()]
                _show(multimask_figure(images[i], r["points"][0], r["masks"],
                                       r["iou_scores"], truth))

    def on_click(event):
        x, y = _event_pixel(event, scale, size)
        session().add_click(x, y, mode.value == "positive" and not event.get("shiftKey"))
        redraw()

    events.on_dom_event(on_click)
    undo.on_click(lambda _: (session().undo(), redraw()))
    reset.on_click(lambda _: (session().reset(), redraw()))
    for control in (index, three):
        control.observe(redraw, names="value")
    redraw()
    explorer = widgets.VBox([widgets.HBox([mode, undo, reset]), widgets.HBox([index, three]),
                             picture, status, out])
    explorer.sessions, explorer.events = sessions, events
    return explorer
