"""Detector inference and training speed for randomly initialised C4 detectors, with counted multiply-adds.

A randomly initialised ResNet with identity BN statistics is not a usable stand-in: every residual block doubles
the activation variance, ResNet-101's res4 overflows to inf and the RPN then proposes nothing, so the res5 head
would be timed on 0 RoIs. ``build_benchmark_detector`` therefore *calibrates* the BNs on the benchmark image (one
train-mode pass with momentum 1 sets the running statistics to that image's batch statistics, res3 onwards and the
res5 head; then all BNs are frozen as in fine-tuning), which keeps activations in the range of a trained network.
The RPN is still untrained, so its proposals are arbitrary boxes, but with the test setting (6000 boxes before NMS,
300 after) it returns exactly 300 of them per image: the head does the work of the test protocol. The number of
RoIs that reached the head is counted in every run and reported (``rois_per_image``). With random classifiers no
score passes the 0.05 threshold, so the per-class NMS of post-processing costs nothing here.
"""
import copy
from typing import Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from backbones.fuse_onednn import onednn_available
from backbones.norm import freeze_batchnorm
from detection.config import load_det_config
from detection.model import build_detector
from detection.model.optimize import keep_freed_memory, optimize_detector, prepare_for_training

from .timing import interleaved

TEST_ROIS = 300


def random_boxes(gen: torch.Generator, count: int, height: int, width: int, min_side: int = 16) -> torch.Tensor:
    """``count`` xyxy boxes inside an image, sides from ``min_side`` to half the image."""
    wh = torch.rand(count, 2, generator=gen) * torch.tensor([width / 2 - min_side, height / 2 - min_side]) + min_side
    xy = torch.rand(count, 2, generator=gen) * (torch.tensor([width, height]) - wh)
    return torch.cat([xy, xy + wh], dim=1)


@torch.no_grad()
def calibrate_batchnorm(model, image: torch.Tensor, seed: int = 0) -> None:
    """Set every trainable-stage BN's running statistics from one image, then freeze all BNs (see module doc)."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if not bns:
        return
    for bn in bns:
        bn.momentum = 1.0
    model.eval()
    images, _ = model.transform([image])
    model.backbone.train()
    features = model.backbone(images.tensors)
    model.backbone.eval()
    h, w = images.image_sizes[0]
    boxes = random_boxes(torch.Generator().manual_seed(seed), model.rpn.post_nms_top_n(), h, w).to(features.device)
    pooled = model.roi_heads.box_roi_pool({"0": features}, [boxes], images.image_sizes)
    model.roi_heads.box_head.train()
    model.roi_heads.box_head(pooled)
    model.roi_heads.box_head.eval()
    freeze_batchnorm(model.backbone)
    freeze_batchnorm(model.roi_heads.box_head)


def build_benchmark_detector(backbone: str, image: torch.Tensor, num_classes: int = 80, rois: int = TEST_ROIS,
                             seed: int = 0, overrides: Sequence[str] = ()):
    """Random-weight C4 detector with the paper's test settings and calibrated frozen BN, in eval mode.

    The test-time resize is set to ``image``'s own size (so small ``--quick`` inputs stay small) and the RPN keeps
    ``rois`` proposals per image.
    """
    torch.manual_seed(seed)
    h, w = image.shape[-2:]
    cfg = load_det_config(None, [f"model.backbone={backbone}", "model.norm=bn", f"input.min_size_test={min(h, w)}",
                                 f"input.max_size_test={max(h, w)}", f"model.rpn.post_nms_top_n_test={rois}",
                                 *overrides])
    model = build_detector(cfg, num_classes, weights=None)
    calibrate_batchnorm(model, image.cpu(), seed)  # built on the CPU; the caller moves it
    return model.eval()


class RoICounter:
    """Counts the RoIs entering the per-RoI head (a forward pre-hook)."""

    def __init__(self, model, counts: List[int]):
        self.counts = counts
        self.handle = model.roi_heads.box_head.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.counts.append(int(args[0].shape[0]))


def count_flops(fn: Callable[[], object]) -> float:
    """FLOPs (2 × multiply-adds) of convolutions and matrix products in one call (torch.utils.flop_counter)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


class _Plain:
    def __init__(self, model, context):
        self.model, self.context = model, context

    def __call__(self, images):
        with self.context():
            return self.model(images)


def inference_variants(model, bf16: bool, compile: bool) -> Dict[str, Callable]:
    """Baseline (eager fp32 NCHW under no_grad, what detectron2/torchvision evaluation loops do) and each option,
    added one at a time. ``onednn`` (fused oneDNN kernels), ``roi_align`` (``SeparableRoIAlign``) and
    ``keep_freed_memory`` (glibc allocator) exist on CPUs only; bf16 is added to the best fp32 variant."""
    device = next(model.parameters()).device
    variants = {
        "baseline": _Plain(model, torch.no_grad),
        "inference_mode": _Plain(model, torch.inference_mode),
        "fold_bn": optimize_detector(model, fold_bn=True, channels_last=False, onednn=False),
        "fold_bn+channels_last": optimize_detector(model, fold_bn=True, channels_last=True, onednn=False),
    }
    best = "fold_bn+channels_last"
    if device.type == "cpu" and onednn_available():
        variants["fold_bn+channels_last+onednn"] = optimize_detector(model, onednn=True, cpu_roi_align=False)
        best = "fold_bn+channels_last+onednn+roi_align"
        variants[best] = optimize_detector(model)
    if device.type == "cpu" and keep_freed_memory(False):
        variants[best + "+keep_freed_memory"] = _KeepFreedMemory(variants[best])
    if bf16:
        variants[best + "+bf16"] = optimize_detector(model, bf16=True)
    if compile:
        variants["fold_bn+channels_last+compile"] = optimize_detector(model, compile=True)
    if device.type == "cpu":  # every other variant runs with glibc's default allocator
        variants = {k: v if isinstance(v, _KeepFreedMemory) else _KeepFreedMemory(v, False)
                    for k, v in variants.items()}
    return variants


class _KeepFreedMemory:
    """Runs a variant with ``keep_freed_memory(keep)`` set for the call (a process-wide allocator setting)."""

    def __init__(self, variant, keep: bool = True):
        self.variant, self.keep, self.model = variant, keep, variant.model

    def __call__(self, images):
        keep_freed_memory(self.keep)
        try:
            return self.variant(images)
        finally:
            keep_freed_memory(False)


def measure_inference(backbones: Sequence[str], device, size: Tuple[int, int], repeats: int, peaks: Dict[str, float],
                      probe=None, bf16: bool = False, compile: bool = False, num_classes: int = 80,
                      rois: int = TEST_ROIS, log=print) -> Dict[str, dict]:
    """s/image (batch 1) of every variant of every backbone, with FLOP/s and fraction of the GEMM peak.

    ``peaks``: {"fp32": FLOP/s, "bf16": FLOP/s} from section (1). ``probe``: {dtype: (callable, FLOP)} of those
    GEMMs, timed in every round. ``fraction_of_gemm_peak`` divides by the larger of the two GEMM rates (section (1)
    may have run while the machine was busier or quieter); ``fraction_of_probe_gemm`` by the probe's alone.
    """
    device = torch.device(device)
    h, w = size
    image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(1)).to(device)
    out = {}
    for name in backbones:
        log(f"[detector inference] {name}: building and calibrating")
        model = build_benchmark_detector(name, image, num_classes, rois).to(device)
        with torch.no_grad():
            flops = count_flops(lambda: model([image]))
        variants = inference_variants(model, bf16, compile)
        roi_counts: List[int] = []
        for target in {id(v.model): v.model for v in variants.values()}.values():
            RoICounter(target, roi_counts)
        log(f"[detector inference] {name}: {flops / 2e9:.1f} G multiply-adds; timing {list(variants)}")
        fns = {k: (lambda v=v: v([image])) for k, v in variants.items()}
        probes = probe or {}
        times = interleaved(fns, repeats, warmup=1, device=device, probes={d: p[0] for d, p in probes.items()})
        probe_rates = {d: p[1] / times[f"_probe_{d}"]["median"] for d, p in probes.items()}
        base = times["baseline"]["median"]
        result = {"multiply_adds": flops / 2, "flops": flops, "input_hw": [h, w], "batch": 1,
                  "rois_per_image": sorted(set(roi_counts)), "variants": {}}
        for k in variants:
            t = times[k]["median"]
            dtype = "bf16" if "bf16" in k else "fp32"
            limit = max(peaks[dtype], probe_rates.get(dtype, 0.0))
            entry = {"s_per_image": t, "flops_per_s": flops / t, "fraction_of_gemm_peak": flops / t / limit,
                     "speedup_vs_baseline": base / t, "timing": times[k]}
            if dtype in probe_rates:
                entry["fraction_of_probe_gemm"] = flops / t / probe_rates[dtype]
            result["variants"][k] = entry
        result["probe_gemm_flops_per_s"] = probe_rates
        out[name] = result
        del model, variants
    return out


def _training_targets(gen: torch.Generator, count: int, h: int, w: int, device, num_classes: int):
    return [{"boxes": random_boxes(gen, 3, h, w, min_side=48).to(device),
             "labels": torch.randint(1, num_classes + 1, (3,), generator=gen).to(device)} for _ in range(count)]


class _TrainStep:
    def __init__(self, model, images, targets, autocast_bf16: bool):
        self.model, self.images, self.targets, self.bf16 = model.train(), images, targets, autocast_bf16
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9)
        self.device_type = images[0].device.type

    def __call__(self):
        torch.manual_seed(0)  # same RPN/RoI sampling in every variant and round
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.bf16):
            losses = self.model(self.images, self.targets)
        loss = sum(losses.values())
        loss.backward()
        self.optimizer.step()
        return loss.detach()


def measure_training(backbone: str, device, size: Tuple[int, int], images_per_iter: int, repeats: int,
                     bf16: bool = False, num_classes: int = 80, rois: int = TEST_ROIS,
                     overrides: Sequence[str] = (), log=print) -> dict:
    """s/iteration (forward, backward, SGD step) of the plain model and the training-safe options.

    ``overrides``: config ``key=value`` items (e.g. fewer sampled RoIs for a quick run); defaults are the paper's.
    """
    device = torch.device(device)
    h, w = size
    gen = torch.Generator().manual_seed(2)
    images = [torch.rand(3, h, w, generator=gen).to(device) for _ in range(images_per_iter)]
    targets = _training_targets(gen, images_per_iter, h, w, device, num_classes)
    log(f"[detector training] {backbone}: building and calibrating")
    model = build_benchmark_detector(backbone, images[0], num_classes, rois, overrides=overrides).to(device)
    steps = {"baseline": _TrainStep(copy.deepcopy(model), images, targets, False),
             "fused_bn": _TrainStep(prepare_for_training(copy.deepcopy(model), channels_last=False), images,
                                    targets, False),
             "fused_bn+channels_last": _TrainStep(prepare_for_training(copy.deepcopy(model)), images, targets, False)}
    if bf16:
        steps["fused_bn+channels_last+bf16"] = _TrainStep(prepare_for_training(copy.deepcopy(model)), images,
                                                          targets, True)
    log(f"[detector training] {backbone}: timing {list(steps)}")
    times = interleaved(steps, repeats, warmup=1, device=device)
    base = times["baseline"]["median"]
    return {"backbone": backbone, "images_per_iter": images_per_iter, "input_hw": [h, w],
            "rois_per_image": model.roi_heads.fg_bg_sampler.batch_size_per_image,
            "variants": {k: {"s_per_iter": times[k]["median"], "speedup_vs_baseline": base / times[k]["median"],
                             "timing": times[k]} for k in steps}}

