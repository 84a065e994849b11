"""MSRA / Detectron (caffe2) ResNet blob names → resdet names, BN affine → FrozenBN buffers.

The original MSRA ResNets (R-50.pkl, R-101.pkl from Detectron's model zoo) store each BatchNorm as a plain affine
``y = s * x + b`` (``*_bn_s``, ``*_bn_b``): the statistics were folded in. FrozenBatchNorm2d computes
``w * (x - mean) / sqrt(var + eps) + bias``, so ``mean = 0`` and ``var = 1 - eps`` make it exactly ``s * x + b``.
"""
import re
from pathlib import Path
from typing import Dict, List, Mapping, Tuple

import numpy as np
import torch

from .detectron2_format import UnknownKeysError
from .meta import MSRA_MEAN_BGR, WeightsMeta
from .weight_files import WeightsFileError, read_weights_file, to_tensors

BN_EPS = 1e-5  # eps of the BatchNorm2d / FrozenBatchNorm2d modules the registry builds
_BRANCH2 = {"a": 1, "b": 2, "c": 3}


def _target(name: str) -> str:
    """resdet name for one caffe2 blob name (``res2_0_branch2a_bn_s`` → ``layer1.0.bn1.weight``)."""
    fields = {"w": "weight", "b": "bias", "s": "weight"}
    if name in ("conv1_w", "conv1_b"):
        return "conv1." + fields[name[-1]]
    m = re.fullmatch(r"res_conv1_bn_(s|b)", name)
    if m:
        return "bn1." + fields[m[1]]
    m = re.fullmatch(r"fc1000_(w|b)", name)
    if m:
        return "fc." + fields[m[1]]
    m = re.fullmatch(r"res([2-5])_(\d+)_branch(1|2a|2b|2c)_(w|bn_s|bn_b)", name)
    if m:
        prefix = f"layer{int(m[1]) - 1}.{m[2]}"
        field = fields[m[4].replace("bn_", "")]
        if m[3] == "1":
            return f"{prefix}.downsample.0.weight" if m[4] == "w" else f"{prefix}.downsample.1.{field}"
        index = _BRANCH2[m[3][1]]
        return f"{prefix}.conv{index}.weight" if m[4] == "w" else f"{prefix}.bn{index}.{field}"
    raise UnknownKeysError(name)


def msra_to_resdet(blobs: Mapping[str, torch.Tensor], source: str, detector: bool = False
                   ) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Rename caffe2 blobs and turn affine BN into FrozenBN buffers; returns ``(state_dict, dropped keys)``.

    With ``detector=True`` (a Detectron detection file, whose blobs sit
    under ``"blobs"``) non-ResNet blobs such as the RPN and box head are dropped too; otherwise they are an error.
    A stem ``conv1_b`` (MSRA's caffe models have one) is folded into the following affine BN: s·(Wx + c) + b.
    """
    renamed, dropped, unknown = {}, [], []
    for key, value in blobs.items():
        try:
            renamed[_target(key)] = value.float()
        except UnknownKeysError:
            (dropped if detector else unknown).append(key)
    if unknown:
        raise UnknownKeysError(
            f"{source}: {len(unknown)} blobs are not MSRA/Detectron ResNet names: {', '.join(sorted(unknown)[:20])}"
        )
    conv_bias = renamed.pop("conv1.bias", None)
    if conv_bias is not None:
        renamed["bn1.bias"] = renamed["bn1.bias"] + renamed["bn1.weight"] * conv_bias
    fc = renamed.get("fc.weight")
    if fc is not None and fc.dim() == 4:  # caffe InnerProduct blobs may carry trailing 1×1 dims
        renamed["fc.weight"] = fc.flatten(1)
    for key in [k for k in renamed if k.endswith(("bn1.weight", "bn2.weight", "bn3.weight", "downsample.1.weight"))]:
        base = key[: -len("weight")]
        channels = renamed[key].shape[0]
        renamed[base + "running_mean"] = torch.zeros(channels)
        renamed[base + "running_var"] = torch.full((channels,), 1.0 - BN_EPS)
    return renamed, dropped


def load_msra(path) -> Tuple[Dict[str, torch.Tensor], WeightsMeta]:
    """State dict (resdet names, FrozenBN buffers) and metadata of an MSRA/Detectron caffe2 ``.pkl``.

    Convention of these weights (the paper's): BGR, 0-255 input, minus the caffe pixel mean, no std division,
    stride 2 in the bottleneck's first 1×1, BN frozen.
    """
    path = Path(path)
    obj, _ = read_weights_file(path)
    if not isinstance(obj, Mapping):
        raise WeightsFileError(f"{path}: expected a dict of caffe2 blobs, found a {type(obj).__name__}")
    if isinstance(obj.get("model"), Mapping):
        raise WeightsFileError(f"{path} holds its weights under 'model' like detectron2 files; use 'detectron2:{path}'")
    detector = isinstance(obj.get("blobs"), Mapping)  # Detectron detection files keep their blobs under "blobs"
    blobs = obj["blobs"] if detector else obj
    # Solver state (``*_momentum``) and, in detection files, bookkeeping scalars are not weights.
    arrays = {k: v for k, v in blobs.items()
              if not k.endswith("_momentum") and (not detector or isinstance(v, (np.ndarray, torch.Tensor)))}
    state_dict, dropped = msra_to_resdet(to_tensors(arrays, str(path)), str(path), detector=detector)
    meta = WeightsMeta(
        source=f"msra:{path}", pixel_format="BGR", input_scale=255.0, mean=MSRA_MEAN_BGR, std=(1.0, 1.0, 1.0),
        stride_in_1x1=True, norm="frozen_bn",
    )
    if dropped:
        meta.extra["dropped_detector_keys"] = len(dropped)
    return state_dict, meta
