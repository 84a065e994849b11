"""Planning figures for a real run, measured on the CPU: multiply-adds per training image and activation memory
per image (fp32 and bf16 autocast), turned into GPU memory and hours for a schedule at an assumed throughput.

One training step (forward, losses, backward) of a C4 detector with the paper's settings (128 sampled RoIs per
image, 2000 proposals, stem + res2 frozen, frozen BN) on one image of the given size:

- multiply-adds: ``torch.utils.flop_counter.FlopCounterMode`` over forward + backward (convolutions and matrix
  products; NMS, RoIAlign and elementwise work are not counted), halved;
- activation memory: bytes of the tensors autograd saves for backward during the forward
  (``torch.autograd.graph.saved_tensors_hooks``, each storage counted once; tensors shaped like a parameter —
  the weights themselves, their bf16 casts, BN-fused weights — are per step, not per image, and left out) — what
  a GPU must hold per image between forward and backward. The model runs as training runs it
  (``prepare_for_training``: BN fused into the convolutions, channels_last, low-precision guards). Weights,
  gradients, momentum and autocast's bf16 weight copies are counted apart
  (``fixed_bytes``); allocator slack and cuDNN workspaces are not (budget ~20%).

The random-weight detector has its BN statistics calibrated as in ``detection.benchmark.detector_speed`` so the
RPN proposes full sets of boxes and the head sees its 128 RoIs, as in training.
"""
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
from torch.utils.flop_counter import FlopCounterMode

from detection.benchmark.detector_speed import build_benchmark_detector, random_boxes
from detection.model.optimize import prepare_for_training

PAPER_TRAIN = ["model.anchor_sizes=[64,128,256,512]"]  # COCO anchors (4 scales); other settings are the defaults


class SavedTensorBytes:
    """Context manager: bytes of distinct storages autograd saves for backward inside it, leaving out
    ``parameters`` (their storages, and any tensor shaped like one)."""

    def __init__(self, parameters=()):
        self.bytes = 0
        self._seen = set()
        parameters = list(parameters)
        self._skip_shapes = {tuple(p.shape) for p in parameters}
        self._skip_storages = {p.untyped_storage().data_ptr() for p in parameters}

    def _pack(self, tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        if tuple(tensor.shape) in self._skip_shapes or storage.data_ptr() in self._skip_storages:
            return tensor  # a weight (or a view, cast or BN-fused copy of one): per step, not per image
        if key not in self._seen and storage.data_ptr() != 0:
            self._seen.add(key)
            self.bytes += storage.nbytes()
        return tensor

    def __enter__(self):
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)


def training_step_figures(backbone: str, size: Tuple[int, int], bf16: bool, count_flops: bool = True,
                          overrides: Sequence[str] = (), num_classes: int = 80, seed: int = 0) -> Dict[str, float]:
    """One image of ``size`` (H, W) through a training step; returns multiply-adds (if counted), activation bytes
    and the fixed per-GPU bytes (weights, gradients, momentum, bf16 weight copies)."""
    h, w = size
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(3, h, w, generator=gen)
    sizes = [f"input.min_size_train=[{min(h, w)}]", f"input.max_size_train={max(h, w)}"]
    model = build_benchmark_detector(backbone, image, num_classes, overrides=[*PAPER_TRAIN, *sizes, *overrides])
    prepare_for_training(model)
    model.train()
    target = {"boxes": random_boxes(gen, 7, h, w, min_side=32),  # COCO's mean of ~7 objects per image
              "labels": torch.randint(1, num_classes + 1, (7,), generator=gen)}
    counter = FlopCounterMode(display=False) if count_flops else None
    torch.manual_seed(seed)
    with SavedTensorBytes(model.parameters()) as saved:
        if counter is not None:
            counter.__enter__()
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                losses = model([image], [target])
            activation = saved.bytes
            sum(losses.values()).backward()
        finally:
            if counter is not None:
                counter.__exit__(None, None, None)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    fixed = 4 * total + 8 * trainable + (2 * total if bf16 else 0)  # weights; grads + momentum; bf16 copies
    out = {"activation_bytes": float(activation), "fixed_bytes": float(fixed), "parameters": float(total),
           "trainable_parameters": float(trainable)}
    if counter is not None:
        out["multiply_adds"] = counter.get_total_flops() / 2
    return out


@dataclass
class Schedule:
    name: str
    iterations: int
    images_per_iter: int
    gpus: int
    size: Tuple[int, int]


# The paper's schedules (paper_numbers.md §4; configs/detection/coco_base.yaml, voc0712_base.yaml) and detectron2's
# C4 1x for comparison with its published 8x V100 time.
SCHEDULES = [
    Schedule("COCO, paper: 240k + 80k it x 8 img (1/GPU)", 320000, 8, 8, (600, 1000)),
    Schedule("COCO, detectron2 1x length and size (paper RoIs): 90k it x 16 img (2/GPU)", 90000, 16, 8, (800, 1333)),
    Schedule("VOC 07+12, paper: 60k + 20k it x 1 img", 80000, 1, 1, (600, 1000)),
]

# Published speeds the assumption is calibrated on (reference/paper_numbers.md §7 and "Detection training speed"):
# detectron2 MODEL_ZOO Faster R-CNN R50-C4 1x on 8x V100 (fp32, PyTorch 1.3): 0.551 s/iter at 2 images/GPU of
# 800x1333 with 512 sampled RoIs per image; NVIDIA DeepLearningExamples ResNet-50 v1.5 training at 224x224:
# 367 img/s on a V100 in FP32, 2470 img/s on an A100 with AMP; 4.09 G multiply-adds per image forward.
D2_R50_C4 = {"seconds_per_iter": 0.551, "images_per_gpu": 2, "size": (800, 1333), "rois_per_image": 512}
RN50_CLASSIFICATION = {"v100_fp32_img_s": 367.0, "a100_amp_img_s": 2470.0, "multiply_adds": 4.09e9}
H100_OVER_A100 = 2.0  # assumed: bf16 dense peak is 3.2x, but a detector step (NMS, sampling, syncs) scales less


def calibrate(overrides: Sequence[str] = (), log=print) -> Dict[str, float]:
    """Achieved TFLOP/s to assume for a C4 training step on A100/H100, from published speeds.

    detectron2's R50-C4 step (its multiply-adds counted here, 512 RoIs per image) over its V100 time gives the
    rate a C4 detector achieves on a V100; divided by ResNet-50 classification's V100 rate, that is the detector's
    efficiency relative to classification. The A100 assumption applies that efficiency to ResNet-50's A100 AMP rate;
    H100 = ``H100_OVER_A100`` x A100.
    """
    d2 = D2_R50_C4
    log(f"[plan] calibration: detectron2 R50-C4 step at {d2['size'][0]}x{d2['size'][1]}, {d2['rois_per_image']} RoIs")
    mac = training_step_figures("resnet50", d2["size"], False, True,
                                [f"model.roi_heads.batch_size_per_image={d2['rois_per_image']}", *overrides]
                                )["multiply_adds"]
    v100_detector = 2 * mac * d2["images_per_gpu"] / d2["seconds_per_iter"] / 1e12
    cls = RN50_CLASSIFICATION
    per_image = 3 * 2 * cls["multiply_adds"]  # forward + backward = 3x forward
    v100_cls, a100_cls = cls["v100_fp32_img_s"] * per_image / 1e12, cls["a100_amp_img_s"] * per_image / 1e12
    efficiency = v100_detector / v100_cls
    return {"d2_multiply_adds_per_image": mac, "v100_detector_tflops": v100_detector,
            "v100_classification_tflops": v100_cls, "a100_classification_amp_tflops": a100_cls,
            "detector_over_classification": efficiency, "A100": efficiency * a100_cls,
            "H100": H100_OVER_A100 * efficiency * a100_cls}


GPUS = {"A100": {"peak_bf16_tflops": 312.0}, "H100": {"peak_bf16_tflops": 989.0}}


def plan(backbones: Sequence[str] = ("resnet50", "resnet101"),
         sizes: Sequence[Tuple[int, int]] = ((600, 1000), (800, 1333)), overrides: Sequence[str] = (),
         log=print) -> Dict[str, dict]:
    """Measured figures per backbone and size: {"resnet50@600x1000": {"multiply_adds", "fp32": {...}, "bf16": ...}}."""
    out = {}
    for backbone in backbones:
        for size in sizes:
            key = f"{backbone}@{size[0]}x{size[1]}"
            log(f"[plan] {key}: fp32 step (counting multiply-adds)")
            fp32 = training_step_figures(backbone, size, False, True, overrides)
            log(f"[plan] {key}: bf16 step")
            bf16 = training_step_figures(backbone, size, True, False, overrides)
            out[key] = {"backbone": backbone, "size": list(size), "multiply_adds_per_image": fp32["multiply_adds"],
                        "fp32": fp32, "bf16": bf16}
            log(f"[plan] {key}: {fp32['multiply_adds'] / 1e9:.0f} G multiply-adds per image; activations "
                f"{fp32['activation_bytes'] / 2 ** 30:.2f} GiB fp32, {bf16['activation_bytes'] / 2 ** 30:.2f} GiB bf16")
    return out


def schedule_rows(figures: Dict[str, dict], gpus: Dict[str, dict],
                  schedules: Sequence[Schedule] = SCHEDULES) -> List[dict]:
    """Hours and per-GPU memory of each schedule for each measured backbone at the schedule's size, for each of
    ``gpus`` ({name: {"assumed_tflops": achieved TFLOP/s per GPU}})."""
    rows = []
    for s in schedules:
        for key, f in figures.items():
            if tuple(f["size"]) != tuple(s.size):
                continue
            per_gpu = max(s.images_per_iter // s.gpus, 1)

            def memory(precision):
                return (f[precision]["fixed_bytes"] + per_gpu * f[precision]["activation_bytes"]) / 2 ** 30

            flops = 2 * f["multiply_adds_per_image"] * s.images_per_iter * s.iterations
            row = {"schedule": s.name, "backbone": f["backbone"], "size": f"{s.size[0]}x{s.size[1]}",
                   "gpus": s.gpus, "images_per_gpu": per_gpu, "total_pflop": flops / 1e15,
                   "memory_gib_per_gpu_bf16": memory("bf16"), "memory_gib_per_gpu_fp32": memory("fp32")}
            for name, g in gpus.items():
                row[f"hours_{name}"] = flops / (s.gpus * g["assumed_tflops"] * 1e12) / 3600
            rows.append(row)
    return rows


def markdown(figures: Dict[str, dict], rows: List[dict], gpus: Dict[str, dict]) -> str:
    lines = ["| backbone | input | G multiply-adds / training image | activations / image fp32 | bf16 | "
             "weights+grads+momentum (+bf16 copies) |", "|---|---|---:|---:|---:|---:|"]
    gib = 2 ** 30
    for f in figures.values():
        lines.append(f"| {f['backbone']} | {f['size'][0]}x{f['size'][1]} | {f['multiply_adds_per_image'] / 1e9:,.0f} | "
                     f"{f['fp32']['activation_bytes'] / gib:.2f} GiB | {f['bf16']['activation_bytes'] / gib:.2f} GiB | "
                     f"{f['fp32']['fixed_bytes'] / gib:.2f} GiB ({f['bf16']['fixed_bytes'] / gib:.2f} GiB) |")
    names = list(gpus)
    lines += ["", "| schedule | backbone | GPUs x img/GPU | PFLOP | GPU memory bf16 / fp32 | "
              + " | ".join(f"hours {n} @ {gpus[n]['assumed_tflops']:g} TFLOP/s" for n in names) + " |",
              "|---|---|---|---:|---:|" + "---:|" * len(names)]
    for r in rows:
        lines.append(f"| {r['schedule']} | {r['backbone']} | {r['gpus']} x {r['images_per_gpu']} | "
                     f"{r['total_pflop']:,.0f} | {r['memory_gib_per_gpu_bf16']:.1f} / "
                     f"{r['memory_gib_per_gpu_fp32']:.1f} GiB | "
                     + " | ".join(f"{r[f'hours_{n}']:.1f}" for n in names) + " |")
    return "\n".join(lines) + "\n"
