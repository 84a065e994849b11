"""detectron2's C4 Faster R-CNN semantics on torchvision's parts (``model.conventions: detectron2``).

Each class replaces one torchvision behaviour that differs from detectron2 (facebookresearch/detectron2@02b5c4e),
so that a converted detectron2 detector computes what its ``DefaultPredictor`` computes:

- anchors (``anchor_generator.DefaultAnchorGenerator``): sizes outer / ratios inner, unrounded cell anchors,
  offset 0 and the trunk's fixed stride (torchvision: ratios outer, rounded, stride = padded size // grid size);
- RPN proposals (``proposal_utils.find_top_rpn_proposals``): top-k and NMS on logits, non-finite and empty
  (side <= 0) boxes dropped (torchvision: NMS on sigmoid scores, which ties when it saturates; sides < 1e-3 dropped);
- detections (``fast_rcnn_inference_single_image`` + ``postprocessing.detector_postprocess``): non-finite rows
  dropped, no small-box removal, per-class NMS keyed by the 0-based class, boxes rescaled then clipped to the
  original image and empty ones dropped (torchvision: removes sides < 1e-2 before NMS, never drops after rescaling);
- test resize (``ResizeShortestEdge.get_output_shape``): size rounded with ``int(x + 0.5)`` (torchvision floors);
- arithmetic: frozen BN as ``F.batch_norm`` and box predictor products with detectron2's matrices, so the rounding
  is detectron2's too.

Training differs from torchvision in places that are config keys rather than classes, set to detectron2's values by
``configs/detection/detectron2_c4.yaml`` (docs/DETECTION.md lists each with the function it follows): the losses
(``losses.py``: ``RPN.losses`` normaliser, ``SMOOTH_L1_BETA`` 0 in ``_dense_box_regression_loss`` and
``FastRCNNOutputLayers.box_reg_loss``), the optimizer groups (``build_optimizer``: ``WEIGHT_DECAY_NORM``, bias
factors), the schedule (``build_lr_scheduler``: steps past ``MAX_ITER`` dropped, in ``detection/config.py``) and the
training resize (``ResizeShortestEdge`` + ``ResizeTransform``, in ``detection/data/transforms.py``). The optimised
inference path keeps these semantics: ``optimize.reduce_proposal_syncs`` installs a one-level twin of
``Detectron2RPN.filter_proposals`` (on logits) for detectron2-convention models.

Under tracing (ONNX / TorchScript export, detection/deploy/) sizes stay tensors and the "drop non-finite rows" masks
are always applied, so the traced graph works for any image size (same results: the masks keep every finite row).
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import torchvision
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import boxes as box_ops
from torchvision.ops.misc import FrozenBatchNorm2d

from ..data.transforms import detectron2_resized_shape
from .roi_heads import C4RoIHeads
from .rpn import BoundaryAwareRPN
from .transform import PixelConventionTransform, interpolate_to, traced_div, traced_hw, traced_max, traced_min

CONVENTIONS = ("torchvision", "detectron2")


def detectron2_cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> torch.Tensor:
    """``DefaultAnchorGenerator.generate_cell_anchors``: [len(sizes) * len(ratios), 4] XYXY anchors around (0, 0)."""
    anchors = []
    for size in sizes:
        area = size ** 2.0
        for aspect_ratio in aspect_ratios:
            w = math.sqrt(area / aspect_ratio)
            h = aspect_ratio * w
            anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(anchors)


def _traced_resized_shape(image: torch.Tensor, short_edge: int, max_size: int):
    """``detectron2_resized_shape`` as graph ops (float64, as Python's floats), for a traced dynamic image size."""
    h, w = traced_hw(image)
    scale = traced_div(short_edge, traced_min(h, w))
    size = torch.full_like(h, float(short_edge))
    newh, neww = torch.where(h < w, size, scale * h), torch.where(h < w, scale * w, size)
    longer = traced_max(newh, neww)
    shrink = torch.where(longer > max_size, traced_div(max_size, longer), torch.ones_like(longer))
    return torch.floor(newh * shrink + 0.5), torch.floor(neww * shrink + 0.5)


def _finite_rows(valid: torch.Tensor) -> bool:
    """Whether to index by ``valid``: only when some row is not finite, and always in a traced graph."""
    return torchvision._is_tracing() or not bool(valid.all())


class Detectron2FrozenBatchNorm2d(FrozenBatchNorm2d):
    """detectron2's ``FrozenBatchNorm2d``: without gradients it is ``F.batch_norm`` (one fused op, its rounding)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            return super().forward(x)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, training=False,
                            eps=self.eps)


def use_detectron2_frozen_bn(module: torch.nn.Module) -> None:
    """Switch every torchvision ``FrozenBatchNorm2d`` in ``module`` to detectron2's arithmetic (same state)."""
    for m in module.modules():
        if type(m) is FrozenBatchNorm2d:
            m.__class__ = Detectron2FrozenBatchNorm2d


class Detectron2AnchorGenerator(AnchorGenerator):
    """One feature map, detectron2 cell anchors shifted by ``arange(0, W) * stride`` (offset 0)."""

    def __init__(self, sizes: Sequence[float], aspect_ratios: Sequence[float], stride: int):
        super().__init__(sizes=(tuple(sizes),), aspect_ratios=(tuple(aspect_ratios),))
        self.stride = int(stride)

    def generate_anchors(self, scales, aspect_ratios, dtype=torch.float32, device=torch.device("cpu")):
        return detectron2_cell_anchors([float(s) for s in scales], [float(a) for a in aspect_ratios]).to(
            dtype=dtype, device=device)

    def forward(self, image_list: ImageList, feature_maps: List[torch.Tensor]) -> List[torch.Tensor]:
        (feature,) = feature_maps
        h, w = feature.shape[-2:]
        cell = self.cell_anchors[0].to(device=feature.device)
        # detectron2 builds the grid in float32 (``_create_grid_offsets``) whatever the feature dtype.
        shifts_x = torch.arange(0, w * self.stride, step=self.stride, dtype=torch.float32, device=feature.device)
        shifts_y = torch.arange(0, h * self.stride, step=self.stride, dtype=torch.float32, device=feature.device)
        shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
        shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
        shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
        anchors = (shifts.view(-1, 1, 4) + cell.view(1, -1, 4)).reshape(-1, 4)
        return [anchors for _ in image_list.image_sizes]


class Detectron2RPN(BoundaryAwareRPN):
    """``BoundaryAwareRPN`` whose proposal filtering is ``find_top_rpn_proposals`` (min box size 0)."""

    def filter_proposals(self, proposals: torch.Tensor, objectness: torch.Tensor,
                         image_shapes: List[Tuple[int, int]], num_anchors_per_level: List[int]):
        num_images = proposals.shape[0]
        logits = objectness.detach().reshape(num_images, -1)
        batch_idx = torch.arange(num_images, device=proposals.device)[:, None]
        top_scores, top_boxes, levels, start = [], [], [], 0
        for level, n in enumerate(num_anchors_per_level):
            logits_i = logits[:, start:start + n]
            k = det_utils._topk_min(logits_i, self.pre_nms_top_n(), 1)  # a graph op when traced
            scores_i, idx = logits_i.topk(k, dim=1)
            top_scores.append(scores_i)
            top_boxes.append(proposals[:, start:start + n][batch_idx, idx])
            levels.append(torch.full_like(idx[0], level))
            start += n
        top_scores, top_boxes, levels = torch.cat(top_scores, 1), torch.cat(top_boxes, 1), torch.cat(levels)
        final_boxes, final_scores = [], []
        for boxes, scores, image_shape in zip(top_boxes, top_scores, image_shapes):
            lvl = levels
            valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
            if _finite_rows(valid):
                if self.training and not bool(valid.all()):
                    raise FloatingPointError("Predicted boxes or scores contain Inf/NaN. Training has diverged.")
                boxes, scores, lvl = boxes[valid], scores[valid], lvl[valid]
            boxes = box_ops.clip_boxes_to_image(boxes, image_shape)
            keep = _nonempty(boxes)
            boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
            keep = box_ops.batched_nms(boxes.float(), scores, lvl, self.nms_thresh)[: self.post_nms_top_n()]
            final_boxes.append(boxes[keep])
            final_scores.append(scores[keep])
        return final_boxes, final_scores


class Detectron2Predictor(FastRCNNPredictor):
    """``FastRCNNPredictor`` (same parameters, background row first) computing with detectron2's matrices.

    The products use the weights as detectron2 holds them (background class last, no background box), so the
    GEMMs, and therefore the rounding, are detectron2's; the outputs are returned in resdet's layout, with a zero
    background box (no loss uses it).
    """

    def forward(self, x: torch.Tensor):
        x = x.flatten(start_dim=1)
        w, b = self.cls_score.weight, self.cls_score.bias
        logits = F.linear(x, torch.cat([w[1:], w[:1]]), torch.cat([b[1:], b[:1]]))
        deltas = F.linear(x, self.bbox_pred.weight[4:], self.bbox_pred.bias[4:])
        return (torch.cat([logits[:, -1:], logits[:, :-1]], dim=1),
                torch.cat([deltas.new_zeros(deltas.shape[0], 4), deltas], dim=1))


class Detectron2RoIHeads(C4RoIHeads):
    """``C4RoIHeads`` whose test-time output is ``fast_rcnn_inference_single_image`` (background is label 0 here)."""

    def postprocess_detections(self, class_logits, box_regression, proposals, image_shapes):
        per_image = [p.shape[0] for p in proposals]
        # decoded and scored in detectron2's layout (foreground classes only, background last)
        pred_boxes = self.box_coder.decode(box_regression[:, 4:].contiguous(), proposals).split(per_image, 0)
        logits = torch.cat([class_logits[:, 1:], class_logits[:, :1]], dim=1)
        pred_scores = F.softmax(logits, -1).split(per_image, 0)
        all_boxes, all_scores, all_labels = [], [], []
        for boxes, scores, image_shape in zip(pred_boxes, pred_scores, image_shapes):
            boxes = boxes.reshape(boxes.shape[0], -1)
            valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
            if _finite_rows(valid):
                boxes, scores = boxes[valid], scores[valid]
            scores = scores[:, :-1]
            boxes = box_ops.clip_boxes_to_image(boxes.reshape(-1, 4), image_shape).view(-1, scores.shape[1], 4)
            mask = scores > self.score_thresh
            inds = mask.nonzero()
            boxes, scores = boxes[mask], scores[mask]
            keep = box_ops.batched_nms(boxes.float(), scores, inds[:, 1], self.nms_thresh)[: self.detections_per_img]
            all_boxes.append(boxes[keep])
            all_scores.append(scores[keep])
            all_labels.append(inds[keep, 1] + 1)
        return all_boxes, all_scores, all_labels


class Detectron2Transform(PixelConventionTransform):
    """Test resize with detectron2's rounding; outputs clipped to the original image, empty boxes dropped."""

    def resize(self, image: torch.Tensor, target: Optional[Dict[str, torch.Tensor]] = None):
        if self.training:
            return super().resize(image, target)
        if torchvision._is_tracing():
            return interpolate_to(image, *_traced_resized_shape(image, self.min_size[-1], self.max_size)), target
        h, w = image.shape[-2:]
        size = detectron2_resized_shape(h, w, self.min_size[-1], self.max_size)
        if size != (h, w):
            image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        return image, target

    def postprocess(self, result, image_shapes, original_image_sizes):
        result = super().postprocess(result, image_shapes, original_image_sizes)
        if self.training:
            return result
        for i, (pred, size) in enumerate(zip(result, original_image_sizes)):
            boxes = box_ops.clip_boxes_to_image(pred["boxes"], size)
            keep = _nonempty(boxes)
            result[i] = {**pred, "boxes": boxes[keep], "scores": pred["scores"][keep], "labels": pred["labels"][keep]}
        return result


def _nonempty(boxes: torch.Tensor) -> torch.Tensor:
    """detectron2's ``Boxes.nonempty()``: both sides strictly positive."""
    return ((boxes[:, 2] - boxes[:, 0]) > 0) & ((boxes[:, 3] - boxes[:, 1]) > 0)
