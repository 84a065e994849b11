"""resdet classifier weights: checkpoints written by ``save_checkpoint`` (tools/pretrain.py, convert_weights) and
``.safetensors`` exports, both carrying ``format: resdet``, ``arch`` and the weights metadata."""
import json
from pathlib import Path
from typing import Dict, Tuple

import torch

from ..utils.checkpoint import load_checkpoint
from .meta import WeightsMeta
from .weight_files import WeightsFileError, read_weights_file, strip_common_prefix, to_tensors

FORMAT = "resdet"
OTHER_SOURCES_HINT = (
    "for other files name the source: 'torchvision:<TAG>=<file>', 'timm:<arch>.<tag>=<file>', "
    "'detectron2:<file>' or 'msra:<file>'"
)


def load_resdet(path, arch: str) -> Tuple[Dict[str, torch.Tensor], WeightsMeta]:
    """State dict and metadata of a resdet checkpoint or safetensors export of ``arch``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist ({OTHER_SOURCES_HINT})")
    if path.suffix == ".safetensors":
        tensors, header = read_weights_file(path)
        fields = {"format": header.get("format"), "arch": header.get("arch")}
        meta_dict = json.loads(header["weights_meta"]) if "weights_meta" in header else None
        state_dict = tensors
    else:
        checkpoint = load_checkpoint(path)
        fields = {"format": checkpoint.get("format"), "arch": checkpoint.get("arch")}
        meta_dict, state_dict = checkpoint.get("weights_meta"), checkpoint.get("model")
    if fields["format"] != FORMAT or meta_dict is None or not isinstance(state_dict, dict):
        raise WeightsFileError(
            f"{path} is not a resdet checkpoint (needs format='resdet', 'arch', 'model' and 'weights_meta'; "
            f"found format={fields['format']!r}); {OTHER_SOURCES_HINT}"
        )
    if fields["arch"] != arch:
        raise ValueError(f"{path} holds {fields['arch']!r} weights, not {arch!r}")
    state_dict = strip_common_prefix(to_tensors(state_dict, str(path)))
    if any(k.startswith("backbone.") for k in state_dict):
        raise WeightsFileError(
            f"{path} is a detector checkpoint (keys under 'backbone.'); build_backbone loads classifier weights only"
        )
    # The stored metadata is kept as is: its ``source`` is the weights' provenance (e.g. "msra:R-50.pkl"), not
    # the path of this copy.
    return state_dict, WeightsMeta.from_dict(meta_dict)
