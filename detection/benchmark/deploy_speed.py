"""(12) "deploy": an exported detector under ONNX Runtime and ``torch.jit.load`` beside resdet's optimised path and
the plain model, images/s in one run (interleaved rounds), with each export's parity on the same images.

The detector is a trained file (``--deploy-weights``, timed on ``parity.generated_images``) or, without one, the
calibrated random-weight benchmark detector on one image of the benchmark size.
"""
from typing import List, Optional, Tuple

import torch

from detection.deploy import graph, parity
from detection.deploy.runtime import OnnxRuntimeDetector, TorchScriptDetector
from detection.model.io import load_detector

from .detector_speed import TEST_ROIS, build_benchmark_detector
from .timing import interleaved
from .tools_speed import tool_variants


def measure_deploy(device, repeats: int, weights: Optional[str] = None, backbone: str = "resnet50",
                   size: Tuple[int, int] = (600, 1000), rois: int = TEST_ROIS, log=print) -> dict:
    if torch.device(device).type != "cpu":
        raise ValueError("the deploy section runs on the CPU (ONNX Runtime's CPU provider)")
    if weights:
        model, _, _ = load_detector(weights)
        images: List[torch.Tensor] = parity.generated_images()
        source = str(weights)
    else:
        h, w = size
        images = [torch.rand(3, h, w, generator=torch.Generator().manual_seed(1))]
        model = build_benchmark_detector(backbone, images[0], 80, rois)
        source = f"random-weight {backbone} (calibrated BN)"
    log(f"[deploy] {source}: exporting to ONNX and TorchScript")
    variants = tool_variants(model, "cpu", bf16=False)
    variants["ONNX Runtime (CPU)"] = OnnxRuntimeDetector(graph.onnx_bytes(model, images[0]))
    variants["TorchScript (torch.jit.load)"] = TorchScriptDetector(graph.torchscript_bytes(model, images[0]))
    plain = variants["plain (--no-optimize)"]
    checks = {k: parity.compare(plain, variants[k], images) for k in ("ONNX Runtime (CPU)",
                                                                        "TorchScript (torch.jit.load)")}
    log(f"[deploy] timing {list(variants)} on {len(images)} image(s)")
    times = interleaved({k: (lambda v=v: [v([image]) for image in images]) for k, v in variants.items()}, repeats,
                        warmup=1)
    base = times["plain (--no-optimize)"]["median"]
    result = {"source": source, "backbone": model.backbone_name, "images": len(images),
              "image_sizes": [list(i.shape[-2:]) for i in images], "threads": torch.get_num_threads(),
              "min_size_test": model.transform.min_size[-1], "max_size_test": model.transform.max_size,
              "detections_per_image_plain": [len(plain([i])[0]["boxes"]) for i in images], "variants": {}}
    for k in variants:
        t = times[k]["median"]
        entry = {"images_per_s": len(images) / t, "s_per_image": t / len(images), "speedup_vs_plain": base / t,
                 "timing": times[k]}
        if k in checks:
            entry["parity_matched_fraction"] = checks[k]["matched_fraction"]
            entry["parity_detections"] = checks[k]["reference_detections"]
        result["variants"][k] = entry
    return result
