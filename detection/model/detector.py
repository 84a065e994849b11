"""Faster R-CNN with the paper's C4 split, composed from torchvision's detection parts.

trunk (conv1..res4, stride 16) → RPN on that map → RoIAlign/RoIPool (single level) → per-RoI head (res5 + global
average pool for ResNets, fc6/fc7 for VGG-16) → class and box predictors.
"""
from typing import Dict, List, Optional, Sequence

import torch

import torch.nn as nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import batched_nms

from backbones.c4 import C4Backbone, build_c4
from backbones.utils.config import ConfigError
from backbones.weights.meta import WeightsMeta
from backbones.weights.sources import LayoutMismatch

from .detectron2_semantics import (Detectron2AnchorGenerator, Detectron2Predictor, Detectron2RoIHeads, Detectron2RPN,
                                   Detectron2Transform, use_detectron2_frozen_bn)
from .pooler import SingleLevelRoIPooler
from .multiscale import pyramid_features
from .roi_heads import PYRAMID_KEY, C4RoIHeads
from .rpn import BoundaryAwareRPN
from .transform import PixelConventionTransform


class FasterRCNNC4(GeneralizedRCNN):
    """``GeneralizedRCNN`` whose ``backbone`` is the C4 trunk and whose ``roi_heads.box_head`` is the C4 head.

    Attributes:
        backbone_name, stride, weights_meta: what the detector was built from (saved with ``model_final.pth``).
        num_classes: foreground classes; labels are 1..num_classes, 0 is background.
    """

    def __init__(self, c4: C4Backbone, num_classes: int, model_cfg, min_size: int = 600, max_size: int = 1000,
                 size_divisible: int = 32, weights_meta: Optional[WeightsMeta] = None, box_refinement: bool = False,
                 multiscale_factors: Sequence[float] = (), flip: bool = False):
        meta = weights_meta or c4.weights_meta
        r, h = model_cfg.rpn, model_cfg.roi_heads
        trunk = c4.trunk
        trunk.out_channels = c4.out_channels  # torchvision's backbone contract
        d2 = model_cfg.conventions == "detectron2"  # see detectron2_semantics.py
        if d2:
            anchors = Detectron2AnchorGenerator(model_cfg.anchor_sizes, model_cfg.aspect_ratios, c4.stride)
        else:
            anchors = AnchorGenerator(sizes=(tuple(int(s) for s in model_cfg.anchor_sizes),),
                                      aspect_ratios=(tuple(float(a) for a in model_cfg.aspect_ratios),))
        rpn = (Detectron2RPN if d2 else BoundaryAwareRPN)(
            anchors,
            RPNHead(c4.out_channels, anchors.num_anchors_per_location()[0]),
            fg_iou_thresh=r.fg_iou_thresh, bg_iou_thresh=r.bg_iou_thresh,
            batch_size_per_image=r.batch_size_per_image, positive_fraction=r.positive_fraction,
            pre_nms_top_n={"training": r.pre_nms_top_n_train, "testing": r.pre_nms_top_n_test},
            post_nms_top_n={"training": r.post_nms_top_n_train, "testing": r.post_nms_top_n_test},
            nms_thresh=r.nms_thresh,
            ignore_cross_boundary=r.ignore_cross_boundary, boundary_tolerance=r.boundary_tolerance,
            smooth_l1_beta=r.smooth_l1_beta, loss_normalizer=r.loss_normalizer,
        )
        pooled = h.pooler_resolution or c4.roi_size
        pooler = SingleLevelRoIPooler(pooled, c4.stride, h.pooler, h.sampling_ratio, h.aligned)
        # global context: the whole image's head vector beside each region's (roi_heads.py)
        predictor = (Detectron2Predictor if d2 else FastRCNNPredictor)(
            c4.head_channels * (2 if h.global_context else 1), num_classes + 1)
        _init_predictor(predictor)
        roi_heads = (Detectron2RoIHeads if d2 else C4RoIHeads)(
            pooler, c4.head, predictor,
            h.fg_iou_thresh, h.bg_iou_thresh, h.batch_size_per_image, h.positive_fraction,
            tuple(float(w) for w in h.bbox_reg_weights),
            h.score_thresh, h.nms_thresh, h.detections_per_img, smooth_l1_beta=h.smooth_l1_beta,
            box_refinement=box_refinement, global_context=h.global_context, multiscale_factors=multiscale_factors,
            canonical_size=pooled * c4.stride,
        )
        transform = (Detectron2Transform if d2 else PixelConventionTransform)(meta, [min_size], max_size, size_divisible, resize_in_training=False)
        super().__init__(trunk, rpn, roi_heads, transform)
        if d2:
            use_detectron2_frozen_bn(self)
        self.backbone_name = c4.name
        self.stride = c4.stride
        self.freeze_at = c4.freeze_at
        self.weights_meta = meta
        self.num_classes = num_classes
        self.flip = bool(flip)

    def forward(self, images, targets=None):
        if self.training or not (self.flip or self.roi_heads.multiscale_factors):
            return super().forward(images, targets)
        detections = self._detect(images)
        if not self.flip:
            return detections
        mirrored = self._detect([image.flip(-1) for image in images])
        return [merge_flipped(d, m, image.shape[-1], self.roi_heads.nms_thresh, self.roi_heads.detections_per_img)
                for d, m, image in zip(detections, mirrored, images)]

    def _detect(self, images: List[torch.Tensor]) -> List[Dict[str, torch.Tensor]]:
        """Test time with the multi-scale pyramid, if any (multiscale.py): the RPN at the test scale only."""
        original_sizes = [tuple(image.shape[-2:]) for image in images]
        image_list, _ = self.transform(images)
        base = self.backbone(image_list.tensors)
        features = {"0": base}
        if self.roi_heads.multiscale_factors:
            pyramid = pyramid_features(self.backbone, image_list.tensors, base, self.roi_heads.multiscale_factors)
            features.update({PYRAMID_KEY.format(k): f for k, f in enumerate(pyramid)})
        proposals, _ = self.rpn(image_list, {"0": base})
        detections, _ = self.roi_heads(features, proposals, image_list.image_sizes)
        return self.transform.postprocess(detections, image_list.image_sizes, original_sizes)


def merge_flipped(detections: Dict[str, torch.Tensor], mirrored: Dict[str, torch.Tensor], width: int,
                  nms_thresh: float, limit: int) -> Dict[str, torch.Tensor]:
    """detectron2-style flip TTA (not the paper's method): the mirror image's boxes mapped back, both sets merged by
    per-class NMS, the best ``limit`` kept."""
    back = mirrored["boxes"].clone()
    back[:, 0], back[:, 2] = width - mirrored["boxes"][:, 2], width - mirrored["boxes"][:, 0]
    boxes = torch.cat([detections["boxes"], back])
    scores = torch.cat([detections["scores"], mirrored["scores"]])
    labels = torch.cat([detections["labels"], mirrored["labels"]])
    keep = batched_nms(boxes, scores, labels, nms_thresh)[:limit]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


def _init_predictor(predictor: FastRCNNPredictor) -> None:
    # Fast R-CNN: classifier N(0, 0.01), box regressor N(0, 0.001), zero biases.
    nn.init.normal_(predictor.cls_score.weight, std=0.01)
    nn.init.normal_(predictor.bbox_pred.weight, std=0.001)
    nn.init.zeros_(predictor.cls_score.bias)
    nn.init.zeros_(predictor.bbox_pred.bias)


def build_detector(cfg, num_classes: int, weights: Optional[str] = "config",
                   weights_meta: Optional[WeightsMeta] = None) -> FasterRCNNC4:
    """Build the C4 Faster R-CNN described by ``cfg`` (``cfg.model`` and ``cfg.input``).

    Args:
        num_classes: foreground classes (labels 1..num_classes).
        weights: backbone weights source; "config" takes ``cfg.model.weights``; None = random init.
        weights_meta: pixel convention to use instead of the one of ``weights`` (when loading a trained detector).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    m = cfg.model
    source = m.weights if weights == "config" else weights
    # A trained detector's trunk is rebuilt with the stride placement of the weights it was trained from.
    layout = {} if source or weights_meta is None or weights_meta.stride_in_1x1 is None else {
        "stride_in_1x1": weights_meta.stride_in_1x1}
    try:
        c4 = build_c4(m.backbone, weights=source, freeze_at=m.freeze_at, norm=m.norm, width_mult=m.width_mult,
                      **layout)
    except LayoutMismatch as err:
        if err.key != "width_mult":
            raise
        raise ConfigError(f"config key 'model.width_mult' = {err.explicit} does not match weights {source!r}, which "
                          f"are {m.backbone} at width_mult {err.derived}: set model.width_mult={err.derived}") from None
    i = cfg.input
    t = cfg.test
    factors = [s / i.min_size_test for s in t.scales] if t.multiscale == "maxout" else []
    return FasterRCNNC4(c4, num_classes, m, i.min_size_test, i.max_size_test, i.size_divisible, weights_meta,
                        box_refinement=t.box_refinement, multiscale_factors=factors, flip=t.flip)
