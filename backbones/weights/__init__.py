"""Pretrained weights: sources, metadata, key accounting."""
from .keys import WeightsMismatchError, load_state_dict_exact
from .meta import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB, MSRA_MEAN_BGR, WeightsMeta

__all__ = [
    "WeightsMeta", "WeightsMismatchError", "load_state_dict_exact",
    "IMAGENET_MEAN_RGB", "IMAGENET_STD_RGB", "MSRA_MEAN_BGR",
]
