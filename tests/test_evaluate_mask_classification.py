"""segcourse.evaluate with a mask-classification model: ``semantic`` and ``segment`` are used."""

import torch
import torch.nn as nn

from segcourse.evaluate import evaluate, evaluate_panoptic, predict, semantic_logits


class FixedScores(nn.Module):
    """Stand-in for Mask2Former: forward returns a dict; semantic() fixed scores >= 0."""

    returns_losses = True
    thing_classes, stuff_classes = (1,), (0,)

    def __init__(self, scores):
        super().__init__()
        self.scores = scores
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, images):
        return {"class_logits": torch.zeros(len(images), 1, 3)}

    def semantic(self, images):
        return self.scores.expand(len(images), -1, -1, -1)

    def segment(self, images):
        H, W = images.shape[-2:]
        masks = torch.zeros(1, H, W, dtype=torch.bool)
        masks[:, :, W // 2:] = True
        panoptic = torch.stack([masks[0].long(), masks[0].long()], -1)   # right half: object 1
        return [{"masks": masks, "scores": torch.ones(1), "labels": torch.ones(1, dtype=torch.long),
                 "panoptic": panoptic} for _ in images]


def test_semantic_logits_are_the_log_of_normalised_scores():
    scores = torch.tensor([[[[0.2]], [[0.6]]]])                       # [1, 2, 1, 1]
    model = FixedScores(scores)
    logits = semantic_logits(model, torch.zeros(1, 3, 1, 1))
    torch.testing.assert_close(logits.softmax(1), torch.tensor([[[[0.25]], [[0.75]]]]))


def test_evaluate_and_predict_use_semantic():
    scores = torch.zeros(1, 2, 2, 2)
    scores[0, 1, :, 1] = 0.9                                          # class 1 on the right column
    scores[0, 0, :, 0] = 0.5
    model = FixedScores(scores)
    images = torch.zeros(2, 3, 2, 2)
    masks = torch.tensor([[[0, 1], [0, 1]], [[0, 1], [1, 1]]])
    result = evaluate(model, (images, masks), num_classes=2, batch_size=1)
    # both predictions [[0, 1], [0, 1]]; over the two images class 0 has TP 3, FP 1, FN 0 ->
    # IoU 3/4, class 1 TP 4, FP 0, FN 1 -> 4/5
    assert abs(result["miou"] - (3 / 4 + 4 / 5) / 2) < 1e-6
    assert torch.equal(predict(model, images), torch.tensor([[[0, 1], [0, 1]]] * 2))


def test_evaluate_panoptic_scores_segment_outputs():
    images = torch.zeros(3, 4, 4)
    masks = torch.zeros(1, 4, 4, dtype=torch.bool)
    masks[:, :, 2:] = True
    semantic = masks[0].long()                                        # right half class 1
    target = {"masks": masks, "labels": torch.ones(1, dtype=torch.long), "semantic": semantic}

    class Pairs(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return images, target

        @staticmethod
        def collate_fn(batch):
            xs, ts = zip(*batch)
            return torch.stack(xs), list(ts)

    model = FixedScores(torch.zeros(1, 2, 4, 4))
    result = evaluate_panoptic(model, Pairs())
    assert result["mask_ap50"] == 1.0 and result["pq"] == 1.0
