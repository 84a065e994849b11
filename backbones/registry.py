"""Backbone registry: ``list_backbones()`` and ``build_backbone(name, weights=..., **kwargs)``."""
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch.nn as nn

from .blocks import BasicBlock, Bottleneck
from .cifar_resnet import CifarResNet
from .resnet import ResNet
from .vgg import VGG
from .weights.meta import WeightsMeta


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    family: str  # "imagenet_resnet", "cifar_resnet" or "vgg"
    factory: Callable[..., nn.Module]
    defaults: dict
    description: str


_REGISTRY: Dict[str, BackboneSpec] = {}


def register(name: str, family: str, factory: Callable[..., nn.Module], description: str, **defaults) -> None:
    if name in _REGISTRY:
        raise KeyError(f"backbone {name!r} is already registered")
    _REGISTRY[name] = BackboneSpec(name, family, factory, defaults, description)


def list_backbones(family: Optional[str] = None) -> List[str]:
    """Registered names, optionally only one family ("imagenet_resnet", "cifar_resnet", "vgg")."""
    return [n for n, s in _REGISTRY.items() if family is None or s.family == family]


def get_spec(name: str) -> BackboneSpec:
    if name not in _REGISTRY:
        import difflib

        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown backbone {name!r}{hint} Registered: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def _imagenet(block, layers, plain=False):
    def factory(num_classes=1000, shortcut="B", stride_in_1x1=True, norm="bn", zero_init_residual=False,
                width_mult=1.0):
        return ResNet(block, layers, num_classes, None if plain else shortcut, stride_in_1x1, norm, zero_init_residual,
                      width_mult)

    return factory


def _cifar(n, plain=False):
    def factory(num_classes=10, shortcut="A", stride_in_1x1=True, norm="bn", zero_init_residual=False,
                width_mult=1.0):
        if width_mult != 1.0:
            raise ValueError(f"width_mult={width_mult} is for the ImageNet family and vgg16; the CIFAR nets keep the "
                             "paper's 16/32/64 channels (choose the depth instead)")
        return CifarResNet(n, num_classes, None if plain else shortcut, norm, zero_init_residual, stride_in_1x1)

    return factory


for _name, _block, _layers in (
    ("resnet18", BasicBlock, (2, 2, 2, 2)),
    ("resnet34", BasicBlock, (3, 4, 6, 3)),
    ("resnet50", Bottleneck, (3, 4, 6, 3)),
    ("resnet101", Bottleneck, (3, 4, 23, 3)),
    ("resnet152", Bottleneck, (3, 8, 36, 3)),
):
    register(_name, "imagenet_resnet", _imagenet(_block, _layers), f"ResNet, {_name[6:]} layers (paper Table 1)")
for _name, _layers in (("plain18", (2, 2, 2, 2)), ("plain34", (3, 4, 6, 3))):
    register(_name, "imagenet_resnet", _imagenet(BasicBlock, _layers, plain=True),
             f"plain net, {_name[5:]} layers, no shortcuts (paper Table 2)")
register("vgg16", "vgg", VGG, "VGG-16 (configuration D)")
for _depth in (20, 32, 44, 56, 110, 1202):
    register(f"resnet{_depth}", "cifar_resnet", _cifar((_depth - 2) // 6), f"CIFAR ResNet, 6n+2 = {_depth} (paper §4.2)")
for _depth in (20, 32, 44, 56, 110):
    register(f"plain{_depth}", "cifar_resnet", _cifar((_depth - 2) // 6, plain=True),
             f"CIFAR plain net, {_depth} layers (paper §4.2)")


def default_meta(name: str, model: nn.Module) -> WeightsMeta:
    """Metadata for a randomly initialised model: RGB, [0, 1] input, ImageNet mean/std."""
    stride = getattr(model, "stride_in_1x1", None)
    return WeightsMeta(arch=name, source="scratch", stride_in_1x1=stride, num_classes=_num_classes(model))


def _num_classes(model: nn.Module) -> int:
    head = model.fc if hasattr(model, "fc") else model.classifier[-1]
    return head.out_features


def classifier_keys(model: nn.Module) -> List[str]:
    """State-dict keys of the final classification layer (replaced when ``num_classes`` changes)."""
    prefix = "fc" if hasattr(model, "fc") else "classifier.6"
    return [f"{prefix}.weight", f"{prefix}.bias"]


def build_backbone(name: str, weights: Optional[str] = None, **kwargs) -> nn.Module:
    """Build a registered classifier.

    Args:
        name: a name from ``list_backbones()``.
        weights: None (He initialisation) or a weights source (see ``backbones.weights.resolve_weights``).
            The source's metadata sets ``stride_in_1x1``/``norm`` defaults and is attached as ``model.weights_meta``.
        **kwargs: ``num_classes``, ``shortcut``, ``stride_in_1x1``, ``norm``, ``zero_init_residual``, ``width_mult``
            (channel scale of the ImageNet family and vgg16; with weights it follows them).
    """
    spec = get_spec(name)
    allowed = {"num_classes", "shortcut", "stride_in_1x1", "norm", "zero_init_residual", "width_mult"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise TypeError(f"build_backbone({name!r}) got unknown arguments {unknown}; allowed: {sorted(allowed)}")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if weights is None:
        model = spec.factory(**{**spec.defaults, **kwargs})
        _annotate(model, kwargs)
        model.weights_meta = default_meta(name, model)
        return model
    from .weights.sources import load_pretrained_into

    return load_pretrained_into(name, spec, weights, kwargs)


def _annotate(model: nn.Module, kwargs: dict) -> None:
    if isinstance(model, ResNet) and model.block is Bottleneck:
        model.stride_in_1x1 = kwargs.get("stride_in_1x1", True)
