"""Trained-detector files: ``model_final.pth`` (``format: resdet-detector``) and training checkpoints.

``{"format": "resdet-detector", "backbone": name, "model": state_dict, "weights_meta": {...}, "config": {...},
"categories": [{"id", "name"}, ...]}``; label ``i + 1`` is ``categories[i]``. Loaded with ``weights_only=True``.
"""
from pathlib import Path
from typing import Any, Dict, List, Tuple

from backbones.utils.checkpoint import load_checkpoint, save_checkpoint
from backbones.utils.config import ConfigError
from backbones.weights.meta import WeightsMeta

from ..config import as_override, load_det_config
from .detector import FasterRCNNC4, build_detector

DETECTOR_FORMAT = "resdet-detector"
TRAIN_STATE_FORMAT = "resdet-detector-train"


def _flat_overrides(d: dict, prefix: str = "") -> List[str]:
    out = []
    for key, value in d.items():
        if isinstance(value, dict) and value:
            out += _flat_overrides(value, f"{prefix}{key}.")
        else:
            out.append(as_override(prefix + key, value))
    return out


def config_from_dict(d: dict, overrides=()):
    """A validated config from a stored (resolved) config dict, plus ``key=value`` overrides."""
    return load_det_config(overrides=[*_flat_overrides(d), *overrides])


def detector_file(model: FasterRCNNC4, cfg, categories: List[dict], extra: Dict[str, Any] = None) -> dict:
    return {
        "format": DETECTOR_FORMAT, "backbone": model.backbone_name, "model": model.state_dict(),
        "weights_meta": model.weights_meta.to_dict(), "config": cfg.to_dict(),
        "categories": [{"id": int(c["id"]), "name": str(c["name"])} for c in categories], **(extra or {}),
    }


def save_detector(path, model: FasterRCNNC4, cfg, categories: List[dict], extra: Dict[str, Any] = None) -> Path:
    return save_checkpoint(detector_file(model, cfg, categories, extra), path)


def read_detector_file(path, map_location="cpu") -> dict:
    """The dict of ``model_final.pth`` or a training checkpoint, its format and entries checked."""
    state = load_checkpoint(path, map_location=map_location)
    fmt = state.get("format")
    if fmt not in (DETECTOR_FORMAT, TRAIN_STATE_FORMAT):
        raise ValueError(f"{path} is not a resdet detector (format {fmt!r}; expected {DETECTOR_FORMAT!r} as "
                         f"written by tools/train_det.py or tools/convert_weights.py --detector)")
    for key in ("model", "config", "categories", "weights_meta"):
        if key not in state:
            raise ValueError(f"{path}: detector file has no {key!r} entry")
    return state


def check_global_context(cfg, state: dict, path) -> None:
    """``model.roi_heads.global_context`` is part of the trained weights: it cannot be switched on at evaluation."""
    trained = bool(state["config"].get("model", {}).get("roi_heads", {}).get("global_context", False))
    asked = cfg.model.roi_heads.global_context
    if asked != trained:
        raise ConfigError(f"config key 'model.roi_heads.global_context' = {asked} but {path} was trained "
                          f"{'with' if trained else 'without'} global context, so it has "
                          f"{'' if trained else 'no '}context weights; train (or fine-tune with --init-detector) "
                          f"with the key set to evaluate it that way")


def load_detector(path, overrides=(), map_location="cpu") -> Tuple[FasterRCNNC4, Any, List[dict]]:
    """(model in eval mode, its config, categories) from ``model_final.pth`` or a training checkpoint.

    ``overrides`` (``key=value``) change inference settings such as ``model.roi_heads.score_thresh``.
    """
    state = read_detector_file(path, map_location)
    cfg = config_from_dict(state["config"], overrides)
    check_global_context(cfg, state, path)
    categories = list(state["categories"])
    model = build_detector(cfg, len(categories), weights=None, weights_meta=WeightsMeta.from_dict(state["weights_meta"]))
    model.load_state_dict(state["model"])
    return model.eval(), cfg, categories
