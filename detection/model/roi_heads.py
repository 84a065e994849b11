"""torchvision's ``RoIHeads`` whose training losses follow the config's loss keys (``losses.fast_rcnn_losses``)."""
from typing import Dict, List, Optional, Tuple

import torch
from torchvision.models.detection.roi_heads import RoIHeads

from .losses import fast_rcnn_losses


class C4RoIHeads(RoIHeads):
    """``RoIHeads`` (box branch only) with the Fast R-CNN box loss's smooth-L1 β as an argument.

    torchvision fixes β = 1/9 inside ``fastrcnn_loss``; py-faster-rcnn, which the paper used, has β = 1 and
    detectron2 β = 0 (L1). Test time is torchvision's.
    """

    def __init__(self, *args, smooth_l1_beta: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.smooth_l1_beta = float(smooth_l1_beta)

    def forward(self, features: Dict[str, torch.Tensor], proposals: List[torch.Tensor],
                image_shapes: List[Tuple[int, int]], targets: Optional[List[Dict[str, torch.Tensor]]] = None):
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        proposals, _, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        loss_classifier, loss_box_reg = fast_rcnn_losses(class_logits, box_regression, labels, regression_targets,
                                                         self.smooth_l1_beta)
        return [], {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
