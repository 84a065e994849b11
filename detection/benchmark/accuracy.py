"""What the inference options cost in accuracy: a trained detector scored plain, optimised fp32 and bf16.

Every variant runs over the same test split through the evaluation library (COCO-style AP from the evaluators the
training run uses), so the AP differences are the options' effect alone.
"""
import time
from typing import Dict, Optional

import torch

from detection.data import DataIssues, test_source
from detection.engine.evaluate import evaluate_model
from detection.model.io import load_detector
from detection.model.optimize import bf16_supported, optimize_detector


def measure_accuracy(weights: str, device="cpu", data_root: Optional[str] = None, max_images: int = 0,
                     log=print) -> Dict[str, object]:
    """AP / AP50 and inference wall time of each variant of the detector in ``weights`` on its test split."""
    device = torch.device(device)
    overrides = [f"data.root={data_root}"] if data_root else []
    model, cfg, _ = load_detector(weights, overrides)
    model.to(device).eval()
    source = test_source(cfg, DataIssues(cfg.data.on_error))
    if source is None:
        raise ValueError(f"{weights}: its config names no test split to score")
    variants = {"fp32": model, "fp32_optimized": optimize_detector(model)}
    if bf16_supported(device):
        variants["bf16_optimized"] = optimize_detector(model, bf16=True)
    out = {"weights": str(weights), "backbone": model.backbone_name, "test_split": source.name,
           "num_images": min(len(source.records), max_images) if max_images else len(source.records), "variants": {}}
    for name, variant in variants.items():
        log(f"[accuracy] {name} on {source.name}")
        start = time.perf_counter()
        metrics = evaluate_model(variant, source, device, max_images=max_images or cfg.test.max_images,
                                 max_image_pixels=cfg.data.max_image_pixels)
        bbox = metrics["bbox"]
        out["variants"][name] = {"AP": bbox["AP"], "AP50": bbox["AP50"], "AP75": bbox["AP75"],
                                 "wall_s": time.perf_counter() - start}
    base = out["variants"]["fp32"]
    for entry in out["variants"].values():
        entry["AP_delta_vs_fp32"] = entry["AP"] - base["AP"]
        entry["AP50_delta_vs_fp32"] = entry["AP50"] - base["AP50"]
    return out
