"""segcourse.widgets.ClickSession and click_explorer (chapter 11): clicking on SAM."""

import matplotlib
import matplotlib.pyplot as plt
import pytest
import torch

from segcourse.models.sam import sam
from segcourse.widgets import ClickSession, _event_pixel

matplotlib.use("Agg")

H, W = 24, 40  # not square, smaller than the tiny encoder's 64: resize and padding both act


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return sam("tiny").eval()


@pytest.fixture(scope="module")
def image():
    return torch.rand(3, H, W, generator=torch.Generator().manual_seed(1))


def _predict_chain(model, image, clicks):
    """The clicks through Sam.predict, as the paper's interactive loop: 3 masks for the first
    click, the highest predicted IoU kept, its low-res logits fed back with all clicks so far."""
    previous, results = None, []
    for n in range(1, len(clicks) + 1):
        points = torch.tensor([[xy for xy, _ in clicks[:n]]], dtype=torch.float32)[None]
        labels = torch.tensor([[int(p) for _, p in clicks[:n]]])[None]
        out = model.predict(image[None], points, labels, mask_inputs=previous,
                            multimask_output=n == 1)
        best = int(out["iou_scores"][0, 0].argmax())
        previous = out["mask_logits"][0, 0, best][None, None]
        results.append((out["masks"][0, 0, best], out["iou_scores"][0, 0, best].item()))
    return results


@pytest.mark.parametrize("clicks", [
    [((7, 5), True)],
    [((7, 5), True), ((30, 20), False), ((39, 0), True)],  # the last on the right edge
])
def test_session_equals_predict(model, image, clicks):
    session = ClickSession(model, image)
    for ((x, y), positive), (mask, iou) in zip(clicks, _predict_chain(model, image, clicks)):
        r = session.add_click(x, y, positive)
        assert torch.equal(r["mask"], mask)
        assert r["iou"] == pytest.approx(iou, abs=1e-6)
    assert r["points"].tolist() == [list(xy) for xy, _ in clicks]
    assert r["labels"].tolist() == [int(p) for _, p in clicks]
    assert len(r["masks"]) == (3 if len(clicks) == 1 else 1)


def test_session_embeds_once(model, image, monkeypatch):
    calls = []
    embed = model.embed
    monkeypatch.setattr(model, "embed", lambda x: calls.append(x.shape) or embed(x))
    session = ClickSession(model, image)
    for x in (3, 10, 20):
        session.add_click(x, 4)
    session.undo()
    session.add_click(5, 5, positive=False)
    assert calls == [(1, 3, 64, 64)]


def test_undo_and_reset_restore_the_earlier_state(model, image):
    session = ClickSession(model, image)
    first = session.add_click(7, 5)
    session.add_click(30, 20, positive=False)
    session.undo()
    after = session.result()
    assert torch.equal(after["mask"], first["mask"]) and after["iou"] == first["iou"]
    assert after["points"].tolist() == [[7, 5]] and session.num_clicks == 1
    # the next click continues from the first click's logits, as if the second never was
    again = session.add_click(12, 9)
    fresh = ClickSession(model, image)
    fresh.add_click(7, 5)
    assert torch.equal(again["mask"], fresh.add_click(12, 9)["mask"])
    session.reset()
    empty = session.result()
    assert empty["iou"] is None and not empty["mask"].any() and empty["points"].shape == (0, 2)
    session.undo()  # nothing left to undo: no error
    assert session.num_clicks == 0


@pytest.mark.parametrize("args, match", [
    ((W, 0), "inside"), ((0, H), "inside"), ((-1, 0), "x must be"), ((1.5, 0), "x must be"),
])
def test_session_refuses_clicks_outside(model, image, args, match):
    with pytest.raises(ValueError, match=match):
        ClickSession(model, image).add_click(*args)


def test_session_refuses_bad_inputs(model, image):
    with pytest.raises(ValueError, match="model must be"):
        ClickSession(torch.nn.Identity(), image)
    with pytest.raises(ValueError, match=r"image must be a tensor \[3, H, W\]"):
        ClickSession(model, image[None])
    with pytest.raises(ValueError, match="image must be floating point"):
        ClickSession(model, (image * 255).long())
    with pytest.raises(ValueError, match=r"image values must lie in \[0, 1\]"):
        ClickSession(model, image * 255)


def test_event_pixel_maps_the_upscaled_picture_back():
    # a click in display pixels [6x, 6x + 6) of the 6x picture is on image pixel x
    assert _event_pixel({"dataX": 6 * 7 + 5, "dataY": 6 * 3}, 6, (H, W)) == (7, 3)
    assert _event_pixel({"dataX": 6 * W, "dataY": 6 * H}, 6, (H, W)) == (W - 1, H - 1)
    # shown at half size, without dataX: relative position scaled by the displayed size
    event = {"relativeX": 3 * 7 + 1, "relativeY": 3 * 2, "boundingRectWidth": 3 * W,
             "boundingRectHeight": 3 * H}
    assert _event_pixel(event, 6, (H, W)) == (7, 2)


# --- the widget (ipywidgets 7.7 as on Colab, and 8; ipyevents 2) ------------------------------

def _click(explorer, x, y, scale=6, shift=False):
    """What ipyevents sends for a click on image pixel (x, y) of the upscaled picture."""
    explorer.events._dom_handlers({"event": "click", "type": "click", "shiftKey": shift,
                                   "dataX": x * scale + scale // 2,
                                   "dataY": y * scale + scale // 2})


def test_explorer_adds_the_clicked_pixel(model, image, monkeypatch):
    pytest.importorskip("ipywidgets")
    pytest.importorskip("ipyevents")
    from segcourse import widgets
    from segcourse.widgets import click_explorer

    # without a kernel an Output captures nothing: count the figures it is asked to show
    shown = []
    monkeypatch.setattr(widgets, "_show", lambda fig: shown.append(fig))

    images = torch.stack([image, image.flip(-1)])
    targets = [torch.zeros(2, H, W, dtype=torch.bool), {"masks": torch.ones(1, H, W)}]
    explorer = click_explorer(model, images, targets)
    assert len(explorer.children) == 5
    before = explorer.children[2].value
    _click(explorer, 11, 4)
    _click(explorer, 2, 20, shift=True)
    r = explorer.sessions[0].result()
    assert r["points"].tolist() == [[11, 4], [2, 20]] and r["labels"].tolist() == [1, 0]
    assert explorer.children[2].value != before  # the picture was redrawn
    assert "2 click(s): predicted IoU" in explorer.children[3].value
    explorer.children[0].children[1].click()  # undo
    assert explorer.sessions[0].num_clicks == 1
    explorer.children[1].children[0].value = 1  # the second image: its own session
    _click(explorer, 5, 5)
    assert explorer.sessions[1].num_clicks == 1 and explorer.sessions[0].num_clicks == 1
    assert "true IoU" in explorer.children[3].value
    assert shown == []
    explorer.children[1].children[1].value = True  # show 3 masks (after the first click)
    assert len(shown) == 1 and len(shown[0].axes) == 3
    _click(explorer, 6, 6)  # a second click: one mask, no 3-mask figure
    assert len(shown) == 1
    plt.close("all")


def test_explorer_refuses_mismatched_inputs(model, image):
    pytest.importorskip("ipywidgets")
    pytest.importorskip("ipyevents")
    from segcourse.widgets import click_explorer

    with pytest.raises(ValueError, match=r"images must be a non-empty tensor"):
        click_explorer(model, image)
    with pytest.raises(ValueError, match="targets holds 2 entries"):
        click_explorer(model, image[None], [torch.zeros(H, W)] * 2)
    with pytest.raises(ValueError, match=r"targets\[0\] must be object masks"):
        click_explorer(model, image[None], [torch.zeros(1, W, H)])
