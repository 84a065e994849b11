"""Box refinement + box voting (test.box_refinement): hand-made boxes with known results, then a real detector."""
import copy
import math

import pytest
import torch
import torch.nn as nn

from detection.config import load_det_config
from detection.model.box_refinement import box_voting
from detection.model.detectron2_semantics import Detectron2RoIHeads
from detection.model.inference import build_inference_model
from detection.model.roi_heads import C4RoIHeads


def test_box_voting_is_the_score_weighted_mean_of_its_class_at_iou_half():
    kept = torch.tensor([[0.0, 0, 10, 10], [100, 100, 120, 120]])
    kept_labels = torch.tensor([1, 2])
    boxes = torch.tensor([[0.0, 0, 10, 10], [2, 0, 12, 10], [0, 0, 10, 10], [30, 30, 40, 40], [101, 101, 121, 121]])
    scores = torch.tensor([0.9, 0.3, 0.8, 0.7, 0.5])
    labels = torch.tensor([1, 1, 2, 1, 2])  # box 2: same place, other class; box 3: same class, no overlap
    voted = box_voting(kept, kept_labels, boxes, scores, labels)
    expected0 = (0.9 * boxes[0] + 0.3 * boxes[1]) / 1.2  # IoU(box0, box1) = 80 / 120 >= 0.5
    torch.testing.assert_close(voted[0], expected0)
    torch.testing.assert_close(voted[1], boxes[4])  # its only same-class candidate at IoU >= 0.5 (0.82)
    alone = box_voting(torch.tensor([[200.0, 200, 210, 210]]), torch.tensor([1]), boxes, scores, labels)
    assert torch.equal(alone, torch.tensor([[200.0, 200, 210, 210]]))  # nothing to vote: unchanged
    assert box_voting(kept[:0], kept_labels[:0], boxes, scores, labels).shape == (0, 4)


class _BoxFeatures(nn.Module):
    """A pooler whose 'feature' of each RoI is its box, so the predictor below is a known function of the box."""

    def forward(self, features, boxes, image_shapes):
        return torch.cat(boxes)[:, :, None, None]


class _ShiftRight(nn.Module):
    """One class: logit 2 + 0.1 * x1 of the RoI, box regressed 1 px right per 10 px of width (dx = 1 / weight 10)."""

    def forward(self, x):
        x = x.flatten(1)
        logits = torch.stack([torch.zeros(len(x)), 2 + 0.1 * x[:, 0]], dim=1)
        deltas = torch.tensor([[0.0, 0, 0, 0, 1, 0, 0, 0]]).repeat(len(x), 1)
        return logits, deltas


def _heads(cls):
    heads = cls(_BoxFeatures(), nn.Identity(), _ShiftRight(), 0.5, 0.5, 64, 0.25, (10.0, 10.0, 5.0, 5.0), 0.05, 0.3,
                100, box_refinement=True)
    return heads.eval()


@pytest.mark.parametrize("cls", [C4RoIHeads, Detectron2RoIHeads])
def test_union_nms_and_voting_on_hand_made_boxes(cls):
    proposals = [torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60]])]
    (out,), _ = _heads(cls)({}, proposals, [(100, 100)])
    # pass 1: A -> A1 = [1, 0, 11, 10] (score from x1 = 0), B -> B1 = [51, 50, 61, 60] (x1 = 50);
    # pass 2 on A1, B1: A2 = [2, 0, 12, 10] (x1 = 1), B2 = [52, 50, 62, 60] (x1 = 51).
    score = lambda x1: 1 / (1 + math.exp(-(2 + 0.1 * x1)))  # noqa: E731  (softmax of [0, logit])
    a1, a2 = torch.tensor([1.0, 0, 11, 10]), torch.tensor([2.0, 0, 12, 10])
    b1, b2 = torch.tensor([51.0, 50, 61, 60]), torch.tensor([52.0, 50, 62, 60])
    # NMS 0.3 keeps the refined box of each pair (higher score); voting averages each pair by score
    assert out["labels"].tolist() == [1, 1]
    torch.testing.assert_close(out["scores"], torch.tensor([score(51), score(1)]))
    torch.testing.assert_close(out["boxes"][0], (score(50) * b1 + score(51) * b2) / (score(50) + score(51)))
    torch.testing.assert_close(out["boxes"][1], (score(0) * a1 + score(1) * a2) / (score(0) + score(1)))


def test_off_is_the_baseline_on_hand_made_boxes():
    heads = _heads(C4RoIHeads)
    heads.box_refinement = False
    (out,), _ = heads({}, [torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60]])], [(100, 100)])
    torch.testing.assert_close(out["boxes"], torch.tensor([[51.0, 50, 61, 60], [1, 0, 11, 10]]))


def test_refinement_in_a_real_detector_through_the_tools_inference_model():
    from detection.benchmark.detector_speed import build_benchmark_detector

    image = torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(0))
    model = build_benchmark_detector("resnet18", image, num_classes=3, rois=20,
                                     overrides=["model.roi_heads.score_thresh=0.0"])
    with torch.no_grad():
        baseline = model([image])[0]
    model.roi_heads.box_refinement = True
    cfg = load_det_config(None, ["test.box_refinement=true"])
    plain = build_inference_model(copy.deepcopy(model), load_det_config(None, ["test.optimize=false"]), "cpu")
    optimized = build_inference_model(model, cfg, "cpu")
    ref, out = plain([image])[0], optimized([image])[0]
    assert len(ref["boxes"]) > 0 and not torch.equal(ref["boxes"], baseline["boxes"][: len(ref["boxes"])])
    assert torch.equal(out["labels"], ref["labels"])
    torch.testing.assert_close(out["boxes"], ref["boxes"], rtol=0, atol=0.05)
    torch.testing.assert_close(out["scores"], ref["scores"], rtol=0, atol=2e-4)


def test_the_key_reaches_the_detector_and_defaults_off():
    from detection.model.detector import build_detector

    assert load_det_config().test.box_refinement is False
    assert build_detector(load_det_config(None, ["model.backbone=resnet18"]), 2, weights=None).roi_heads.box_refinement is False
    on = build_detector(load_det_config(None, ["model.backbone=resnet18", "test.box_refinement=true"]), 2, weights=None)
    assert on.roi_heads.box_refinement is True
