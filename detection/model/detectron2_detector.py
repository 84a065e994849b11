"""Whole C4 Faster R-CNN detectors between detectron2 (model-zoo ``.pkl`` / trainer ``.pth``) and resdet files.

Key map (detectron2 → resdet; the ResNet part reuses ``backbones.weights.detectron2_format``):

    backbone.{stem,res2..res4}.*                 → backbone.{conv1,bn1,layer1..layer3}.*
    roi_heads.res5.*                             → roi_heads.box_head.layer4.*
    proposal_generator.rpn_head.conv.*           → rpn.head.conv.0.0.*
    proposal_generator.rpn_head.objectness_logits.* → rpn.head.cls_logits.*
    proposal_generator.rpn_head.anchor_deltas.*  → rpn.head.bbox_pred.*
    roi_heads.box_predictor.cls_score.*  (K+1 rows, background LAST)  → same name, background FIRST
    roi_heads.box_predictor.bbox_pred.*  (4K rows, no background box) → 4(K+1) rows, background box first (zeros)

A resdet export keeps what detectron2 has no place for (the background box rows, resdet's config, categories and
pixel convention) under the top-level key ``resdet_detector``, which detectron2's checkpointer ignores, so
resdet → detectron2 → resdet is bit-exact.
"""
import pickle
import re
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

from backbones.registry import get_spec
from backbones.utils.atomic_io import atomic_write_bytes, atomic_write_text
from backbones.weights.detectron2_format import (DETECTRON2_MEAN_BGR, UnknownKeysError, detectron2_config,
                                                 detectron2_name_to_resdet, rename_keys, resdet_name_to_detectron2)
from backbones.weights.meta import WeightsMeta
from backbones.weights.weight_files import find_state_dict, read_weights_file, strip_common_prefix, to_tensors

from ..config import load_det_config
from .io import config_from_dict, detector_file, read_detector_file
from .detector import build_detector

PRESET = Path(__file__).resolve().parents[2] / "configs" / "detection" / "detectron2_c4.yaml"
EXTRA_KEY = "resdet_detector"
_RPN = (("proposal_generator.rpn_head.conv.", "rpn.head.conv.0.0."),
        ("proposal_generator.rpn_head.objectness_logits.", "rpn.head.cls_logits."),
        ("proposal_generator.rpn_head.anchor_deltas.", "rpn.head.bbox_pred."))
_PREDICTOR = "roi_heads.box_predictor."
# Key prefixes that show a detectron2 file is some other meta-architecture than a C4 Faster R-CNN.
_NOT_C4 = (("backbone.bottom_up.", "an FPN backbone"), ("backbone.fpn_", "an FPN backbone"),
           ("backbone.res5.", "res5 in the backbone (DC5 or FPN)"), ("roi_heads.box_head.", "an fc box head (DC5/FPN)"),
           ("roi_heads.mask_head.", "a mask head (Mask R-CNN)"), ("roi_heads.keypoint_head.", "a keypoint head"),
           ("sem_seg_head.", "a semantic segmentation head"), ("roi_heads.box_predictor.0.", "a cascade head"))
# Blocks per stage (res2..res5) → depth, for bottleneck ResNets.
_DEPTHS = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152}


class DetectorFormatError(ValueError):
    """A detectron2 or resdet detector file that cannot be converted; the message names the keys."""


# ---------------------------------------------------------------------------------------------- detectron2 → resdet
def read_detectron2_detector(path) -> Tuple[Dict[str, torch.Tensor], Mapping]:
    """(state dict with detectron2 names, the file's top-level dict); ``.pkl`` through the restricted unpickler."""
    obj, _ = read_weights_file(path)
    state = strip_common_prefix(to_tensors(find_state_dict(obj, str(path)), str(path)))
    return state, (obj if isinstance(obj, Mapping) else {})


def check_c4_faster_rcnn(state: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise ``DetectorFormatError`` naming the keys when ``state`` is not a C4 Faster R-CNN."""
    found: Dict[str, List[str]] = {}
    for key in state:
        for prefix, what in _NOT_C4:
            if key.startswith(prefix):
                found.setdefault(what, []).append(key)
    if found:
        shown = "; ".join(f"{what}: {', '.join(sorted(keys)[:3])}" + (" ..." if len(keys) > 3 else "")
                          for what, keys in found.items())
        raise DetectorFormatError(f"{source} is not a C4 Faster R-CNN (backbone res2-res4, res5 in roi_heads, no "
                                  f"other heads); these keys show it: {shown}")
    needed = ("backbone.stem.conv1.weight", "roi_heads.res5.0.conv1.weight",
              "proposal_generator.rpn_head.objectness_logits.weight", _PREDICTOR + "cls_score.weight")
    missing = [k for k in needed if k not in state]
    if missing:
        raise DetectorFormatError(f"{source} is not a C4 Faster R-CNN detector: missing {', '.join(missing)} "
                                  f"(a backbone-only file converts without --detector)")


def resnet_depth(state: Mapping[str, torch.Tensor], source: str) -> int:
    """Depth of the bottleneck ResNet in a detectron2 C4 state dict, from its blocks per stage."""
    blocks = []
    for stage, prefix in ((2, "backbone.res2."), (3, "backbone.res3."), (4, "backbone.res4."), (5, "roi_heads.res5.")):
        ids = {int(m.group(1)) for k in state for m in [re.match(re.escape(prefix) + r"(\d+)\.", k)] if m}
        blocks.append(max(ids) + 1 if ids else 0)
    depth = _DEPTHS.get(tuple(blocks))
    if depth is None:
        raise DetectorFormatError(f"{source}: blocks per stage res2..res5 = {blocks}, not a ResNet-50/101/152")
    return depth


def arch_depth(arch: str) -> int:
    spec = get_spec(arch)
    depth = int(arch[len("resnet"):]) if arch.startswith("resnet") and arch[6:].isdigit() else 0
    if spec.family != "imagenet_resnet" or depth not in _DEPTHS.values():
        raise DetectorFormatError(f"--arch {arch}: detectron2 C4 detectors are bottleneck ResNets "
                                  f"(resnet50, resnet101, resnet152)")
    return depth


def detectron2_to_resdet_state(state: Mapping[str, torch.Tensor], source: str,
                               background_box: Optional[Mapping[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
    """Rename every key and move the background class first; unknown keys are one error naming them."""
    out, unknown = rename_keys(state, _to_resdet_name)
    if unknown:
        raise DetectorFormatError(f"{source}: {len(unknown)} keys are not part of a detectron2 C4 Faster R-CNN: "
                                  f"{', '.join(sorted(unknown)[:20])}")
    for field in ("weight", "bias"):
        cls = out[f"{_PREDICTOR}cls_score.{field}"]
        out[f"{_PREDICTOR}cls_score.{field}"] = torch.cat([cls[-1:], cls[:-1]])
        box = out[f"{_PREDICTOR}bbox_pred.{field}"]
        k = cls.shape[0] - 1
        if box.shape[0] == 4 and k > 1:  # CLS_AGNOSTIC_BBOX_REG: one box for every class
            box = box.repeat(k, *([1] * (box.dim() - 1)))
        if box.shape[0] != 4 * k:
            raise DetectorFormatError(f"{source}: {_PREDICTOR}bbox_pred.{field} has {box.shape[0]} rows; expected "
                                      f"4 x {k} classes (cls_score has {k} + 1 background rows)")
        bg = background_box[field] if background_box is not None else torch.zeros_like(box[:4])
        out[f"{_PREDICTOR}bbox_pred.{field}"] = torch.cat([bg.to(box.dtype), box])
    return out


def _to_resdet_name(key: str) -> str:
    for theirs, ours in _RPN:
        if key.startswith(theirs) and key[len(theirs):] in ("weight", "bias"):
            return ours + key[len(theirs):]
    if key.startswith(_PREDICTOR) and key[len(_PREDICTOR):] in (
            "cls_score.weight", "cls_score.bias", "bbox_pred.weight", "bbox_pred.bias"):
        return key
    if key.startswith("roi_heads.res5."):
        return "roi_heads.box_head." + detectron2_name_to_resdet(key[len("roi_heads."):])
    if key.startswith("backbone."):
        name = detectron2_name_to_resdet(key[len("backbone."):])
        if not name.startswith("layer4."):
            return "backbone." + name
    raise UnknownKeysError(key)


def detectron2_meta(path, arch: str) -> WeightsMeta:
    """detectron2's default pixel convention (MODEL.PIXEL_MEAN/STD, INPUT.FORMAT BGR, STRIDE_IN_1X1 True)."""
    return WeightsMeta(arch=arch, source=f"detectron2:{path}", pixel_format="BGR", input_scale=255.0, mean=DETECTRON2_MEAN_BGR,
                       std=(1.0, 1.0, 1.0), stride_in_1x1=True, norm="frozen_bn")


def convert_detectron2_detector(src, arch: str, categories: Optional[List[dict]], overrides=()) -> Tuple[dict, dict]:
    """A resdet detector file (dict, as ``model_final.pth``) from a detectron2 C4 detector, plus a summary.

    Args:
        categories: ``[{"id", "name"}]`` in detectron2's contiguous class order; None only for resdet exports,
            which carry theirs.
        overrides: ``key=value`` config changes on top of detectron2's C4 settings.
    """
    src = Path(src)
    state, header = read_detectron2_detector(src)
    check_c4_faster_rcnn(state, str(src))
    depth, wanted = resnet_depth(state, str(src)), arch_depth(arch)
    if depth != wanted:
        raise DetectorFormatError(f"{src} holds a ResNet-{depth} detector but --arch {arch} is a ResNet-{wanted}; "
                                  f"use --arch resnet{depth}")
    extra = header.get(EXTRA_KEY) if isinstance(header.get(EXTRA_KEY), Mapping) else None
    background = {k: torch.from_numpy(np.array(v)) for k, v in extra["background_box"].items()} if extra else None
    resdet_state = detectron2_to_resdet_state(state, str(src), background)
    num_classes = resdet_state[_PREDICTOR + "cls_score.weight"].shape[0] - 1
    if extra is not None and categories is None:
        categories = list(extra["categories"])
    if categories is None:
        raise DetectorFormatError(f"{src}: detectron2 files carry no class names; give --classes coco, voc or a file "
                                  f"({num_classes} classes in this file)")
    if len(categories) != num_classes:
        raise DetectorFormatError(f"{src} has {num_classes} classes but the class list has {len(categories)}")
    if extra is not None:
        cfg = config_from_dict(extra["config"], overrides)
        meta = WeightsMeta.from_dict(dict(extra["weights_meta"]))
        if extra.get("rpn_order") == "torchvision":
            _permute_rpn(resdet_state, cfg, to_detectron2=False)
    else:
        cfg = load_det_config(str(PRESET), [f"model.backbone={arch}", *_dataset_override(categories), *overrides])
        meta = detectron2_meta(src, arch)
    model = build_detector(cfg, num_classes, weights=None, weights_meta=meta)
    _load_exactly(model, resdet_state, str(src))
    summary = {"source_keys": len(state), "classes": num_classes, "depth": depth,
               "from_resdet_export": extra is not None}
    return detector_file(model, cfg, categories), summary


def _dataset_override(categories: List[dict]) -> List[str]:
    from ..data.class_lists import class_list

    for name, dataset in (("coco", "coco"), ("voc", "voc07")):
        if [c["name"] for c in categories] == [c["name"] for c in class_list(name)]:
            return [f"data.dataset={dataset}"]
    return []


def _load_exactly(model, state: Dict[str, torch.Tensor], source: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        parts = [f"{what}: {', '.join(keys[:10])}" for what, keys in
                 (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        raise DetectorFormatError(f"{source} does not fit the resdet detector: " + "; ".join(parts))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})


# ---------------------------------------------------------------------------------------------- resdet → detectron2
def export_detectron2_detector(src, dst, arch: str) -> Tuple[Path, Path, dict]:
    """Write a model-zoo style ``.pkl`` and the detectron2 config overrides (``.yaml`` beside it)."""
    src, dst = Path(src), Path(dst)
    if dst.suffix != ".pkl":
        raise DetectorFormatError(f"detectron2 export {dst} must end in .pkl (detectron2 picks its reader by extension)")
    file = read_detector_file(src)
    cfg = config_from_dict(file["config"])
    if cfg.model.backbone != arch:
        raise DetectorFormatError(f"{src} is a {cfg.model.backbone} detector but --arch {arch} was given")
    depth = arch_depth(arch)
    if cfg.model.roi_heads.pooler != "align":
        raise DetectorFormatError(f"{src}: RoIPool detectors have no detectron2 C4 equivalent here (use RoIAlign)")
    if cfg.model.roi_heads.global_context:
        raise DetectorFormatError(f"{src}: global context (model.roi_heads.global_context) has no detectron2 C4 "
                                  f"equivalent")
    state = {k: v.detach().cpu() for k, v in file["model"].items()}
    rpn_order = cfg.model.conventions
    if rpn_order == "torchvision":
        _permute_rpn(state, cfg, to_detectron2=True)
    out, background = {}, {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        if key.startswith(_PREDICTOR):
            if key.endswith(("cls_score.weight", "cls_score.bias")):
                value = torch.cat([value[1:], value[:1]])
            else:
                background[key.rsplit(".", 1)[1]] = value[:4].numpy().copy()
                value = value[4:]
            out[key] = value.numpy()
        else:
            out[_to_detectron2_name(key)] = value.numpy()
    meta = WeightsMeta.from_dict(file["weights_meta"])
    extra = {"config": cfg.to_dict(), "categories": [dict(c) for c in file["categories"]],
             "weights_meta": meta.to_dict(), "background_box": background, "rpn_order": rpn_order}
    obj = {"model": out, "__author__": "resdet", "matching_heuristics": False, EXTRA_KEY: extra}
    atomic_write_bytes(dst, pickle.dumps(obj, protocol=4))
    yaml_path = dst.with_suffix(".yaml")
    atomic_write_text(yaml_path, detectron2_overrides_yaml(cfg, meta, len(file["categories"]), depth, dst, src))
    return dst, yaml_path, {"keys": len(out), "classes": len(file["categories"]), "approximate": rpn_order != "detectron2"}


def _to_detectron2_name(key: str) -> str:
    for theirs, ours in _RPN:
        if key.startswith(ours):
            return theirs + key[len(ours):]
    if key.startswith("roi_heads.box_head."):
        return "roi_heads." + resdet_name_to_detectron2(key[len("roi_heads.box_head."):])
    if key.startswith("backbone."):
        return "backbone." + resdet_name_to_detectron2(key[len("backbone."):])
    raise DetectorFormatError(f"{key!r} is not a key of a resdet ResNet C4 detector")


def _permute_rpn(state: Dict[str, torch.Tensor], cfg, to_detectron2: bool) -> None:
    """Reorder the RPN outputs between torchvision's anchor order (ratios outer) and detectron2's (sizes outer)."""
    n_sizes, n_ratios = len(cfg.model.anchor_sizes), len(cfg.model.aspect_ratios)
    # order[j] = torchvision index of the anchor at detectron2 position j (size s, ratio r: j = s*R + r).
    order = torch.tensor([r * n_sizes + s for s in range(n_sizes) for r in range(n_ratios)])
    if not to_detectron2:
        order = torch.argsort(order)
    for field in ("weight", "bias"):
        key = f"rpn.head.cls_logits.{field}"
        state[key] = state[key][order]
        key = f"rpn.head.bbox_pred.{field}"
        value = state[key]
        state[key] = value.view(len(order), 4, *value.shape[1:])[order].reshape(value.shape)


def detectron2_overrides_yaml(cfg, meta: WeightsMeta, num_classes: int, depth: int, pkl: Path, src: Path) -> str:
    """detectron2 config overrides that make its faster_rcnn_R_{depth}_C4 config compute what resdet computes."""
    m, r, h, i = cfg.model, cfg.model.rpn, cfg.model.roi_heads, cfg.input
    pixels = detectron2_config(meta)
    pooler = "ROIAlignV2" if h.aligned else "ROIAlign"
    lines = [
        f"# detectron2 overrides for {pkl.name} (exported by resdet from {src.name}). Use with detectron2's",
        f"# configs/COCO-Detection/faster_rcnn_R_{depth}_C4_3x.yaml: cfg.merge_from_file(<that>);"
        f" cfg.merge_from_file(<this>).",
    ]
    if m.conventions != "detectron2":
        lines.append("# Approximate: trained with torchvision anchors (rounded to whole pixels); detectron2's are not.")
    lines += [
        "MODEL:",
        f"  WEIGHTS: {str(pkl)!r}",
        f"  PIXEL_MEAN: {list(pixels['MODEL.PIXEL_MEAN'])}",
        f"  PIXEL_STD: {list(pixels['MODEL.PIXEL_STD'])}",
        "  RESNETS:",
        f"    DEPTH: {depth}",
        f"    STRIDE_IN_1X1: {str(bool(meta.stride_in_1x1 is not False))}",
        "  ANCHOR_GENERATOR:",
        f"    SIZES: [{[float(s) for s in m.anchor_sizes]}]",
        f"    ASPECT_RATIOS: [{[float(a) for a in m.aspect_ratios]}]",
        "  RPN:",
        f"    PRE_NMS_TOPK_TEST: {r.pre_nms_top_n_test}",
        f"    POST_NMS_TOPK_TEST: {r.post_nms_top_n_test}",
        f"    NMS_THRESH: {float(r.nms_thresh)}",
        "  ROI_HEADS:",
        f"    NUM_CLASSES: {num_classes}",
        f"    SCORE_THRESH_TEST: {float(h.score_thresh)}",
        f"    NMS_THRESH_TEST: {float(h.nms_thresh)}",
        "  ROI_BOX_HEAD:",
        f"    BBOX_REG_WEIGHTS: {[float(w) for w in h.bbox_reg_weights]}",
        f"    POOLER_TYPE: {pooler}",
        f"    POOLER_RESOLUTION: {h.pooler_resolution or 14}",
        f"    POOLER_SAMPLING_RATIO: {h.sampling_ratio}",
        "INPUT:",
        f"  FORMAT: {pixels['INPUT.FORMAT']}",
        f"  MIN_SIZE_TEST: {i.min_size_test}",
        f"  MAX_SIZE_TEST: {i.max_size_test}",
        "TEST:",
        f"  DETECTIONS_PER_IMAGE: {h.detections_per_img}",
    ]
    return "\n".join(lines) + "\n"
