"""The detector as one traceable module, what is exportable, and tracing it to ONNX or TorchScript bytes.

Both formats are made by tracing ``DeployableDetector`` on one example image. torchvision's detection code has
tracing paths (``torchvision._is_tracing()``) that keep image sizes as graph values, and
``detectron2_semantics`` has its own, so the traced graph takes any image size (tests/test_deploy.py runs sizes
other than the example's). ONNX uses the TorchScript-based exporter (``dynamo=False``): with torch 2.14 the dynamo
exporter stops at the data-dependent branch in torchvision's ``batched_nms`` (``GuardOnDataDependentSymNode``).
"""
import io
import warnings
from typing import Tuple

import torch
import torch.nn as nn

from ..model.detector import FasterRCNNC4
from ..model.pooler import SingleLevelRoIPooler
from .contract import INPUT_NAME, OUTPUT_NAMES

DEFAULT_OPSET = 17
MIN_OPSET = {"align": 16, "pool": 11}  # RoiAlign's coordinate modes (aligned) came in 16; NMS and MaxRoiPool in 11


class ExportError(ValueError):
    """A detector or an option that cannot be exported, or an export whose parity check failed."""


class DeployableDetector(nn.Module):
    """``FasterRCNNC4`` test path for one image: [3, H, W] float in [0, 1] → (boxes, scores, labels)."""

    def __init__(self, model: FasterRCNNC4):
        super().__init__()
        self.model = model
        self.eval()  # the exporter restores the wrapper's mode afterwards: it must be eval too

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model([image])[0]
        return out["boxes"], out["scores"], out["labels"]


def check_exportable(model: nn.Module, cfg, fmt: str, opset: int = DEFAULT_OPSET) -> None:
    """Raise ``ExportError`` naming the option when ``model`` (as ``cfg`` built it) cannot be exported as ``fmt``."""
    if not isinstance(model, FasterRCNNC4):
        raise ExportError(f"only resdet's C4 detectors (FasterRCNNC4) are exported, got {type(model).__name__}")
    if cfg.test.precision != "fp32":
        raise ExportError(f"test.precision={cfg.test.precision} is not exportable: exports are float32 "
                          f"(bf16 autocast is a run-time option of resdet's own path)")
    if cfg.test.multiscale != "none":
        raise ExportError(f"test.multiscale={cfg.test.multiscale} is not exportable (the pyramid's per-scale image "
                          f"sizes are Python numbers in the trace); export without it (box refinement, global "
                          f"context and test.flip export)")
    if not isinstance(model.roi_heads.box_roi_pool, SingleLevelRoIPooler):
        raise ExportError(f"the RoI pooler {type(model.roi_heads.box_roi_pool).__name__} is not exportable: export "
                          f"the plain model (test.optimize's CPU kernels are resdet run-time options)")
    kind = model.roi_heads.box_roi_pool.kind
    if fmt == "onnx" and opset < MIN_OPSET[kind]:
        raise ExportError(f"--opset {opset} is not exportable: model.roi_heads.pooler={kind} needs ONNX opset >= "
                          f"{MIN_OPSET[kind]}")


def _quiet_trace(fn):
    # Tracing warns about every Python-level size and constant in torchvision's code; the parity check is the test.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            return fn()


def onnx_bytes(model: FasterRCNNC4, example: torch.Tensor, opset: int = DEFAULT_OPSET) -> bytes:
    """The detector as an ONNX model (dynamic height, width and number of detections)."""
    buffer = io.BytesIO()
    dynamic = {INPUT_NAME: {1: "height", 2: "width"}, **{name: {0: "detections"} for name in OUTPUT_NAMES}}
    _quiet_trace(lambda: torch.onnx.export(DeployableDetector(model), (example,), buffer, dynamo=False,
                                           opset_version=opset, input_names=[INPUT_NAME],
                                           output_names=list(OUTPUT_NAMES), dynamic_axes=dynamic,
                                           do_constant_folding=True))
    return buffer.getvalue()


def torchscript_bytes(model: FasterRCNNC4, example: torch.Tensor) -> bytes:
    """The detector traced to TorchScript (``torch.jit.load`` needs ``import torchvision`` for its ops)."""
    traced = _quiet_trace(lambda: torch.jit.trace(DeployableDetector(model), (example,), check_trace=False))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.save is deprecated in favour of torch.export
        torch.jit.save(traced, buffer)
    return buffer.getvalue()
