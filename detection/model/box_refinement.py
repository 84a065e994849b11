"""Box refinement with box voting at test time (ResNet paper, Appendix B; ``test.box_refinement: true``).

For each RoI, the box regressed for its highest-scoring foreground class is pooled again and scored and regressed a
second time; the original and the refined predictions (e.g. 300 + 300 RoIs, every class) are taken together through
the detector's own post-processing (score threshold, per-class NMS at ``model.roi_heads.nms_thresh``: 0.3 in the
paper's settings), and each kept box is replaced by the score-weighted mean of the candidates of its class that
overlap it at IoU >= 0.5 (box voting, Gidaris & Komodakis 2015, which the paper cites). Scores stay those of the kept
boxes. The candidates for voting are the union's boxes above the score threshold, before NMS.
"""
from typing import List, Tuple

import torch
from torchvision.ops import box_iou, clip_boxes_to_image

VOTING_IOU = 0.5


def best_class_boxes(class_logits: torch.Tensor, box_regression: torch.Tensor, proposals: List[torch.Tensor],
                     image_shapes: List[Tuple[int, int]], box_coder) -> List[torch.Tensor]:
    """Per image, each RoI's box regressed for its highest-scoring foreground class, clipped to the image."""
    decoded = box_coder.decode(box_regression, proposals)  # [R, K + 1, 4]
    best = class_logits[:, 1:].argmax(dim=1) + 1  # softmax is monotone: the same class as by probability
    boxes = decoded[torch.arange(len(best), device=best.device), best]
    return [clip_boxes_to_image(b, shape) for b, shape in zip(boxes.split([len(p) for p in proposals]), image_shapes)]


def voting_candidates(class_logits: torch.Tensor, box_regression: torch.Tensor, proposals: List[torch.Tensor],
                      image_shapes: List[Tuple[int, int]], box_coder, score_thresh: float):
    """Per image, (boxes [M, 4], scores [M], labels [M]) of every foreground prediction above ``score_thresh``."""
    decoded = box_coder.decode(box_regression, proposals)
    scores = torch.softmax(class_logits, -1)
    out = []
    per_image = [len(p) for p in proposals]
    for boxes, probs, shape in zip(decoded.split(per_image), scores.split(per_image), image_shapes):
        boxes = clip_boxes_to_image(boxes, shape)[:, 1:].reshape(-1, 4)
        labels = torch.arange(1, probs.shape[1], device=probs.device).repeat(probs.shape[0])
        probs = probs[:, 1:].reshape(-1)
        keep = probs > score_thresh
        out.append((boxes[keep], probs[keep], labels[keep]))
    return out


def box_voting(kept_boxes: torch.Tensor, kept_labels: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor,
               labels: torch.Tensor, iou_thresh: float = VOTING_IOU) -> torch.Tensor:
    """Each kept box → the score-weighted mean of the candidates of its class with IoU >= ``iou_thresh`` with it.

    A kept box that was itself a candidate always has at least itself to vote; one with no candidate stays as it is.
    """
    if len(kept_boxes) == 0 or len(boxes) == 0:
        return kept_boxes
    overlap = box_iou(kept_boxes, boxes) >= iou_thresh
    weights = (overlap & (kept_labels[:, None] == labels[None, :])).to(scores.dtype) * scores[None, :]
    total = weights.sum(dim=1, keepdim=True)
    voted = (weights @ boxes) / total.clamp(min=torch.finfo(scores.dtype).tiny)
    return torch.where(total > 0, voted, kept_boxes)
