"""torchvision's ``RoIHeads`` whose training losses follow the config's loss keys (``losses.fast_rcnn_losses``) and
which can refine its boxes at test time (``box_refinement.py``, ``test.box_refinement``)."""
from typing import Dict, List, Optional, Tuple

import torch
from torchvision.models.detection.roi_heads import RoIHeads

from .box_refinement import best_class_boxes, box_voting, voting_candidates
from .losses import fast_rcnn_losses


class C4RoIHeads(RoIHeads):
    """``RoIHeads`` (box branch only) with the Fast R-CNN box loss's smooth-L1 β as an argument.

    torchvision fixes β = 1/9 inside ``fastrcnn_loss``; py-faster-rcnn, which the paper used, has β = 1 and
    detectron2 β = 0 (L1). Test time is torchvision's (``postprocess_detections``, which the conventions' subclasses
    replace), optionally with box refinement and box voting (``box_refinement``).
    """

    def __init__(self, *args, smooth_l1_beta: float = 1.0, box_refinement: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.smooth_l1_beta = float(smooth_l1_beta)
        self.box_refinement = bool(box_refinement)

    def forward(self, features: Dict[str, torch.Tensor], proposals: List[torch.Tensor],
                image_shapes: List[Tuple[int, int]], targets: Optional[List[Dict[str, torch.Tensor]]] = None):
        if not self.training:
            if self.box_refinement:
                return self.refined_detections(features, proposals, image_shapes), {}
            return super().forward(features, proposals, image_shapes, targets)
        proposals, _, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        loss_classifier, loss_box_reg = fast_rcnn_losses(class_logits, box_regression, labels, regression_targets,
                                                         self.smooth_l1_beta)
        return [], {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}

    def _predict(self, features, boxes: List[torch.Tensor], image_shapes):
        return self.box_predictor(self.box_head(self.box_roi_pool(features, boxes, image_shapes)))

    def refined_detections(self, features: Dict[str, torch.Tensor], proposals: List[torch.Tensor],
                           image_shapes: List[Tuple[int, int]]) -> List[Dict[str, torch.Tensor]]:
        """Detections from the union of the proposals' and the refined boxes' predictions, then box voting."""
        logits, deltas = self._predict(features, proposals, image_shapes)
        refined = best_class_boxes(logits, deltas, proposals, image_shapes, self.box_coder)
        logits2, deltas2 = self._predict(features, refined, image_shapes)
        per_image = [len(p) for p in proposals]
        union = [torch.cat([p, r]) for p, r in zip(proposals, refined)]
        logits = torch.cat([t for pair in zip(logits.split(per_image), logits2.split(per_image)) for t in pair])
        deltas = torch.cat([t for pair in zip(deltas.split(per_image), deltas2.split(per_image)) for t in pair])
        boxes, scores, labels = self.postprocess_detections(logits, deltas, union, image_shapes)
        candidates = voting_candidates(logits, deltas, union, image_shapes, self.box_coder, self.score_thresh)
        return [{"boxes": box_voting(b, lab, *cand), "labels": lab, "scores": sc}
                for b, sc, lab, cand in zip(boxes, scores, labels, candidates)]
