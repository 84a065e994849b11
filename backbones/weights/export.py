"""Write a loaded model's weights as a resdet checkpoint, a detectron2 ``.pkl``, or ``.safetensors`` (atomic writes)."""
import json
import pickle
from pathlib import Path
from typing import Dict

import torch
import torch.nn as nn

from ..utils.atomic_io import atomic_write_bytes
from ..utils.checkpoint import save_checkpoint
from .detectron2_format import META_KEY, resdet_to_detectron2
from .meta import WeightsMeta
from .resdet_checkpoint import FORMAT

EXPORT_FORMATS = ("resdet", "detectron2", "safetensors")


def exportable_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The model's weights that came from somewhere: a classifier that was freshly initialised
    (``weights_meta.extra["classifier_from_weights"] is False``) is left out, so it is never passed off as trained."""
    from ..registry import classifier_keys

    state_dict = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    meta = _meta(model)
    if meta.extra.get("classifier_from_weights") is False:
        for key in classifier_keys(model):
            state_dict.pop(key, None)
    return state_dict


def export_weights(model: nn.Module, path, fmt: str) -> Path:
    """Write ``model``'s weights and ``weights_meta`` to ``path`` in format ``fmt`` (one of EXPORT_FORMATS)."""
    writers = {"resdet": export_resdet, "detectron2": export_detectron2, "safetensors": export_safetensors}
    if fmt not in writers:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {EXPORT_FORMATS}")
    return writers[fmt](model, path)


def export_resdet(model: nn.Module, path) -> Path:
    """A checkpoint ``build_backbone(arch, weights=path)`` reads back (``save_checkpoint``: atomic + sha256)."""
    meta = _meta(model)
    obj = {"format": FORMAT, "arch": meta.arch, "model": exportable_state_dict(model), "weights_meta": meta.to_dict()}
    return save_checkpoint(obj, path)


def export_detectron2(model: nn.Module, path) -> Path:
    """A ``.pkl`` detectron2's ``DetectionCheckpointer`` loads: ``{"model": {d2 name: numpy array}, "__author__",
    "matching_heuristics": True}``. Set detectron2's PIXEL_MEAN/STD, INPUT.FORMAT and RESNETS.STRIDE_IN_1X1 from
    the metadata (also kept in the file under ``resdet_weights_meta`` for resdet)."""
    path = Path(path)
    if path.suffix != ".pkl":
        raise ValueError(f"detectron2 export {path} must end in .pkl (detectron2 picks its reader by extension)")
    meta = _meta(model)
    obj = {
        "model": resdet_to_detectron2(exportable_state_dict(model)),
        "__author__": "resdet",
        "matching_heuristics": True,
        META_KEY: meta.to_dict(),
    }
    atomic_write_bytes(path, pickle.dumps(obj, protocol=4))  # protocol 4: readable by every Python detectron2 supports
    return path


def export_safetensors(model: nn.Module, path) -> Path:
    """Tensors under resdet names; ``format``, ``arch`` and the JSON ``weights_meta`` as string metadata."""
    from safetensors.torch import save

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"safetensors export {path} must end in .safetensors (resdet picks its reader by extension)")
    meta = _meta(model)
    tensors = {k: v.contiguous() for k, v in exportable_state_dict(model).items()}
    header = {"format": FORMAT, "arch": meta.arch, "weights_meta": json.dumps(meta.to_dict())}
    atomic_write_bytes(path, save(tensors, metadata=header))
    return path


def _meta(model: nn.Module) -> WeightsMeta:
    meta = getattr(model, "weights_meta", None)
    if not isinstance(meta, WeightsMeta) or not meta.arch:
        raise ValueError("model has no weights_meta with an arch; build it with backbones.build_backbone")
    return meta
