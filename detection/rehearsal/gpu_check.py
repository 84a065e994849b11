"""The prepared check for a lent GPU (``tools/gpu_check.py``, ``make gpu-check``): a few minutes that answer whether
the real run will work and how fast it will go.

Sections: (1) AMP training steps (bf16 autocast, low-precision guards on, ``prepare_for_training``) of R50-C4 and
R101-C4 at 2 images per GPU, with counted multiply-adds → achieved TFLOP/s, and fp32 (TF32) steps beside them;
(2) detector inference images/s, fp32 and bf16 (``optimize_detector``); (3) ResNet-50 classification training
img/s, channels_last + bf16; (4) bf16 proposals and boxes against fp32 on the same weights. Peak memory per section.

Every device call goes through one ``Accelerator`` (``cuda_accelerator()`` is the only function touching
``torch.cuda``), so the whole logic runs on the CPU at tiny sizes in the tests (``cpu_accelerator()``).
"""
import copy
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.ops import box_iou

from backbones import build_backbone
from backbones.utils.precision import bf16_supported
from detection.benchmark.detector_speed import build_benchmark_detector, random_boxes
from detection.model.optimize import optimize_detector, prepare_for_training

from .planning import PAPER_TRAIN

PROPOSAL_IOU, BOX_IOU, MIN_MATCHED = 0.9, 0.9, 0.9


@dataclass
class Accelerator:
    name: str
    device: torch.device
    synchronize: Callable[[], None]
    reset_peak: Callable[[], None]
    peak_bytes: Callable[[], int]
    bf16: bool


def cuda_accelerator() -> Optional[Accelerator]:
    """The CUDA device (TF32 and cuDNN autotuning on, as a training run would set them), or None without CUDA."""
    if not torch.cuda.is_available():
        return None
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    device = torch.device("cuda", torch.cuda.current_device())
    return Accelerator(torch.cuda.get_device_name(device), device, lambda: torch.cuda.synchronize(device),
                       lambda: torch.cuda.reset_peak_memory_stats(device),
                       lambda: int(torch.cuda.max_memory_allocated(device)), bf16_supported(device))


def cpu_accelerator(bf16: Optional[bool] = None) -> Accelerator:
    """The same logic on the CPU (tests): no peak-memory counter (reported as 0). ``bf16`` defaults to whether this
    CPU has native bf16 math; ``bf16=True`` runs the bf16 sections anyway (emulated, slow) to test their logic."""
    bf16 = bf16_supported("cpu") if bf16 is None else bf16
    return Accelerator("cpu", torch.device("cpu"), lambda: None, lambda: None, lambda: 0, bf16)


FULL = {"backbones": ["resnet50", "resnet101"], "det_size": (600, 1000), "images_per_gpu": 2, "train_steps": 20,
        "infer_images": 30, "warmup": 3, "cls_arch": "resnet50", "cls_batch": 256, "cls_size": 224, "cls_steps": 20,
        "overrides": []}
TINY = {"backbones": ["resnet18"], "det_size": (64, 96), "images_per_gpu": 2, "train_steps": 1, "infer_images": 1,
        "warmup": 1, "cls_arch": "resnet18", "cls_batch": 2, "cls_size": 32, "cls_steps": 1,
        "overrides": ["model.roi_heads.batch_size_per_image=8", "model.rpn.post_nms_top_n_train=32",
                      "model.rpn.pre_nms_top_n_train=64", "model.anchor_sizes=[16,32]"]}


def _timed(acc: Accelerator, fn: Callable[[], object], steps: int, warmup: int) -> float:
    """Seconds per call after ``warmup`` calls, the device drained around the timed block."""
    for _ in range(warmup):
        fn()
    acc.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    acc.synchronize()
    return (time.perf_counter() - start) / steps


def _detector(backbone: str, plan: dict, image: torch.Tensor, extra: List[str] = ()):
    h, w = plan["det_size"]
    sizes = [f"input.min_size_train=[{min(h, w)}]", f"input.max_size_train={max(h, w)}"]
    return build_benchmark_detector(backbone, image, 80, overrides=[*PAPER_TRAIN, *sizes, *plan["overrides"], *extra])


def training_section(acc: Accelerator, plan: dict, log=print) -> Dict[str, dict]:
    h, w = plan["det_size"]
    gen = torch.Generator().manual_seed(0)
    n = plan["images_per_gpu"]
    images = [torch.rand(3, h, w, generator=gen) for _ in range(n)]
    targets = [{"boxes": random_boxes(gen, 7, h, w, min_side=min(16, h // 4)),
                "labels": torch.randint(1, 81, (7,), generator=gen)} for _ in range(n)]
    out = {}
    for backbone in plan["backbones"]:
        base = _detector(backbone, plan, images[0])
        dev_images = [im.to(acc.device) for im in images]
        dev_targets = [{k: v.to(acc.device) for k, v in t.items()} for t in targets]
        result = {}
        for precision in ("bf16", "fp32"):
            if precision == "bf16" and not acc.bf16:
                continue
            model = prepare_for_training(copy.deepcopy(base)).to(acc.device).train()
            optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)

            def step():
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(acc.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    losses = model(dev_images, dev_targets)
                loss = sum(v.float() for v in losses.values())
                loss.backward()
                optimizer.step()
                return loss

            with FlopCounterMode(display=False) as counter:
                loss = step()
            flops = counter.get_total_flops()
            acc.reset_peak()
            seconds = _timed(acc, step, plan["train_steps"], plan["warmup"])
            result[precision] = {"s_per_iter": seconds, "images_per_s": n / seconds,
                                 "multiply_adds_per_iter": flops / 2, "achieved_tflops": flops / seconds / 1e12,
                                 "peak_memory_gib": acc.peak_bytes() / 2 ** 30,
                                 "loss_finite": bool(torch.isfinite(loss).item())}
            log(f"[gpu-check] train {backbone} {precision}: {seconds:.3f} s/iter, {n / seconds:.1f} img/s, "
                f"{flops / seconds / 1e12:.1f} TFLOP/s, peak {acc.peak_bytes() / 2 ** 30:.2f} GiB")
            del model, optimizer
        out[backbone] = result
    return out


def inference_section(acc: Accelerator, plan: dict, log=print) -> Dict[str, dict]:
    h, w = plan["det_size"]
    image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(1))
    out = {}
    for backbone in plan["backbones"]:
        base = build_benchmark_detector(backbone, image, 80, overrides=plan["overrides"]).to(acc.device)
        dev_image = image.to(acc.device)
        result = {}
        for precision in ("fp32", "bf16"):
            if precision == "bf16" and not acc.bf16:
                continue
            model = optimize_detector(base, bf16=precision == "bf16") if acc.device.type == "cuda" else \
                optimize_detector(base, bf16=precision == "bf16", onednn=False, cpu_roi_align=False)
            acc.reset_peak()
            seconds = _timed(acc, lambda: model([dev_image]), plan["infer_images"], plan["warmup"])
            result[precision] = {"s_per_image": seconds, "images_per_s": 1 / seconds,
                                 "peak_memory_gib": acc.peak_bytes() / 2 ** 30}
            log(f"[gpu-check] inference {backbone} {precision}: {1 / seconds:.1f} img/s")
        out[backbone] = result
    return out


def classification_section(acc: Accelerator, plan: dict, log=print) -> dict:
    torch.manual_seed(0)
    model = build_backbone(plan["cls_arch"], stride_in_1x1=False).to(acc.device).train()
    model.to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(3)
    b, s = plan["cls_batch"], plan["cls_size"]
    images = torch.randn(b, 3, s, s, generator=gen).to(acc.device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (b,), generator=gen).to(acc.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    criterion = nn.CrossEntropyLoss()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(acc.device.type, dtype=torch.bfloat16, enabled=acc.bf16):
            loss = criterion(model(images), labels)
        loss.backward()
        optimizer.step()

    acc.reset_peak()
    seconds = _timed(acc, step, plan["cls_steps"], plan["warmup"])
    log(f"[gpu-check] classification {plan['cls_arch']} train channels_last+bf16: {b / seconds:.0f} img/s")
    return {"arch": plan["cls_arch"], "batch": b, "input_size": s, "bf16": acc.bf16, "channels_last": True,
            "img_per_s": b / seconds, "peak_memory_gib": acc.peak_bytes() / 2 ** 30}


def matched_fraction(reference: torch.Tensor, candidate: torch.Tensor, iou: float) -> Dict[str, float]:
    """Fraction of ``reference`` boxes with a ``candidate`` box at IoU >= ``iou``, and the mean absolute
    coordinate difference (pixels) of each reference box to its best candidate."""
    if len(reference) == 0:
        return {"matched": 1.0 if len(candidate) == 0 else 0.0, "mean_abs_px": 0.0, "count": 0}
    if len(candidate) == 0:
        return {"matched": 0.0, "mean_abs_px": float("inf"), "count": len(reference)}
    overlaps = box_iou(reference.double(), candidate.double())
    best, index = overlaps.max(dim=1)
    diff = (reference.double() - candidate.double()[index]).abs()
    return {"matched": float((best >= iou).double().mean()), "mean_abs_px": float(diff.mean()),
            "count": len(reference)}


def precision_section(acc: Accelerator, plan: dict, log=print) -> dict:
    """bf16 vs fp32 proposals and final boxes of the same weights on the same image (test settings; every
    detection kept, score threshold 0, so a random-weight model still returns its 100 boxes)."""
    h, w = plan["det_size"]
    image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(4))
    base = build_benchmark_detector(plan["backbones"][0], image, 80,
                                    overrides=[*plan["overrides"], "model.roi_heads.score_thresh=0.0"]).to(acc.device)
    captured = {}
    outputs = {}
    for precision in ("fp32", "bf16"):
        model = optimize_detector(base, bf16=precision == "bf16", onednn=False, cpu_roi_align=False)
        handle = model.model.rpn.register_forward_hook(
            lambda m, a, out, p=precision: captured.__setitem__(p, out[0][0].detach().float().cpu()))
        outputs[precision] = model([image.to(acc.device)])[0]
        handle.remove()
    proposals = matched_fraction(captured["fp32"], captured["bf16"], PROPOSAL_IOU)
    boxes = matched_fraction(outputs["fp32"]["boxes"].cpu(), outputs["bf16"]["boxes"].cpu(), BOX_IOU)
    passed = proposals["matched"] >= MIN_MATCHED and boxes["matched"] >= MIN_MATCHED
    log(f"[gpu-check] bf16 vs fp32: proposals matched {proposals['matched']:.3f}, boxes matched "
        f"{boxes['matched']:.3f} (IoU >= {PROPOSAL_IOU}); {'pass' if passed else 'FAIL'}")
    return {"proposals": proposals, "boxes": boxes, "iou": PROPOSAL_IOU, "min_matched": MIN_MATCHED,
            "passed": passed}


def run_gpu_check(acc: Accelerator, plan: dict = FULL, log=print) -> dict:
    start = time.time()
    result = {"device": acc.name, "bf16": acc.bf16, "plan": {k: list(v) if isinstance(v, tuple) else v
                                                             for k, v in plan.items()}}
    result["precision"] = precision_section(acc, plan, log)
    result["training"] = training_section(acc, plan, log)
    result["inference"] = inference_section(acc, plan, log)
    result["classification"] = classification_section(acc, plan, log)
    result["all_losses_finite"] = all(v["loss_finite"] for r in result["training"].values() for v in r.values())
    result["passed"] = result["precision"]["passed"] and result["all_losses_finite"]
    result["wall_s"] = round(time.time() - start, 1)
    return result


def table(result: dict) -> str:
    lines = [f"device: {result['device']}  (bf16: {result['bf16']}; wall {result['wall_s']} s)", "",
             "| what | precision | s/iter or s/image | images/s | TFLOP/s | peak GiB |",
             "|---|---|---:|---:|---:|---:|"]
    for backbone, r in result["training"].items():
        for precision, v in r.items():
            lines.append(f"| train {backbone}-C4, {result['plan']['images_per_gpu']} img/GPU | {precision} | "
                         f"{v['s_per_iter']:.4f} | {v['images_per_s']:.1f} | {v['achieved_tflops']:.1f} | "
                         f"{v['peak_memory_gib']:.2f} |")
    for backbone, r in result["inference"].items():
        for precision, v in r.items():
            lines.append(f"| inference {backbone}-C4 | {precision} | {v['s_per_image']:.4f} | {v['images_per_s']:.1f} "
                         f"| | {v['peak_memory_gib']:.2f} |")
    c = result["classification"]
    lines.append(f"| train {c['arch']} classification, batch {c['batch']} | channels_last+bf16 | "
                 f"{c['batch'] / c['img_per_s']:.4f} | {c['img_per_s']:.0f} | | {c['peak_memory_gib']:.2f} |")
    p = result["precision"]
    lines += ["", f"bf16 vs fp32 (same weights): proposals matched {p['proposals']['matched']:.3f}, boxes matched "
                  f"{p['boxes']['matched']:.3f} at IoU >= {p['iou']} (need {p['min_matched']}): "
                  f"{'pass' if p['passed'] else 'FAIL'}; losses finite: {result['all_losses_finite']}"]
    return "\n".join(lines)
