"""timm's published weights (``timm:<arch>.<tag>``): the Hugging Face or torch hub cache, a download, or a file."""
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from .meta import WeightsMeta
from .torchvision_source import hub_cache_file
from .weight_files import WeightsUnavailableError, find_state_dict, read_weights_file, strip_common_prefix, to_tensors

HF_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm publishes on the Hub, preferred first


def pretrained_cfg(arch: str, tag: str):
    """timm's pretrained config for ``tag`` (``resnet50.tv_in1k``, or ``resnet50`` for timm's default tag)."""
    import timm
    from timm.models import get_pretrained_cfg

    model_name = tag.split(".", 1)[0]
    if model_name != arch:
        raise ValueError(f"timm weights {tag!r} are for {model_name!r}, not {arch!r}")
    try:
        cfg = get_pretrained_cfg(tag)
    except RuntimeError:
        cfg = None
    if cfg is None:
        raise ValueError(f"timm has no pretrained weights {tag!r}; available: {timm.list_pretrained(arch + '.*')}")
    return cfg


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (huggingface_hub reads it once at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def load_timm(arch: str, tag: str, file: Optional[str] = None) -> Tuple[Dict[str, torch.Tensor], WeightsMeta]:
    """State dict and metadata of timm weights ``tag`` for ``arch``, from ``file``, a cache, or a download."""
    cfg = pretrained_cfg(arch, tag)
    full_tag = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
    source = f"timm:{full_tag}"
    path = Path(file) if file is not None else _cached_file(cfg)
    if path is None:
        path = _download(cfg, source)
    state_dict = to_tensors(find_state_dict(read_weights_file(path)[0], str(path)), str(path))
    meta = WeightsMeta(
        arch=arch,
        source=source + (f"={file}" if file is not None else ""),
        pixel_format="RGB",
        input_scale=1.0,
        mean=tuple(cfg.mean),
        std=tuple(cfg.std),
        stride_in_1x1=False,  # timm's default ResNet ("b" variant) strides in the 3×3, like torchvision
        num_classes=cfg.num_classes,
        categories=_categories(cfg),
        extra={"input_size": list(cfg.input_size), "crop_pct": cfg.crop_pct, "interpolation": cfg.interpolation},
    )
    return strip_common_prefix(state_dict), meta


def _hf_repo(cfg) -> Optional[str]:
    return cfg.hf_hub_id.split("@", 1)[0] if cfg.hf_hub_id else None


def _hf_files(cfg) -> List[str]:
    return [cfg.hf_hub_filename] if cfg.hf_hub_filename else list(HF_FILES)


def _cached_file(cfg) -> Optional[Path]:
    repo = _hf_repo(cfg)
    if repo:
        from huggingface_hub import try_to_load_from_cache

        for name in _hf_files(cfg):
            found = try_to_load_from_cache(repo, name, cache_dir=str(hf_cache_dir()))
            if isinstance(found, str):
                return Path(found)
    if cfg.url and hub_cache_file(cfg.url).is_file():
        return hub_cache_file(cfg.url)
    return None


def _download(cfg, source: str) -> Path:
    errors = []
    repo = _hf_repo(cfg)
    if repo:
        from huggingface_hub import hf_hub_download

        for name in _hf_files(cfg):
            try:
                return Path(hf_hub_download(repo, name, cache_dir=str(hf_cache_dir())))
            except Exception as e:  # offline, missing file in the repo, ...
                errors.append(f"{repo}/{name}: {type(e).__name__}: {e}")
    if cfg.url:
        target = hub_cache_file(cfg.url)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(cfg.url, str(target), progress=False)
            return target
        except Exception as e:
            errors.append(f"{cfg.url}: {type(e).__name__}: {e}")
    places = []
    if repo:
        places.append(f"{' or '.join(_hf_files(cfg))} of the Hugging Face repo {repo} "
                      f"(cache folder {hf_cache_dir() / ('models--' + repo.replace('/', '--'))})")
    if cfg.url:
        target = hub_cache_file(cfg.url)
        places.append(f"{target.name} in the torch hub cache folder {target.parent}")
    raise WeightsUnavailableError(
        f"{source}: weights are not cached and could not be downloaded ({'; '.join(errors) or 'no download location'})."
        f" Expected {', or '.join(places)}. Offline, download the file elsewhere and pass weights='{source}=/path/to/file'."
    )


def _categories(cfg) -> Optional[List[str]]:
    if cfg.label_names:
        return list(cfg.label_names)
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(cfg.to_dict())
        return list(ImageNetInfo(subset).label_descriptions()) if subset else None
    except Exception:  # categories are informative only; never fail a load over them
        return None
