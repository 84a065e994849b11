"""torchvision's published weights through its weights API, read from the torch hub cache (or downloaded once)."""
import os
from pathlib import Path
from typing import Dict, Optional, Tuple
from urllib.parse import urlparse

import torch

from .meta import WeightsMeta
from .weight_files import WeightsUnavailableError, find_state_dict, read_weights_file, strip_common_prefix, to_tensors


def weights_entry(arch: str, tag: Optional[str]):
    """The ``torchvision.models.<Arch>_Weights`` member for ``tag`` (None → DEFAULT)."""
    from torchvision.models import get_model_weights

    try:
        enum = get_model_weights(arch)
    except (ValueError, KeyError) as e:
        raise ValueError(f"torchvision publishes no weights for {arch!r} ({e})") from e
    names = [member.name for member in enum]
    try:
        return enum[tag or "DEFAULT"]
    except KeyError:
        raise ValueError(f"torchvision has no {arch} weights named {tag!r}; choose one of {names + ['DEFAULT']}") from None


def hub_cache_file(url: str) -> Path:
    """Where torch hub keeps the file for ``url``: ``torch.hub.get_dir()/checkpoints/<file name>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def load_torchvision(arch: str, tag: Optional[str] = None, file: Optional[str] = None
                     ) -> Tuple[Dict[str, torch.Tensor], WeightsMeta]:
    """State dict and metadata of torchvision's ``arch`` weights ``tag``, from ``file`` or the hub cache.

    A missing cache file is downloaded with torch hub; when that fails the error names the file and folder.
    """
    entry = weights_entry(arch, tag)
    if file is not None:
        path = Path(file)
        state_dict = find_state_dict(read_weights_file(path)[0], str(path))
    else:
        path = hub_cache_file(entry.url)
        if path.is_file():
            state_dict = find_state_dict(read_weights_file(path)[0], str(path))
        else:
            state_dict = _download(entry.url, path, f"torchvision:{entry.name}")
    transform = entry.transforms()
    categories = entry.meta.get("categories")
    meta = WeightsMeta(
        arch=arch,
        source=f"torchvision:{entry.name}" + (f"={file}" if file is not None else ""),
        pixel_format="RGB",
        input_scale=1.0,
        mean=tuple(transform.mean),
        std=tuple(transform.std),
        stride_in_1x1=False,  # torchvision's ResNet "v1.5" strides in the 3×3
        num_classes=len(categories) if categories else None,
        categories=list(categories) if categories else None,
        extra={"url": entry.url},
    )
    return strip_common_prefix(to_tensors(state_dict, str(path))), meta


def _download(url: str, path: Path, source: str):
    try:
        return torch.hub.load_state_dict_from_url(
            url, model_dir=str(path.parent), map_location="cpu", weights_only=True, file_name=path.name
        )
    except Exception as e:  # offline, proxy, disk full, ...
        raise WeightsUnavailableError(
            f"{source}: {path.name} is not in the torch hub cache folder {path.parent} and could not be downloaded "
            f"from {url} ({type(e).__name__}: {e}). Copy {path.name} into {path.parent} "
            f"(or set TORCH_HOME), or pass weights='{source}=/path/to/{path.name}'."
        ) from e
