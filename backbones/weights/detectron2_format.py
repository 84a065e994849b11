"""detectron2 ResNet parameter names ↔ resdet (torchvision) names.

detectron2: ``stem.conv1.weight``, ``stem.conv1.norm.*``, ``res2.0.conv1.weight``, ``res2.0.conv1.norm.*``,
``res2.0.shortcut.weight``, ``res2.0.shortcut.norm.*``, ``linear.*``; resdet: ``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer1.0.bn1``, ``layer1.0.downsample.{0,1}``, ``fc``. Stages shift by one (res2 = layer1).
"""
import re
from pathlib import Path
from typing import Dict, List, Mapping, Tuple

import numpy as np
import torch

from .meta import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB, WeightsMeta
from .weight_files import find_state_dict, read_weights_file, to_tensors

# detectron2's default MODEL.PIXEL_MEAN / PIXEL_STD: BGR on a 0-255 scale, std folded into conv1 (MSRA weights).
DETECTRON2_MEAN_BGR = (103.530, 116.280, 123.675)
# Key under which resdet's detectron2 export keeps its metadata (detectron2's checkpointer ignores extra keys).
META_KEY = "resdet_weights_meta"

# Prefixes of ResNet weights inside detectron2 *detector* checkpoints (C4: backbone + roi_heads.res5; FPN: bottom_up).
DETECTOR_PREFIXES = (("backbone.bottom_up.", ""), ("backbone.", ""), ("roi_heads.res5.", "res5."))


class UnknownKeysError(KeyError):
    """Names that do not belong to a ResNet in the expected naming scheme."""

    def __str__(self):
        return self.args[0]


# (resdet, detectron2) name templates. {s}: resdet stage (layer1..4), {S}: detectron2 stage (res2..5) = s + 1;
# {b}: block, {k}: conv index, {f}: a norm field, {p}: weight/bias. Renaming uses the first rule that matches, so
# "stem.fc" (the classifier name of detectron2's own torchvision converter) is only read, never written.
_RULES = (
    ("conv1.weight", "stem.conv1.weight"),
    ("bn1.{f}", "stem.conv1.norm.{f}"),
    ("fc.{p}", "linear.{p}"),
    ("fc.{p}", "stem.fc.{p}"),
    ("layer{s}.{b}.conv{k}.weight", "res{S}.{b}.conv{k}.weight"),
    ("layer{s}.{b}.bn{k}.{f}", "res{S}.{b}.conv{k}.norm.{f}"),
    ("layer{s}.{b}.downsample.0.weight", "res{S}.{b}.shortcut.weight"),
    ("layer{s}.{b}.downsample.1.{f}", "res{S}.{b}.shortcut.norm.{f}"),
)
_FIELDS = {
    "s": r"[1-4]", "S": r"[2-5]", "b": r"\d+", "k": r"\d",
    "f": r"weight|bias|running_mean|running_var|num_batches_tracked", "p": r"weight|bias",
}


def _pattern(template: str) -> "re.Pattern":
    regex = re.escape(template)
    for field, allowed in _FIELDS.items():
        regex = regex.replace(re.escape("{" + field + "}"), f"(?P<{field}>{allowed})")
    return re.compile(regex)


_COMPILED = [(_pattern(ours), ours, _pattern(theirs), theirs) for ours, theirs in _RULES]


def _rename(name: str, to_detectron2: bool) -> str:
    for ours_re, ours, theirs_re, theirs in _COMPILED:
        m = (ours_re if to_detectron2 else theirs_re).fullmatch(name)
        if m:
            groups = m.groupdict()
            if "s" in groups:
                groups["S"] = int(groups["s"]) + 1
            elif "S" in groups:
                groups["s"] = int(groups["S"]) - 1
            return (theirs if to_detectron2 else ours).format(**groups)
    scheme = "resdet ResNet" if to_detectron2 else "detectron2 ResNet"
    raise UnknownKeysError(f"{name!r} is not a {scheme} parameter name")


def resdet_name_to_detectron2(name: str) -> str:
    """``layer1.0.bn2.weight`` → ``res2.0.conv2.norm.weight``; raises ``UnknownKeysError`` for non-ResNet names."""
    return _rename(name, to_detectron2=True)


def detectron2_name_to_resdet(name: str) -> str:
    """Inverse of ``resdet_name_to_detectron2``; also reads ``stem.fc.*``."""
    return _rename(name, to_detectron2=False)


def select_resnet_weights(state_dict: Mapping[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """For a detector checkpoint, keep the ResNet weights (prefixes removed) and return the dropped head keys.

    A checkpoint is a detector's when any key starts with ``backbone.``; RPN, box-head and FPN weights are then
    dropped on purpose. A backbone-only file is returned unchanged, so every unknown key in it stays an error.
    """
    if not any(k.startswith("backbone.") for k in state_dict):
        return dict(state_dict), []
    kept, dropped = {}, []
    for key, value in state_dict.items():
        for prefix, replacement in DETECTOR_PREFIXES:
            if key.startswith(prefix):
                stripped = replacement + key[len(prefix):]
                if _is_detectron2_resnet_name(stripped):
                    kept[stripped] = value
                    break
        else:
            dropped.append(key)
    return kept, dropped


def rename_keys(state_dict: Mapping[str, torch.Tensor], rename) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """``state_dict`` under ``rename(key)``, and the keys ``rename`` refused with ``UnknownKeysError``."""
    out, unknown = {}, []
    for key, value in state_dict.items():
        try:
            out[rename(key)] = value
        except UnknownKeysError:
            unknown.append(key)
    return out, unknown


def detectron2_to_resdet(state_dict: Mapping[str, torch.Tensor], source: str) -> Dict[str, torch.Tensor]:
    """Rename a detectron2 ResNet state dict to resdet names; every unknown key is listed in one error."""
    out, unknown = rename_keys(state_dict, detectron2_name_to_resdet)
    if unknown:
        raise UnknownKeysError(
            f"{source}: {len(unknown)} keys are not detectron2 ResNet names: {', '.join(sorted(unknown)[:20])}"
        )
    return out


def resdet_to_detectron2(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, np.ndarray]:
    """Rename to detectron2 names as float numpy arrays (the layout detectron2's checkpointer reads from ``.pkl``).

    ``num_batches_tracked`` counters are dropped: detectron2's default FrozenBN has none.
    """
    return {
        resdet_name_to_detectron2(k): v.detach().cpu().numpy()
        for k, v in state_dict.items()
        if not k.endswith("num_batches_tracked")
    }


def detectron2_config(meta: WeightsMeta) -> Dict[str, object]:
    """detectron2 config values that reproduce ``meta``'s input convention (detectron2 feeds 0-255 pixels)."""
    to_255 = 255.0 / meta.input_scale
    config = {
        "MODEL.PIXEL_MEAN": [round(m * to_255, 4) for m in meta.mean],
        "MODEL.PIXEL_STD": [round(s * to_255, 4) for s in meta.std],
        "INPUT.FORMAT": meta.pixel_format,
    }
    if meta.stride_in_1x1 is not None:
        config["MODEL.RESNETS.STRIDE_IN_1X1"] = meta.stride_in_1x1
    return config


def _is_detectron2_resnet_name(name: str) -> bool:
    try:
        detectron2_name_to_resdet(name)
        return True
    except UnknownKeysError:
        return False


def load_detectron2(path) -> Tuple[Dict[str, torch.Tensor], WeightsMeta]:
    """State dict (resdet names) and metadata of a detectron2 ``.pkl``/``.pth`` backbone or detector checkpoint.

    The pixel convention comes from resdet's embedded metadata when present, from ``__author__ == "torchvision"``
    (detectron2's torchvision converter: RGB, ImageNet mean/std, stride in the 3×3), and otherwise is detectron2's
    default for MSRA-initialised models: BGR, 0-255, mean subtraction only, stride in the 1×1.
    """
    path = Path(path)
    obj, _ = read_weights_file(path)
    raw = to_tensors(find_state_dict(obj, str(path)), str(path))
    backbone, dropped = select_resnet_weights(raw)
    try:
        state_dict = detectron2_to_resdet(backbone, str(path))
    except UnknownKeysError as e:
        raise UnknownKeysError(f"{e} (caffe2 names such as 'res2_0_branch2a_w' load with 'msra:{path}')") from None
    header = obj if isinstance(obj, Mapping) else {}
    if isinstance(header.get(META_KEY), Mapping):
        return state_dict, WeightsMeta.from_dict(dict(header[META_KEY]))
    source = f"detectron2:{path}"
    if header.get("__author__") == "torchvision":
        meta = WeightsMeta(source=source, pixel_format="RGB", input_scale=1.0, mean=IMAGENET_MEAN_RGB,
                           std=IMAGENET_STD_RGB, stride_in_1x1=False)
    else:
        meta = WeightsMeta(source=source, pixel_format="BGR", input_scale=255.0, mean=DETECTRON2_MEAN_BGR,
                           std=(1.0, 1.0, 1.0), stride_in_1x1=True)
    if dropped:
        meta.extra["dropped_detector_keys"] = len(dropped)
    return state_dict, meta
