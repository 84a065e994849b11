"""RPN that can ignore cross-boundary anchors in training (Faster R-CNN §3.3), which torchvision's RPN does not do,
and whose losses follow the config's loss keys (``losses.rpn_losses``)."""
from typing import Dict, List, Optional, Tuple

import torch
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork

from .losses import rpn_losses


class BoundaryAwareRPN(RegionProposalNetwork):
    """torchvision's ``RegionProposalNetwork`` plus the paper's cross-boundary rule.

    With ``ignore_cross_boundary`` the anchors that cross the image border (by more than ``boundary_tolerance``
    pixels) get label -1 (ignored): they neither count as positives or negatives nor enter the "best anchor for
    each ground-truth box" rule, which is matched among the inside anchors only, as in py-faster-rcnn's
    ``anchor_target_layer``. An image with no inside anchor at all (tiny inputs) keeps every anchor so that its
    RPN loss stays defined. Proposals are still generated from all anchors and clipped, as at test time.
    """

    def __init__(self, *args, ignore_cross_boundary: bool = False, boundary_tolerance: float = 0.0,
                 smooth_l1_beta: float = 1.0 / 9, loss_normalizer: str = "sampled", **kwargs):
        super().__init__(*args, **kwargs)
        self.ignore_cross_boundary = ignore_cross_boundary
        self.boundary_tolerance = float(boundary_tolerance)
        self.smooth_l1_beta = float(smooth_l1_beta)
        self.loss_normalizer = loss_normalizer
        self._image_sizes: Optional[List[Tuple[int, int]]] = None

    def forward(self, images: ImageList, features: Dict[str, torch.Tensor],
                targets: Optional[List[Dict[str, torch.Tensor]]] = None):
        self._image_sizes = list(images.image_sizes)
        try:
            return super().forward(images, features, targets)
        finally:
            self._image_sizes = None

    def inside_anchors(self, anchors: torch.Tensor, image_size: Tuple[int, int]) -> torch.Tensor:
        """Boolean mask of the anchors lying within the (unpadded) image, up to the tolerance."""
        h, w = image_size
        t = self.boundary_tolerance
        return (anchors[:, 0] >= -t) & (anchors[:, 1] >= -t) & (anchors[:, 2] <= w + t) & (anchors[:, 3] <= h + t)

    def assign_targets_to_anchors(self, anchors: List[torch.Tensor], targets: List[Dict[str, torch.Tensor]]):
        if not self.ignore_cross_boundary or self._image_sizes is None:
            return super().assign_targets_to_anchors(anchors, targets)
        labels, matched = [], []
        for anchors_i, target_i, size_i in zip(anchors, targets, self._image_sizes):
            inside = self.inside_anchors(anchors_i, size_i)
            if not bool(inside.any()):
                (lab,), (gt,) = super().assign_targets_to_anchors([anchors_i], [target_i])
            else:
                (lab_in,), (gt_in,) = super().assign_targets_to_anchors([anchors_i[inside]], [target_i])
                lab = torch.full((anchors_i.shape[0],), -1.0, dtype=lab_in.dtype, device=lab_in.device)
                gt = torch.zeros_like(anchors_i, dtype=gt_in.dtype)
                lab[inside] = lab_in
                gt[inside] = gt_in
            labels.append(lab)
            matched.append(gt)
        return labels, matched

    def compute_loss(self, objectness: torch.Tensor, pred_bbox_deltas: torch.Tensor, labels: List[torch.Tensor],
                     regression_targets: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        sampled_pos, sampled_neg = self.fg_bg_sampler(labels)
        return rpn_losses(objectness, pred_bbox_deltas, labels, regression_targets, sampled_pos, sampled_neg,
                          self.smooth_l1_beta, self.loss_normalizer, self.fg_bg_sampler.batch_size_per_image)
