"""Read weight files safely (``.pkl`` restricted, ``.safetensors``, torch files with ``weights_only=True``)."""
from pathlib import Path
from typing import Any, Dict, Mapping, Tuple, Union

import numpy as np
import torch

from .safe_pickle import load_pickle

PathLike = Union[str, Path]


class WeightsFileError(RuntimeError):
    """A weights file is missing, unreadable or does not hold a state dict."""


class WeightsUnavailableError(FileNotFoundError):
    """Published weights are neither cached locally nor downloadable; the message says which file goes where."""


def read_weights_file(path: PathLike) -> Tuple[Any, Dict[str, str]]:
    """Return ``(object, safetensors string metadata)``; the metadata is ``{}`` for other formats."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".pkl":
        return load_pickle(path), {}
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
        except Exception as e:
            raise WeightsFileError(f"{path} is not a readable safetensors file ({type(e).__name__}: {e})") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=True), {}
    except Exception as e:  # refused global, truncated zip, ...
        raise WeightsFileError(
            f"{path} cannot be read with torch.load(weights_only=True) ({type(e).__name__}: {e})"
        ) from e


def find_state_dict(obj: Any, source: str, containers=("model", "state_dict")) -> Mapping[str, Any]:
    """The name → array mapping in ``obj``: ``obj`` itself, or the first of ``containers`` it holds."""
    if isinstance(obj, Mapping):
        if obj and all(_is_array(v) for v in obj.values()):
            return obj
        for key in containers:
            if isinstance(obj.get(key), Mapping):
                return obj[key]
    kind = f"dict with keys {sorted(map(str, obj))[:10]}" if isinstance(obj, Mapping) else type(obj).__name__
    raise WeightsFileError(f"{source}: expected a state dict (or one under {list(containers)}), found a {kind}")


def to_tensors(state_dict: Mapping[str, Any], source: str) -> Dict[str, torch.Tensor]:
    """Convert numpy arrays to tensors (copied, so nothing aliases the file's buffers); reject other values."""
    out = {}
    for key, value in state_dict.items():
        if isinstance(value, torch.Tensor):
            out[key] = value.detach()
        elif isinstance(value, np.ndarray) and value.dtype != object:
            out[key] = torch.from_numpy(np.array(value, copy=True))
        else:
            raise WeightsFileError(f"{source}: entry {key!r} is a {type(value).__name__}, expected an array or tensor")
    return out


def strip_common_prefix(state_dict: Dict[str, torch.Tensor], prefix: str = "module.") -> Dict[str, torch.Tensor]:
    """Drop a prefix every key carries (DistributedDataParallel's ``module.``)."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def _is_array(value: Any) -> bool:
    return isinstance(value, (torch.Tensor, np.ndarray))
