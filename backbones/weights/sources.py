"""Weights sources: parse a source string, read its weights and metadata, build and load the model.

Source strings (``build_backbone(name, weights=...)``, ``build_c4``, ``tools/convert_weights.py``):

* ``PATH`` or ``resdet:PATH`` — a resdet checkpoint (``tools/pretrain.py``, ``convert_weights --to resdet``) or a
  resdet ``.safetensors`` export;
* ``torchvision``, ``torchvision:TAG`` (e.g. ``IMAGENET1K_V2``; default DEFAULT), ``torchvision:TAG=FILE`` or
  ``torchvision=FILE`` — torchvision's published weights, from the torch hub cache, a download, or a local file;
* ``timm:ARCH.TAG`` (e.g. ``timm:resnet50.tv_in1k``; ``timm:ARCH`` is timm's default tag) or ``timm:ARCH.TAG=FILE``;
* ``detectron2:PATH`` — a detectron2 ``.pkl``/``.pth`` (backbone file or detector checkpoint);
* ``msra:PATH`` — an MSRA / Detectron caffe2 ``.pkl`` (R-50.pkl, R-101.pkl).
"""
import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn as nn

from ..width import width_mult_of
from .keys import load_state_dict_exact
from .meta import WeightsMeta

KINDS = ("resdet", "torchvision", "timm", "detectron2", "msra")
_HUB_KINDS = ("torchvision", "timm")


@dataclass(frozen=True)
class WeightsSource:
    kind: str  # one of KINDS
    tag: Optional[str] = None  # torchvision weights name / timm pretrained tag
    path: Optional[str] = None  # local file


def parse_source(source: Union[str, os.PathLike]) -> WeightsSource:
    """Split a source string into kind, tag and file (see the module docstring for the grammar)."""
    if not isinstance(source, str):
        return WeightsSource("resdet", path=os.fspath(source))
    m = re.fullmatch(r"(torchvision|timm)(?::([^=]*))?(?:=(.+))?", source)
    if m:
        kind, tag, path = m[1], m[2] or None, m[3]
        if kind == "timm" and not tag:
            raise ValueError(f"weights {source!r}: timm needs a tag, e.g. 'timm:resnet50.tv_in1k'")
        return WeightsSource(kind, tag, path)
    kind, sep, rest = source.partition(":")
    if sep and kind in KINDS:
        if not rest:
            raise ValueError(f"weights {source!r}: {kind} needs a file path after the colon")
        return WeightsSource(kind, path=rest)
    return WeightsSource("resdet", path=source)


def resolve_weights(arch: str, source: Union[str, os.PathLike]) -> Tuple[Dict[str, torch.Tensor], WeightsMeta]:
    """Read the weights ``source`` for ``arch``: a state dict with resdet (torchvision) names and its metadata."""
    parsed = parse_source(source)
    if parsed.kind == "torchvision":
        from .torchvision_source import load_torchvision

        state_dict, meta = load_torchvision(arch, parsed.tag, parsed.path)
    elif parsed.kind == "timm":
        from .timm_source import load_timm

        state_dict, meta = load_timm(arch, parsed.tag, parsed.path)
    elif parsed.kind == "detectron2":
        from .detectron2_format import load_detectron2

        state_dict, meta = load_detectron2(parsed.path)
    elif parsed.kind == "msra":
        from .msra_format import load_msra

        state_dict, meta = load_msra(parsed.path)
    else:
        from .resdet_checkpoint import load_resdet

        state_dict, meta = load_resdet(parsed.path, arch)
    return state_dict, dataclasses.replace(meta, arch=arch)


def derived_kwargs(state_dict: Dict[str, torch.Tensor], meta: WeightsMeta) -> dict:
    """Model arguments the weights imply: stride placement, shortcut option, norm and number of classes."""
    derived = {}
    if "layer1.0.conv3.weight" in state_dict and meta.stride_in_1x1 is not None:  # bottleneck nets only
        derived["stride_in_1x1"] = meta.stride_in_1x1
    shortcut = infer_shortcut(state_dict)
    if shortcut:
        derived["shortcut"] = shortcut
    if meta.norm:
        derived["norm"] = meta.norm
    for key in ("fc.weight", "classifier.6.weight"):
        if key in state_dict:
            derived["num_classes"] = int(state_dict[key].shape[0])
    return derived


def infer_shortcut(state_dict: Dict[str, torch.Tensor]) -> Optional[str]:
    """Paper §3.3 option from the projection weights: on every block → C, some → B, none → A (None: not a ResNet)."""
    if not any(k.startswith("layer") for k in state_dict):
        return None
    projected = [int(m[1]) for k in state_dict if (m := re.fullmatch(r"layer\d\.(\d+)\.downsample\.0\.weight", k))]
    if not projected:
        return "A"
    return "C" if any(block > 0 for block in projected) else "B"


def load_pretrained_into(name: str, spec, weights, kwargs: dict) -> nn.Module:
    """Build ``name`` with the arguments its weights imply (explicit ``kwargs`` win unless they contradict the
    weights' layout), load the weights with exact key accounting, and attach ``model.weights_meta``."""
    from ..registry import _annotate, classifier_keys

    state_dict, meta = resolve_weights(name, weights)
    derived = derived_kwargs(state_dict, meta)
    derived["width_mult"] = width_mult_of(spec.family, state_dict)
    build_kwargs = {**derived, **kwargs}
    model = spec.factory(**{**spec.defaults, **build_kwargs})
    _annotate(model, build_kwargs)
    _check_layout(model, derived, kwargs, weights)

    head = classifier_keys(model)
    num_classes = int(model.state_dict()[head[0]].shape[0])
    head_in_weights = all(k in state_dict for k in head)
    head_loaded = head_in_weights and derived.get("num_classes") == num_classes
    load_state_dict_exact(
        model,
        state_dict,
        expected_missing=() if head_loaded else head,
        ignore_unexpected=head if head_in_weights and not head_loaded else (),
        source=f"weights {weights}",
    )
    categories = meta.categories if head_loaded and meta.categories and len(meta.categories) == num_classes else None
    model.weights_meta = dataclasses.replace(
        meta,
        stride_in_1x1=getattr(model, "stride_in_1x1", None),
        num_classes=num_classes,
        categories=categories,
        extra={**meta.extra, "classifier_from_weights": head_loaded},
    )
    return model


class LayoutMismatch(ValueError):
    """An explicit build argument contradicts the weights' architecture (``key``: the argument's name)."""

    def __init__(self, message: str, key: str, explicit, derived):
        super().__init__(message)
        self.key, self.explicit, self.derived = key, explicit, derived


def _check_layout(model: nn.Module, derived: dict, explicit: dict, weights) -> None:
    """An explicit argument that contradicts the weights' architecture is an error, never a silent mismatch."""
    applies = {
        "stride_in_1x1": hasattr(model, "stride_in_1x1"),  # set for bottleneck ResNets only
        "shortcut": getattr(model, "shortcut", None) is not None,  # plain nets have no shortcuts
        "width_mult": True,
    }
    for key, relevant in applies.items():
        if relevant and key in explicit and key in derived and explicit[key] != derived[key]:
            raise LayoutMismatch(
                f"{key}={explicit[key]!r} contradicts weights {weights!r}, which were trained with "
                f"{key}={derived[key]!r}; leave {key} unset to follow the weights",
                key, explicit[key], derived[key],
            )
