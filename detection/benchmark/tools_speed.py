"""The figures a user gets from the tools: their own inference path (``build_inference_model``, the function
tools/infer.py, tools/eval_det.py and evaluation during training call) beside the plain model and detectron2's
``DefaultPredictor`` (when importable), and tools/infer.py and tools/train_det.py run end to end as processes.
"""
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch

from detection.config import load_det_config
from detection.model.inference import build_inference_model
from detection.model.io import save_detector
from detection.model.optimize import keep_freed_memory

from . import detectron2_baseline
from .detector_speed import TEST_ROIS, RoICounter, _KeepFreedMemory, build_benchmark_detector
from .loader_speed import generate_jpegs
from .timing import interleaved

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "tools"


def tool_variants(model, device, bf16: bool) -> Dict[str, object]:
    """name → callable(images): the plain model (``--no-optimize``), the tools' default and ``--precision bf16``,
    each built by ``build_inference_model`` with the allocator setting the tools use."""
    variants = {"plain (--no-optimize)": build_inference_model(model, load_det_config(None, ["test.optimize=false"]),
                                                               device),
                "tools default (fp32)": build_inference_model(model, load_det_config(None, []), device)}
    if bf16:
        variants["tools --precision bf16"] = build_inference_model(
            model, load_det_config(None, ["test.precision=bf16"]), device)
    if torch.device(device).type == "cpu":  # infer.py / eval_det.py keep freed memory, except with --no-optimize
        variants = {k: _KeepFreedMemory(v, not k.startswith("plain")) for k, v in variants.items()}
    return variants


class _Detectron2:
    def __init__(self, predictor, image: torch.Tensor):
        self.predictor, self.model = predictor, predictor.model
        self.bgr = (image * 255).round().byte().permute(1, 2, 0).flip(-1).contiguous().cpu().numpy()

    def __call__(self, images=None):
        keep_freed_memory(False)  # detectron2 users get glibc's default allocator
        return self.predictor(self.bgr)


def measure_tool_inference(backbone: str, device, size: Tuple[int, int], repeats: int, bf16: bool,
                           rois: int = TEST_ROIS, log=print) -> dict:
    """s/image (batch 1) of the tools' inference paths and detectron2's ``DefaultPredictor``, interleaved."""
    device = torch.device(device)
    h, w = size
    image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(1)).to(device)
    log(f"[tools inference] {backbone}: building and calibrating")
    model = build_benchmark_detector(backbone, image, 80, rois).to(device)
    variants = tool_variants(model, device, bf16)
    ours: List[int] = []
    for v in variants.values():
        RoICounter(v.model, ours)
    theirs: List[int] = []
    predictor = detectron2_baseline.predictor(backbone, (h, w), rois, device, theirs)
    if predictor is not None:
        variants["detectron2 DefaultPredictor"] = _Detectron2(predictor, image)
    log(f"[tools inference] {backbone}: timing {list(variants)}")
    times = interleaved({k: (lambda v=v: v([image])) for k, v in variants.items()}, repeats, warmup=1, device=device)
    plain = times["plain (--no-optimize)"]["median"]
    d2 = times.get("detectron2 DefaultPredictor", {}).get("median")
    result = {"backbone": backbone, "input_hw": [h, w], "batch": 1, "rois_per_image": sorted(set(ours)),
              "detectron2_rois_per_image": sorted(set(theirs)), "variants": {}}
    for k in variants:
        t = times[k]["median"]
        entry = {"s_per_image": t, "speedup_vs_plain": plain / t, "timing": times[k]}
        if d2:
            entry["time_vs_detectron2"] = t / d2
        result["variants"][k] = entry
    return result


def write_detector_file(path: Path, backbone: str, size: Tuple[int, int], rois: int, num_classes: int = 3) -> Path:
    """A random calibrated detector (``build_benchmark_detector``) saved as tools/train_det.py saves one."""
    h, w = size
    image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(1))
    model = build_benchmark_detector(backbone, image, num_classes, rois)
    cfg = load_det_config(None, [f"model.backbone={backbone}", f"input.min_size_test={min(h, w)}",
                                 f"input.max_size_test={max(h, w)}", f"model.rpn.post_nms_top_n_test={rois}"])
    categories = [{"id": c, "name": f"class{c}"} for c in range(1, num_classes + 1)]
    return save_detector(path, model, cfg, categories)


def _run(command: Sequence[str], log) -> float:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *map(str, command)], cwd=str(REPO), capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command))} failed:\n{result.stderr[-2000:]}")
    return time.perf_counter() - start


def measure_infer_tool(work: Path, backbone: str, size: Tuple[int, int], rois: int, num_images: int, bf16: bool,
                       log=print) -> dict:
    """tools/infer.py on a folder of ``num_images`` JPEGs (COCO sizes, resized to ``size`` by the model), end to end
    (interpreter start, model load, decoding, drawing and writing included): images/s per flag set."""
    folder = work / "infer_images"
    generate_jpegs(folder, num_images)
    (folder / "instances.json").unlink()
    weights = write_detector_file(work / "infer_model.pth", backbone, size, rois)
    runs = {"tools default (fp32)": [], "--no-optimize": ["--no-optimize"]}
    if bf16:
        runs["--precision bf16"] = ["--precision", "bf16"]
    out = {"backbone": backbone, "num_images": num_images, "test_size": list(size), "runs": {}}
    for name, flags in runs.items():
        log(f"[tools/infer.py] {backbone}: {name}")
        wall = _run([TOOLS / "infer.py", "--weights", weights, "--image", folder, "-o", work / "infer_out", *flags],
                    log)
        out["runs"][name] = {"wall_s": wall, "images_per_s": num_images / wall}
    return out


def measure_train_tool(work: Path, backbone: str, size: Tuple[int, int], num_images: int, iters: int, bf16: bool,
                       overrides: Sequence[str] = (), log=print) -> dict:
    """tools/train_det.py on a generated COCO-format folder (``--dataset coco_json``), random init: median s/iteration
    of iterations 2..``iters`` from its metrics.jsonl (``time_per_iter``), with ``solver.amp=none`` and ``bf16``."""
    ann = generate_jpegs(work / "train_images", num_images)
    h, w = size
    runs = {"fp32 (solver.amp=none)": ["solver.amp=none"]}
    if bf16:
        runs["bf16 (solver.amp=bf16)"] = ["solver.amp=bf16"]
    out = {"backbone": backbone, "num_images": num_images, "train_size": [h, w], "iters": iters, "runs": {}}
    for name, amp in runs.items():
        log(f"[tools/train_det.py] {backbone}: {name}")
        run_dir = work / f"train_{amp[0].split('=')[1]}"
        wall = _run([TOOLS / "train_det.py", "--dataset", "coco_json", "--ann", ann, "--images", ann.parent,
                     "--backbone", backbone, "--output-dir", run_dir, "solver.ims_per_batch=2",
                     f"solver.max_iter={iters}", f"solver.steps=[{iters}]", "solver.log_period=1",
                     f"solver.checkpoint_period={iters}", f"input.min_size_train=[{min(h, w)}]",
                     f"input.max_size_train={max(h, w)}", "solver.nan_policy=skip", *amp, *overrides], log)
        lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        per_iter = [r["time_per_iter"] for r in lines if "time_per_iter" in r][1:]
        out["runs"][name] = {"s_per_iter": statistics.median(per_iter), "samples": per_iter, "wall_s": wall}
    return out
