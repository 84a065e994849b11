"""Pretrained weights: sources, metadata, key accounting, format conversion."""
from .export import EXPORT_FORMATS, export_weights
from .keys import WeightsMismatchError, load_state_dict_exact
from .meta import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB, MSRA_MEAN_BGR, WeightsMeta
from .safe_pickle import UnsafePickleError, load_pickle
from .sources import KINDS, parse_source, resolve_weights
from .weight_files import WeightsFileError, WeightsUnavailableError

__all__ = [
    "WeightsMeta", "WeightsMismatchError", "load_state_dict_exact",
    "IMAGENET_MEAN_RGB", "IMAGENET_STD_RGB", "MSRA_MEAN_BGR",
    "KINDS", "parse_source", "resolve_weights", "EXPORT_FORMATS", "export_weights",
    "UnsafePickleError", "load_pickle", "WeightsFileError", "WeightsUnavailableError",
]
