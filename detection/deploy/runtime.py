"""Running an exported detector: ONNX Runtime (CPU) or ``torch.jit.load``, behind the call tools/infer.py makes.

``load_exported(path)`` returns a ``net(images) -> [{"boxes", "scores", "labels"}]`` callable like
``build_inference_model``'s; every image is checked against the input contract first (``contract.check_image``).
The exported graph takes one image, so a list is run one image at a time.
"""
import hashlib
import io
import json
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np
import torch

from .contract import INPUT_NAME, check_image

RUNTIMES = {"onnxruntime": "onnx", "torchscript": "torchscript"}  # runtime → the format it runs
FORMAT_SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
SIDECAR_FORMAT = "resdet-export"


def sidecar_path(model_path) -> Path:
    """The JSON written beside an exported file: ``model.onnx`` → ``model.onnx.json``."""
    path = Path(model_path)
    return path.with_name(path.name + ".json")


def read_sidecar(model_path) -> dict:
    """The export's JSON (classes, pixel convention, input contract, parity figures), checked."""
    path = sidecar_path(model_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: it is written by tools/export.py beside {Path(model_path).name} "
                                f"and holds the classes")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not readable JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT or "categories" not in meta:
        raise ValueError(f"{path} is not a resdet export description (format {SIDECAR_FORMAT!r} with categories)")
    return meta


class _Runner:
    """List of images in, list of detection dicts out; one graph call per image."""

    def __call__(self, images: List[torch.Tensor]) -> List[Dict[str, torch.Tensor]]:
        return [self.run_one(check_image(image)) for image in images]

    def run_one(self, image: torch.Tensor) -> Dict[str, torch.Tensor]:
        raise NotImplementedError


class OnnxRuntimeDetector(_Runner):
    """An ONNX detector under ONNX Runtime's CPU provider, ``threads`` intra-op threads (default: torch's)."""

    def __init__(self, model: Union[str, Path, bytes], threads: Optional[int] = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ImportError("onnxruntime is not installed: pip install resdet[deploy]") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # warnings about unused initialisers are noise here
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])

    def run_one(self, image):
        boxes, scores, labels = self.session.run(None, {INPUT_NAME: np.ascontiguousarray(image.cpu().numpy())})
        return {"boxes": torch.from_numpy(boxes), "scores": torch.from_numpy(scores),
                "labels": torch.from_numpy(labels).long()}


class TorchScriptDetector(_Runner):
    """A traced TorchScript detector (``torch.jit.load``) on ``device``."""

    def __init__(self, model: Union[str, Path, bytes], device="cpu"):
        import warnings

        import torchvision  # noqa: F401  (registers torchvision::nms / roi_align for the loaded graph)

        self.device = torch.device(device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export
            source = io.BytesIO(model) if isinstance(model, bytes) else str(model)
            self.module = torch.jit.load(source, map_location=self.device).eval()

    def run_one(self, image):
        with torch.inference_mode():
            boxes, scores, labels = self.module(image.to(self.device))
        return {"boxes": boxes.cpu(), "scores": scores.cpu(), "labels": labels.cpu()}


def load_exported(path, runtime: str, device="cpu", threads: Optional[int] = None):
    """(callable like ``build_inference_model``'s, the export's JSON) for ``path`` run by ``runtime``."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported model {path} does not exist")
    meta = read_sidecar(path)
    fmt = meta.get("export_format")
    if fmt != RUNTIMES[runtime]:
        raise ValueError(f"{path} is a {fmt} export; --runtime {runtime} runs {RUNTIMES[runtime]} files")
    if meta.get("sha256") != hashlib.sha256(path.read_bytes()).hexdigest():
        raise ValueError(f"{path} does not match {sidecar_path(path).name} (sha256): the classes there may not be "
                         f"this model's; export again")
    if runtime == "onnxruntime":
        if torch.device(device).type != "cpu":
            raise ValueError(f"--runtime onnxruntime runs on the CPU (the onnxruntime package's provider), "
                             f"not {device}")
        return OnnxRuntimeDetector(path, threads), meta
    return TorchScriptDetector(path, device), meta
