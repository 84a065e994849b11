"""The RPN and Fast R-CNN training losses, as the config's loss keys define them.

Three reference codebases define the same four losses differently (shared/reference/paper_numbers.md §8):

| | py-faster-rcnn (the paper; resdet's default) | detectron2 (``configs/detection/detectron2_c4.yaml``) |
|---|---|---|
| RPN objectness | BCE, mean over the sampled anchors | BCE, sum / (``batch_size_per_image`` × images) |
| RPN box | smooth L1 β = 1/9 (σ = 3), sum / sampled anchors | L1 (``SMOOTH_L1_BETA`` 0), same normaliser as its objectness |
| Fast R-CNN class | cross-entropy, mean over the sampled RoIs | the same |
| Fast R-CNN box | smooth L1 β = 1 (σ = 1), sum / sampled RoIs | L1 (β = 0), sum / sampled RoIs |

torchvision's defaults are py-faster-rcnn's except the Fast R-CNN box β (1/9). The keys
``model.rpn.smooth_l1_beta``, ``model.rpn.loss_normalizer`` and ``model.roi_heads.smooth_l1_beta`` select among
them; β = 0 is L1 (``F.smooth_l1_loss`` computes ``|x|`` then, as fvcore's ``smooth_l1_loss`` below 1e-5).
"""
from typing import List, Tuple

import torch
import torch.nn.functional as F

BOX_LOSS_TYPES = ("smooth_l1",)
# sampled: the number of anchors actually sampled (py-faster-rcnn, torchvision);
# batch_size: batch_size_per_image x images, whatever was sampled (detectron2's ``RPN.losses``).
RPN_NORMALIZERS = ("sampled", "batch_size")
# detectron2's other MODEL.*.BBOX_REG_LOSS_TYPE values, which resdet does not implement (named in the error).
DETECTRON2_ONLY_BOX_LOSSES = ("giou", "diou", "ciou")


def rpn_losses(objectness: torch.Tensor, pred_deltas: torch.Tensor, labels: List[torch.Tensor],
               regression_targets: List[torch.Tensor], sampled_pos: List[torch.Tensor],
               sampled_neg: List[torch.Tensor], beta: float, normalizer: str,
               batch_size_per_image: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(objectness loss, box loss) of the RPN over all images.

    Args:
        objectness: [N * anchors] logits (or [N * anchors, 1]); pred_deltas: [N * anchors, 4], image-major.
        labels, regression_targets: per image, 1 / 0 / -1 and the encoded matched boxes.
        sampled_pos, sampled_neg: per image, the sampler's 0/1 masks.
    """
    pos = torch.cat(sampled_pos, dim=0).bool()
    sampled = pos | torch.cat(sampled_neg, dim=0).bool()
    objectness = objectness.flatten()
    labels = torch.cat(labels, dim=0)
    targets = torch.cat(regression_targets, dim=0)
    box_sum = F.smooth_l1_loss(pred_deltas[pos], targets[pos], beta=beta, reduction="sum")
    if normalizer == "batch_size":
        # Masks in anchor order, as detectron2 indexes its stacked labels: the same summation order as its loss.
        norm = float(batch_size_per_image * len(sampled_pos))
        objectness_loss = F.binary_cross_entropy_with_logits(objectness[sampled], labels[sampled], reduction="sum")
        return objectness_loss / norm, box_sum / norm
    # torchvision's order and reduction (positives, then negatives; a mean), so its losses stay bit-identical.
    idx = torch.cat([torch.where(pos)[0], torch.where(sampled & ~pos)[0]])
    objectness_loss = F.binary_cross_entropy_with_logits(objectness[idx], labels[idx])
    return objectness_loss, box_sum / idx.numel()


def fast_rcnn_losses(class_logits: torch.Tensor, box_regression: torch.Tensor, labels: List[torch.Tensor],
                     regression_targets: List[torch.Tensor], beta: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """(classification loss, box loss) of the per-RoI head: class-specific boxes, divided by the sampled RoIs."""
    labels = torch.cat(labels, dim=0)
    targets = torch.cat(regression_targets, dim=0)
    classification_loss = F.cross_entropy(class_logits, labels)
    pos = torch.where(labels > 0)[0]
    boxes = box_regression.reshape(box_regression.shape[0], -1, 4)
    box_loss = F.smooth_l1_loss(boxes[pos, labels[pos]], targets[pos], beta=beta, reduction="sum")
    return classification_loss, box_loss / max(labels.numel(), 1)
