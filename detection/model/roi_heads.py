"""torchvision's ``RoIHeads`` whose training losses follow the config's loss keys (``losses.fast_rcnn_losses``), with
the paper's Appendix B additions: global context (``model.roi_heads.global_context``), box refinement at test time
(``box_refinement.py``, ``test.box_refinement``) and multi-scale pooling (``multiscale.py``, ``test.multiscale``).

Global context, in C4 form: the paper pools the whole image by global SPP; here the whole-image box is pooled like
any RoI (RoIAlign/RoIPool at the head's size) and goes through the same per-RoI head (res5 or fc6/fc7, shared
weights), and its vector is concatenated with each region's before the class and box layers, whose input doubles.
Sharing the head keeps the "post-RoI layers" the paper names pretrained, adds no parameters but the predictor's new
half, and trains end to end; a fixed-size pooled whole image stands in for SPP's pyramid of bins.
"""
from typing import Dict, List, Optional, Tuple

import torch
from torchvision.models.detection.roi_heads import RoIHeads

from .box_refinement import best_class_boxes, box_voting, voting_candidates
from .losses import fast_rcnn_losses
from .multiscale import maxout_pool

PYRAMID_KEY = "scale{}"  # feature-dict keys of the multi-scale pyramid (FasterRCNNC4 adds them at test time)


class C4RoIHeads(RoIHeads):
    """``RoIHeads`` (box branch only) with the Fast R-CNN box loss's smooth-L1 β as an argument.

    torchvision fixes β = 1/9 inside ``fastrcnn_loss``; py-faster-rcnn, which the paper used, has β = 1 and
    detectron2 β = 0 (L1). Test time is torchvision's (``postprocess_detections``, which the conventions' subclasses
    replace), optionally with box refinement and box voting (``box_refinement``).
    """

    def __init__(self, *args, smooth_l1_beta: float = 1.0, box_refinement: bool = False, global_context: bool = False,
                 multiscale_factors=(), canonical_size: float = 224.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.smooth_l1_beta = float(smooth_l1_beta)
        self.box_refinement = bool(box_refinement)
        self.global_context = bool(global_context)
        self.multiscale_factors = [float(f) for f in multiscale_factors]
        self.canonical_size = float(canonical_size)

    def forward(self, features: Dict[str, torch.Tensor], proposals: List[torch.Tensor],
                image_shapes: List[Tuple[int, int]], targets: Optional[List[Dict[str, torch.Tensor]]] = None):
        if not self.training:
            if self.box_refinement:
                return self.refined_detections(features, proposals, image_shapes), {}
            if self.global_context or PYRAMID_KEY.format(0) in features:
                boxes, scores, labels = self.postprocess_detections(*self._predict(features, proposals, image_shapes),
                                                                    proposals, image_shapes)
                return [{"boxes": b, "labels": lab, "scores": sc} for b, sc, lab in zip(boxes, scores, labels)], {}
            return super().forward(features, proposals, image_shapes, targets)
        proposals, _, labels, regression_targets = self.select_training_samples(proposals, targets)
        class_logits, box_regression = self._predict(features, proposals, image_shapes)
        loss_classifier, loss_box_reg = fast_rcnn_losses(class_logits, box_regression, labels, regression_targets,
                                                         self.smooth_l1_beta)
        return [], {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}

    def _pool(self, features, boxes: List[torch.Tensor], image_shapes) -> torch.Tensor:
        if PYRAMID_KEY.format(0) not in features:
            return self.box_roi_pool(features, boxes, image_shapes)
        pyramid = [features[PYRAMID_KEY.format(k)] for k in range(len(self.multiscale_factors))]
        return maxout_pool(self.box_roi_pool, pyramid, self.multiscale_factors, boxes, image_shapes,
                           self.canonical_size)

    def box_features(self, features, boxes: List[torch.Tensor], image_shapes) -> torch.Tensor:
        """The head's vector of each RoI; with global context, the whole image's vector appended to each."""
        x = self.box_head(self._pool(features, boxes, image_shapes)).flatten(1)
        if not self.global_context:
            return x
        whole = [x.new_tensor([[0.0, 0.0, float(w), float(h)]]) for h, w in image_shapes]
        context = self.box_head(self._pool(features, whole, image_shapes)).flatten(1)
        counts = torch.as_tensor([len(b) for b in boxes], device=x.device)
        return torch.cat([x, context.repeat_interleave(counts, dim=0)], dim=1)

    def _predict(self, features, boxes: List[torch.Tensor], image_shapes):
        return self.box_predictor(self.box_features(features, boxes, image_shapes))

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
