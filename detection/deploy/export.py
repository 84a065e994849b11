"""``export_detector``: a resdet detector file → one ONNX or TorchScript file plus its JSON, parity checked.

The exported file is written only when its detections match the plain model's (``parity``) on the check images
(by default ``parity.generated_images``), so a file that exists has passed; the figures are in its JSON.
"""
import hashlib
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from backbones.utils.atomic_io import atomic_write_bytes, atomic_write_json
from backbones.utils.checkpoint import load_checkpoint

from ..data.image_io import read_image
from ..model.inference import build_inference_model, inference_overrides
from ..model.io import load_detector
from . import parity as parity_check
from .contract import input_contract, pixels_to_input
from .graph import DEFAULT_OPSET, ExportError, check_exportable, onnx_bytes, torchscript_bytes
from .runtime import SIDECAR_FORMAT, OnnxRuntimeDetector, TorchScriptDetector, sidecar_path

FORMATS = ("onnx", "torchscript")
MAX_CHECK_PIXELS = 50_000_000


def _not_a_detector(path, err: ValueError) -> ExportError:
    """The loader's error, with what the file is instead when it can tell (a classifier, a bare state dict)."""
    try:
        state = load_checkpoint(path)
    except Exception:
        return ExportError(str(err))
    if state.get("format") == "resdet" or "model_kwargs" in state:
        what = "a classification (pretraining) checkpoint from tools/pretrain.py: a backbone, not a detector"
    elif state and all(isinstance(v, torch.Tensor) for v in state.values()):
        what = "a bare state dict (a classifier's or a backbone's weights), not a detector file"
    else:
        return ExportError(str(err))
    return ExportError(f"{path} is {what}. tools/export.py exports detector files (model_final.pth from "
                       f"tools/train_det.py, or tools/convert_weights.py --detector); train one with "
                       f"tools/train_det.py --weights {path}")


def load_check_images(paths: Sequence[Path], max_pixels: int = MAX_CHECK_PIXELS):
    return [pixels_to_input(read_image(Path(p), None, max_pixels, [], "raise")) for p in paths]


def export_detector(weights, fmt: str, output, check_images: Optional[Sequence[torch.Tensor]] = None,
                    overrides: Sequence[str] = (), opset: int = DEFAULT_OPSET,
                    min_matched: float = parity_check.MIN_MATCHED, check: bool = True,
                    log: Callable[[str], None] = print) -> dict:
    """Export ``weights`` as ``fmt`` to ``output`` (and ``output``.json); returns what the JSON holds.

    ``check_images``: [3, H, W] float inputs for the parity check (default: ``parity.generated_images()``);
    ``check=False`` skips it (the JSON then says so). Raises ``ExportError`` for a file that is not a detector,
    an option that is not exportable, a missing output folder, or failed parity.
    """
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    output = Path(output)
    if not output.parent.is_dir():
        raise ExportError(f"output folder {output.parent} does not exist (create it first)")
    if output.is_dir():
        raise ExportError(f"output {output} is a folder; give a file name such as {output / ('model.' + fmt)}")
    try:
        model, cfg, categories = load_detector(weights, [*overrides, *inference_overrides(True, None)])
    except ValueError as err:
        if "not a resdet detector" in str(err):
            raise _not_a_detector(weights, err) from None
        raise
    check_exportable(model, cfg, fmt, opset)
    images = list(check_images) if check_images else parity_check.generated_images()
    log(f"[export] {model.backbone_name} ({cfg.model.conventions} conventions, RoI {cfg.model.roi_heads.pooler}) "
        f"-> {fmt}, traced on a {list(images[0].shape)} image")
    if fmt == "onnx":
        data = onnx_bytes(model, images[0], opset)
        runner = OnnxRuntimeDetector(data)
    else:
        data = torchscript_bytes(model, images[0])
        runner = TorchScriptDetector(data)
    result = None
    if check:
        reference = build_inference_model(model, cfg, "cpu")  # test.optimize=false: tools/infer.py --no-optimize
        result = parity_check.compare(reference, runner, images, min_matched)
        log(f"[export] {parity_check.summary_line(result)}")
        if not result["passed"]:
            raise ExportError(f"parity check failed, nothing written: {parity_check.summary_line(result)}, below the "
                              f"required {100 * min_matched:.1f}%")
    meta = {
        "format": SIDECAR_FORMAT, "export_format": fmt, "file": output.name,
        "sha256": hashlib.sha256(data).hexdigest(), "source": str(weights), "backbone": model.backbone_name,
        "categories": categories, "input": input_contract(),
        "pixel_convention": {k: model.weights_meta.to_dict()[k] for k in ("pixel_format", "input_scale", "mean",
                                                                           "std")},
        "in_graph": {"conventions": cfg.model.conventions, "min_size_test": cfg.input.min_size_test,
                     "max_size_test": cfg.input.max_size_test, "size_divisible": cfg.input.size_divisible,
                     "pooler": cfg.model.roi_heads.pooler, "score_thresh": cfg.model.roi_heads.score_thresh,
                     "nms_thresh": cfg.model.roi_heads.nms_thresh,
                     "detections_per_img": cfg.model.roi_heads.detections_per_img,
                     "rpn_post_nms_top_n_test": cfg.model.rpn.post_nms_top_n_test},
        "overrides": list(overrides), "opset": opset if fmt == "onnx" else None,
        "versions": _versions(), "parity": result if check else "not checked (--no-check)",
    }
    atomic_write_bytes(output, data)
    atomic_write_json(sidecar_path(output), meta)
    log(f"[export] wrote {output} ({len(data) / 1e6:.1f} MB) and {sidecar_path(output)}")
    return meta


def _versions() -> dict:
    import torchvision

    out = {"torch": torch.__version__, "torchvision": torchvision.__version__}
    for name in ("onnx", "onnxruntime"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            pass
    return out
