"""Speed options for a ``FasterRCNNC4``: BN folding, channels_last, bf16 autocast, ``torch.compile``.

``optimize_detector`` returns an inference-only wrapper (``OptimizedDetector``) whose outputs match the plain model's
(float32 boxes, scores and labels; see tests/test_optimize.py for the tolerances). ``prepare_for_training`` applies
the options that keep the training state exact (``state_dict`` keys, parameters, gradients).

Low precision needs guards: torchvision decodes boxes in the dtype of the regression output
(``BoxCoder.decode_single`` casts the anchors/proposals to it) and the RoI pooler casts boxes to the feature dtype,
so under bf16 autocast coordinates near 1000 px would be rounded to 4 px steps; ``AnchorGenerator`` makes the anchors
in the feature maps' dtype. ``add_low_precision_guards`` casts the RPN head's and the box predictor's outputs and the
pooler's input feature map to float32 and has the anchors made in float32, so anchors, proposals, box targets, box
decoding and NMS are float32; the convolutions still run in bf16.
"""
import copy
import types
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
from torchvision.ops import FrozenBatchNorm2d, batched_nms, clip_boxes_to_image

from backbones.fuse import (FoldedBatchNorm2d, FrozenBNConv2d, fold_frozen_batchnorm,
                            fuse_frozen_batchnorm_for_training)
from backbones.fuse_onednn import fuse_for_onednn, onednn_available
from backbones.utils.precision import bf16_supported  # noqa: F401  (part of this module's interface)

from .detector import FasterRCNNC4
from .detectron2_semantics import Detectron2RPN
from .roi_align_cpu import SeparableRoIAlign


def _to_float(value):
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, (list, tuple)):
        return type(value)(_to_float(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_float(v) for k, v in value.items()}
    return value


def _float_outputs(module, args, output):
    return _to_float(output)


def _float_pooler_features(module, args):
    features, *rest = args
    return (_to_float(features), *rest)


def _float_anchor_request(module, args):
    """torchvision's ``AnchorGenerator`` makes anchors in the feature maps' dtype and reads nothing else from them
    but shape and device: hand it float32 stand-ins (expanded scalars, no memory) instead of bf16 maps."""
    images, features = args
    return images, [f if f.dtype == torch.float32 else
                    torch.empty((), dtype=torch.float32, device=f.device).expand(f.shape) for f in features]


def _channels_last_input(module, args):
    x, *rest = args
    if isinstance(x, torch.Tensor) and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return (x, *rest)


def add_low_precision_guards(model: FasterRCNNC4) -> List[torch.utils.hooks.RemovableHandle]:
    """Keep box arithmetic in float32 under autocast (see the module docstring); returns the hook handles.

    Hooks, not wrappers, so ``state_dict`` keys do not change. Harmless in float32.
    """
    if getattr(model, "_low_precision_guarded", False):
        return []
    handles = [
        model.rpn.head.register_forward_hook(_float_outputs),
        model.roi_heads.box_predictor.register_forward_hook(_float_outputs),
        model.roi_heads.box_roi_pool.register_forward_pre_hook(_float_pooler_features),
        model.rpn.anchor_generator.register_forward_pre_hook(_float_anchor_request),
    ]
    model._low_precision_guarded = True
    return handles


def to_channels_last(model: FasterRCNNC4) -> FasterRCNNC4:
    """NHWC weights and activations for the trunk, the RPN head and the per-RoI head (oneDNN's and cuDNN's
    preferred layout: no reorder before each convolution)."""
    for part in (model.backbone, model.rpn.head, model.roi_heads.box_head):
        part.to(memory_format=torch.channels_last)
    if not getattr(model, "_channels_last_inputs", False):
        model.backbone.register_forward_pre_hook(_channels_last_input)
        model.roi_heads.box_head.register_forward_pre_hook(_channels_last_input)
        model._channels_last_inputs = True
    return model


def undo_training_fusion(model: nn.Module) -> nn.Module:
    """Turn ``prepare_for_training``'s ``FrozenBNConv2d``/``FoldedBatchNorm2d`` pairs back into plain conv + frozen BN,
    in place (same tensors), so the inference options see the pairs they fold."""
    for module in model.modules():
        if isinstance(module, FrozenBNConv2d):
            del module.__dict__["bn"]
            module.__class__ = nn.Conv2d
        elif isinstance(module, FoldedBatchNorm2d):
            module.__class__ = FrozenBatchNorm2d
    return model


def fold_batchnorm(model: FasterRCNNC4) -> int:
    """Fold frozen BNs of the trunk and the per-RoI head into their convs (inference); returns how many."""
    return sum(fold_frozen_batchnorm(part) for part in (model.backbone, model.roi_heads.box_head))


def use_onednn_kernels(model: FasterRCNNC4) -> FasterRCNNC4:
    """CPU inference: trunk, RPN conv and per-RoI head as oneDNN kernels with fused ReLU / add+ReLU
    (``backbones.fuse_onednn``); run after ``fold_batchnorm``."""
    out_channels = model.backbone.out_channels
    model.backbone = fuse_for_onednn(model.backbone)
    model.backbone.out_channels = out_channels  # torchvision's backbone contract
    model.roi_heads.box_head = fuse_for_onednn(model.roi_heads.box_head)
    head = model.rpn.head
    head.conv = fuse_for_onednn(head.conv)
    head.cls_logits, head.bbox_pred = fuse_for_onednn(head.cls_logits), fuse_for_onednn(head.bbox_pred)
    return model


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4  # glibc mallopt parameters
_GLIBC_DEFAULTS = {_M_TRIM_THRESHOLD: 128 * 1024, _M_MMAP_THRESHOLD: 128 * 1024, _M_MMAP_MAX: 65536}


def keep_freed_memory(enable: bool = True) -> bool:
    """glibc only, process-wide: serve large tensors from memory freed earlier instead of fresh ``mmap`` pages.

    By default glibc gives every allocation above 128 KiB-32 MiB its own ``mmap`` and returns it on free, so each
    forward pass page-faults (and the kernel zeroes) every large activation again: a C4 head's 60-240 MB tensors
    cost ~10% of CPU inference in system time. ``enable=True`` turns mmap and trimming off (memory stays at its
    peak); ``False`` restores glibc's documented defaults (with a static threshold: glibc's dynamic one cannot be
    switched back on). Returns False where this is not glibc. Same idea as running under jemalloc or tcmalloc.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    values = {_M_MMAP_MAX: 0, _M_TRIM_THRESHOLD: 2 ** 31 - 1} if enable else _GLIBC_DEFAULTS
    return all(mallopt(ctypes.c_int(k), ctypes.c_int(v)) == 1 for k, v in values.items())


def _filter_proposals_one_level(rpn, proposals: torch.Tensor, objectness: torch.Tensor,
                                image_shapes: List[Tuple[int, int]], num_anchors_per_level: List[int]):
    """torchvision's ``RegionProposalNetwork.filter_proposals`` for a single feature level, with one host sync
    less per image: the small-box and score filters are one mask (one ``nonzero`` instead of two).

    Same boxes, scores and order (NMS is torchvision's ``batched_nms``, whose GPU path for up to 25k boxes is
    already a single ``nms``). NMS's variable-size result still needs one sync per image.
    """
    num_images = proposals.shape[0]
    objectness = objectness.detach().reshape(num_images, -1)
    top_n_idx = rpn._get_top_n_idx(objectness, num_anchors_per_level)
    batch_idx = torch.arange(num_images, device=proposals.device)[:, None]
    scores_all = torch.sigmoid(objectness[batch_idx, top_n_idx])
    proposals = proposals[batch_idx, top_n_idx]
    final_boxes, final_scores = [], []
    for boxes, scores, image_shape in zip(proposals, scores_all, image_shapes):
        boxes = clip_boxes_to_image(boxes, image_shape)
        ws, hs = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        keep = torch.where((ws >= rpn.min_size) & (hs >= rpn.min_size) & (scores >= rpn.score_thresh))[0]
        boxes, scores = boxes[keep], scores[keep]
        levels = torch.zeros(len(boxes), dtype=torch.int64, device=boxes.device)
        keep = batched_nms(boxes, scores, levels, rpn.nms_thresh)[: rpn.post_nms_top_n()]
        final_boxes.append(boxes[keep])
        final_scores.append(scores[keep])
    return final_boxes, final_scores


def _filter_proposals_one_level_detectron2(rpn, proposals: torch.Tensor, objectness: torch.Tensor,
                                           image_shapes: List[Tuple[int, int]], num_anchors_per_level: List[int]):
    """``Detectron2RPN.filter_proposals`` (detectron2's ``find_top_rpn_proposals``) for a single feature level, with
    one host sync less per image: the finite and non-empty filters are one mask.

    Ranked and suppressed on logits, as detectron2: a trained RPN's logits exceed the range where float32 sigmoid
    saturates to 1.0, so ranking by sigmoid (torchvision's filter) would tie where detectron2 does not. Clipping first
    and masking non-finite boxes after keeps exactly the boxes detectron2 keeps (clipping leaves finite boxes finite).
    """
    num_images = proposals.shape[0]
    logits = objectness.detach().reshape(num_images, -1)
    scores_all, idx = logits.topk(min(logits.shape[1], rpn.pre_nms_top_n()), dim=1)
    batch_idx = torch.arange(num_images, device=proposals.device)[:, None]
    proposals = proposals[batch_idx, idx]
    final_boxes, final_scores = [], []
    for boxes, scores, image_shape in zip(proposals, scores_all, image_shapes):
        finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
        if rpn.training and not bool(finite.all()):
            raise FloatingPointError("Predicted boxes or scores contain Inf/NaN. Training has diverged.")
        boxes = clip_boxes_to_image(boxes, image_shape)
        keep = torch.where(finite & ((boxes[:, 2] - boxes[:, 0]) > 0) & ((boxes[:, 3] - boxes[:, 1]) > 0))[0]
        boxes, scores = boxes[keep], scores[keep]
        levels = torch.zeros(len(boxes), dtype=torch.int64, device=boxes.device)
        keep = batched_nms(boxes.float(), scores, levels, rpn.nms_thresh)[: rpn.post_nms_top_n()]
        final_boxes.append(boxes[keep])
        final_scores.append(scores[keep])
    return final_boxes, final_scores


def reduce_proposal_syncs(model: FasterRCNNC4) -> FasterRCNNC4:
    """The one-level proposal filter of the model's conventions in the RPN (C4 detectors have one level): torchvision's
    ``_filter_proposals_one_level``, detectron2's ``_filter_proposals_one_level_detectron2``. In place; exact."""
    one_level = (_filter_proposals_one_level_detectron2 if isinstance(model.rpn, Detectron2RPN)
                 else _filter_proposals_one_level)
    model.rpn.filter_proposals = types.MethodType(one_level, model.rpn)
    return model


class OptimizedDetector(nn.Module):
    """Inference wrapper: ``detector(images)`` under ``torch.inference_mode`` (and bf16 autocast if asked).

    Outputs are float32, as the plain model's. Training is refused: use ``prepare_for_training`` instead.
    """

    def __init__(self, model: FasterRCNNC4, bf16: bool = False):
        super().__init__()
        self.model = model
        self.bf16 = bf16
        super().train(False)

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError("OptimizedDetector is inference-only (folded BN, inference_mode); "
                               "use detection.model.optimize.prepare_for_training for training")
        return super().train(False)

    def forward(self, images, targets=None):
        if targets is not None:
            raise ValueError("OptimizedDetector runs inference only; targets are not accepted")
        device_type = images[0].device.type if len(images) else "cpu"
        with torch.inference_mode(), torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.bf16):
            outputs = self.model(images)
        return [_to_float(o) for o in outputs]


def compile_parts(model: FasterRCNNC4, mode: Optional[str] = None, freezing: bool = False) -> FasterRCNNC4:
    """``torch.compile`` the trunk and the per-RoI head (the dense parts); the proposal logic stays eager.

    The number of RoIs varies per image, so the head is compiled with a dynamic batch dimension.
    """
    options = {"freezing": True} if freezing else None
    model.backbone = torch.compile(model.backbone, mode=None if options else mode, options=options)
    model.roi_heads.box_head = torch.compile(model.roi_heads.box_head, mode=None if options else mode,
                                             dynamic=True, options=options)
    return model


def optimize_detector(model: FasterRCNNC4, fold_bn: bool = True, channels_last: bool = True, bf16: bool = False,
                      compile: bool = False, onednn: bool = True, cpu_roi_align: bool = True,
                      inplace: bool = False) -> OptimizedDetector:
    """An inference-only copy of ``model`` with the chosen speed options.

    Args:
        fold_bn: fold frozen BN into the preceding convs (exact up to float rounding).
        channels_last: NHWC memory format for all convolutions.
        onednn: on CPU, run convolutions/linears as oneDNN kernels with ReLU and residual add fused
            (``use_onednn_kernels``); ignored on other devices, without oneDNN, and with ``compile``.
        cpu_roi_align: on CPU, RoIAlign as per-RoI matrix products into NHWC memory
            (``roi_align_cpu.SeparableRoIAlign``); RoIPool and other devices keep torchvision's kernels.
        bf16: bf16 autocast for the dense layers, with float32 box arithmetic (``add_low_precision_guards``).
            Changes the numbers slightly: measure accuracy before relying on it (docs/BENCHMARKS.md).
        compile: ``torch.compile`` the trunk and the per-RoI head (freezing the weights on CPU); the first calls
            are slow.
        inplace: modify ``model`` itself instead of a deep copy.

    A model prepared with ``prepare_for_training`` is accepted (its copy is turned back into conv + frozen BN).
    """
    if bf16:
        device = next(model.parameters()).device
        if not bf16_supported(device):
            raise RuntimeError(f"bf16 requested but {device} has no native bf16 matrix math")
    model = undo_training_fusion((model if inplace else copy.deepcopy(model)).eval())
    for p in model.parameters():
        p.requires_grad_(False)
    device = next(model.parameters()).device
    reduce_proposal_syncs(model)
    if fold_bn:
        fold_batchnorm(model)
    fused = onednn and not compile and device.type == "cpu" and onednn_available()
    if fused:
        use_onednn_kernels(model)
    if cpu_roi_align and device.type == "cpu" and getattr(model.roi_heads.box_roi_pool, "kind", None) == "align":
        model.roi_heads.box_roi_pool = SeparableRoIAlign(model.roi_heads.box_roi_pool,
                                                         torch.bfloat16 if bf16 and fused else None)
    if channels_last:
        to_channels_last(model)
    if bf16:
        add_low_precision_guards(model)
        if fused:  # the fused kernels take no autocast: give them bf16 weights (they cast their inputs)
            for part in (model.backbone, model.roi_heads.box_head, model.rpn.head.conv):
                part.to(torch.bfloat16)
    if compile:
        compile_parts(model, freezing=device.type == "cpu")
    return OptimizedDetector(model, bf16=bf16)


def prepare_for_training(model: FasterRCNNC4, fuse_bn: bool = True, channels_last: bool = True,
                         low_precision_guards: bool = True) -> FasterRCNNC4:
    """Training-safe options, in place: loss and gradients equal the plain model's up to float rounding.

    ``fuse_bn`` computes ``W * s`` in each forward (``backbones.fuse.FrozenBNConv2d``), so parameters, optimizer
    state and ``state_dict`` keys are untouched; ``low_precision_guards`` matter only under autocast (AMP).
    """
    if fuse_bn:
        for part in (model.backbone, model.roi_heads.box_head):
            fuse_frozen_batchnorm_for_training(part)
    if channels_last:
        to_channels_last(model)
    if low_precision_guards:
        add_low_precision_guards(model)
    return model
