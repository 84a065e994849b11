"""Classifier construction and the resdet checkpoint format shared with ``build_backbone`` and detection.

A checkpoint is a dict ``{"format": "resdet", "arch", "model" (torchvision-named state dict), "weights_meta"
(WeightsMeta.to_dict()), "model_kwargs" (what build_backbone needs to rebuild the same layout)}``; training
checkpoints add the optimiser, schedule, scaler, RNG and sampler state; ``model_final.pth`` holds only the former.
"""
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch.nn as nn

from ..registry import build_backbone
from ..utils.checkpoint import load_checkpoint
from ..weights.keys import load_state_dict_exact
from ..weights.meta import WeightsMeta

FORMAT = "resdet"


def build_classifier(arch: str, num_classes: int, shortcut: Optional[str] = None,
                     stride_in_1x1: Optional[bool] = None, norm: str = "bn",
                     zero_init_residual: bool = False, width_mult: float = 1.0) -> Tuple[nn.Module, Dict[str, Any]]:
    """A freshly initialised ``arch`` with ``num_classes`` outputs, and the kwargs that rebuild it."""
    kwargs = {"num_classes": num_classes, "shortcut": shortcut, "stride_in_1x1": stride_in_1x1, "norm": norm,
              "zero_init_residual": zero_init_residual}
    if width_mult != 1.0:  # older checkpoints have no such key; full width stays unrecorded for them to match
        kwargs["width_mult"] = width_mult
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    model = build_backbone(arch, **kwargs)
    # Record the resolved layout, so a consumer does not depend on registry defaults staying the same.
    kwargs["shortcut"] = getattr(model, "shortcut", None)
    resolved_stride = getattr(model, "stride_in_1x1", None)
    if resolved_stride is not None:
        kwargs["stride_in_1x1"] = resolved_stride
    # Pretrained statistics are ordinary BN ones whatever the training-time flavour.
    kwargs["norm"] = "bn" if norm == "sync_bn" else norm
    return model, kwargs


def weights_meta(arch: str, dataset: str, model: nn.Module, mean: Sequence[float], std: Sequence[float],
                 categories: Sequence[str], extra: Optional[dict] = None) -> WeightsMeta:
    """Metadata of weights trained here: RGB in [0, 1], normalised by the training transforms' mean/std."""
    return WeightsMeta(
        arch=arch, source=f"resdet:pretrain:{dataset}", pixel_format="RGB", input_scale=1.0, mean=tuple(mean),
        std=tuple(std), stride_in_1x1=getattr(model, "stride_in_1x1", None), num_classes=len(categories),
        categories=list(categories), norm="bn", extra=dict(extra or {}),
    )


def checkpoint_dict(arch: str, model_state: Dict, meta: WeightsMeta, model_kwargs: Dict[str, Any],
                    **training_state: Any) -> Dict[str, Any]:
    return {"format": FORMAT, "arch": arch, "model": model_state, "weights_meta": meta.to_dict(),
            "model_kwargs": dict(model_kwargs), **training_state}


def load_classifier(path, arch: Optional[str] = None) -> Tuple[nn.Module, WeightsMeta, Dict[str, Any]]:
    """Rebuild the classifier stored in a resdet checkpoint; returns (model, metadata, checkpoint)."""
    checkpoint = load_checkpoint(path)
    if checkpoint.get("format") != FORMAT or "model" not in checkpoint or "model_kwargs" not in checkpoint:
        raise ValueError(f"{path} is not a resdet pretraining checkpoint (needs format='resdet', 'model', "
                         f"'model_kwargs'); found keys {sorted(checkpoint)[:10]}")
    if arch and checkpoint["arch"] != arch:
        raise ValueError(f"{path} holds {checkpoint['arch']!r} weights, but --arch is {arch!r}")
    model, _ = build_classifier(checkpoint["arch"], **checkpoint["model_kwargs"])
    load_state_dict_exact(model, checkpoint["model"], source=str(Path(path)))
    meta = WeightsMeta.from_dict(checkpoint["weights_meta"])
    model.weights_meta = meta
    return model, meta, checkpoint
