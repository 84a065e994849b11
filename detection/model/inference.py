"""The detector every tool runs for inference (tools/infer.py, tools/eval_det.py, evaluation during training,
tools/study.py through them, and tools/benchmark.py's "tools" figures): ``build_inference_model``.

``test.optimize`` (default true; ``--no-optimize``) selects ``optimize_detector`` (BN folded into the convolutions,
channels_last, oneDNN kernels with fused ReLU/add, separable RoIAlign) over the plain model; its outputs match the
plain model's within float rounding (tests/test_optimize.py). ``test.precision`` (``fp32`` default, ``bf16``;
``--precision``) runs the dense layers in bf16 with box arithmetic kept in float32, where the device has native bf16
matrix math; elsewhere it falls back to fp32 with a warning.
"""
import sys
from typing import Tuple

import torch
import torch.nn as nn

from backbones.utils.config import Config

from .optimize import OptimizedDetector, add_low_precision_guards, bf16_supported, keep_freed_memory, optimize_detector

PRECISIONS = ("fp32", "bf16")


def resolve_precision(precision: str, device) -> str:
    """``precision`` if ``device`` supports it, else ``fp32`` (with a warning on stderr)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "bf16" and not bf16_supported(device):
        print(f"[resdet] bf16 requested but {torch.device(device)} has no native bf16 matrix math; running fp32",
              file=sys.stderr)
        return "fp32"
    return precision


def build_inference_model(model: nn.Module, cfg: Config, device, retain_memory: bool = False) -> nn.Module:
    """``model`` (a ``FasterRCNNC4``) on ``device``, ready for ``outputs = net(images)`` as ``cfg.test`` asks.

    Returns an inference-only module with float32 outputs; with ``test.optimize`` it is a copy (``model`` stays
    trainable), without it ``model`` itself is wrapped (in eval mode). ``retain_memory``: keep freed memory for reuse
    (``keep_freed_memory``; process-wide, so only for processes that do nothing but inference).
    """
    device = torch.device(device)
    model = model.to(device)
    bf16 = resolve_precision(cfg.test.precision, device) == "bf16"
    if not cfg.test.optimize:
        if bf16:
            add_low_precision_guards(model)
        return OptimizedDetector(model, bf16=bf16)  # the plain model under inference_mode (and autocast)
    if retain_memory and device.type == "cpu":
        keep_freed_memory(True)
    return optimize_detector(model, bf16=bf16)


def inference_overrides(no_optimize: bool, precision) -> Tuple[str, ...]:
    """Config overrides for the tools' ``--no-optimize`` and ``--precision`` flags."""
    overrides = ("test.optimize=false",) if no_optimize else ()
    return overrides + ((f"test.precision={precision}",) if precision else ())


def add_inference_arguments(parser) -> None:
    """``--no-optimize`` and ``--precision`` (they set ``test.optimize`` and ``test.precision``)."""
    parser.add_argument("--no-optimize", action="store_true",
                        help="run the plain model instead of the optimised one (sets test.optimize=false)")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="fp32 (default) or bf16 where the device supports it (sets test.precision)")
