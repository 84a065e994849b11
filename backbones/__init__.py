"""resdet backbones: the paper's ResNets, plain nets, CIFAR nets and VGG-16, plus their C4 split for detection."""
from .c4 import C4Backbone, build_c4
from .registry import build_backbone, list_backbones
from .weights import WeightsMeta

__all__ = ["build_backbone", "build_c4", "list_backbones", "C4Backbone", "WeightsMeta"]
