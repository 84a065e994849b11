"""Fine-tuning from a whole detector (``train_det.py --init-detector FILE``, the paper's COCO → VOC recipe, App. B).

The new run takes the file's architecture (backbone, anchors, conventions, RoI pooling, box coding) so that its trunk,
RPN and res5 head mean the same thing, and its pixel convention. The class-specific predictor is kept when the class
names are the same and re-initialised otherwise. Frozen stages follow the run's config.
"""
from typing import List, Optional, Tuple

import torch

from backbones.utils.config import Config, ConfigError
from backbones.weights.meta import WeightsMeta

from ..config import as_override
from .detector import FasterRCNNC4, build_detector
from .io import config_from_dict, read_detector_file

ARCHITECTURE_KEYS = ("backbone", "width_mult", "conventions", "anchor_sizes", "aspect_ratios", "roi_heads.pooler",
                     "roi_heads.pooler_resolution", "roi_heads.sampling_ratio", "roi_heads.aligned",
                     "roi_heads.bbox_reg_weights")
PREDICTOR = "roi_heads.box_predictor."


def architecture_overrides(path) -> List[str]:
    """``key=value`` overrides that give a new run the architecture of the detector in ``path``."""
    cfg = config_from_dict(read_detector_file(path)["config"])
    overrides = []
    for key in ARCHITECTURE_KEYS:
        node = cfg.model
        for part in key.split("."):
            node = node[part]
        overrides.append(as_override(f"model.{key}", node.to_dict() if hasattr(node, "to_dict") else node))
    return overrides + [as_override("model.init_detector", str(path))]


def check_conventions(requested: str, cfg: Config, path) -> Optional[str]:
    """Refuse a run whose config asks for other conventions than the ``--init-detector`` file was trained under.

    Args:
        requested: ``model.conventions`` of the config and overrides without the file's architecture keys.
        cfg: the resolved config (the file's conventions applied).
    Returns a warning line when a detectron2-convention file is trained without detectron2's losses and solver.
    """
    theirs = cfg.model.conventions
    if requested != "torchvision" and requested != theirs:
        raise ConfigError(f"--init-detector {path} is a model.conventions={theirs} detector, but the config asks for "
                          f"model.conventions={requested}: its anchors and proposals would mean something else. "
                          f"Train it under {theirs} conventions (detectron2: --config "
                          f"configs/detection/detectron2_c4.yaml)")
    r, h = cfg.model.rpn, cfg.model.roi_heads
    if theirs == "detectron2" and (r.loss_normalizer, r.smooth_l1_beta, h.smooth_l1_beta) != ("batch_size", 0.0, 0.0):
        return (f"--init-detector {path} is a detectron2-convention detector, trained here with the losses of this "
                f"config (RPN normaliser {r.loss_normalizer}, smooth-L1 beta {r.smooth_l1_beta:g} / "
                f"{h.smooth_l1_beta:g}), not detectron2's; --config configs/detection/detectron2_c4.yaml trains it as "
                f"detectron2 does")
    return None


def detector_for_finetuning(cfg, categories: List[dict]) -> Tuple[FasterRCNNC4, str]:
    """The run's detector with trunk, RPN and head from ``cfg.model.init_detector``; returns (model, log line)."""
    path = cfg.model.init_detector
    state = read_detector_file(path)
    meta = WeightsMeta.from_dict(state["weights_meta"])
    model = build_detector(cfg, len(categories), weights=None, weights_meta=meta)
    source = {k: v for k, v in state["model"].items() if not k.endswith("num_batches_tracked")}
    same_classes = [c["name"] for c in state["categories"]] == [c["name"] for c in categories]
    context_note = ""
    if not same_classes:
        source = {k: v for k, v in source.items() if not k.startswith(PREDICTOR)}
    elif cfg.model.roi_heads.global_context and not state["config"]["model"]["roi_heads"].get("global_context"):
        # The context half of the class and box layers starts at zero: the same predictions as the file's at first.
        for name in ("cls_score.weight", "bbox_pred.weight"):
            w = source[PREDICTOR + name]
            source[PREDICTOR + name] = torch.cat([w, torch.zeros_like(w)], dim=1)
        context_note = "; global context added (model.roi_heads.global_context): its new predictor weights start at 0"
    expected = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = sorted(k for k in expected if k not in source and (same_classes or not k.startswith(PREDICTOR)))
    unexpected = sorted(set(source) - set(expected))
    wrong = sorted(k for k in set(source) & set(expected) if source[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        parts = [f"{what}: {', '.join(keys[:8])}" for what, keys in
                 (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        raise ValueError(f"--init-detector {path} does not fit this run's detector ({'; '.join(parts)}); its "
                         f"architecture keys ({', '.join(ARCHITECTURE_KEYS)}) must not be overridden")
    model.load_state_dict(source, strict=False)
    predictor = "kept" if same_classes else (f"re-initialised ({len(state['categories'])} -> {len(categories)} "
                                             f"classes or other names)")
    return model, (f"initialised from detector {path}: trunk, RPN and res5 head loaded ({len(source)} tensors); "
                   f"class predictor {predictor}{context_note}")
