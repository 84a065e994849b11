#!/usr/bin/env python
"""Measure resdet's speed against the machine's own limit and against reference implementations, in one process.

    python tools/benchmark.py --device cpu --json runs/benchmark.json          # full run (long on a small CPU)
    python tools/benchmark.py --quick --json /tmp/b.json                       # tiny inputs, few repeats (tests)
    python tools/benchmark.py --sections gemm inference --backbones resnet101 --repeats 5

Sections: (1) dense GEMM FLOP/s, fp32 and bf16 where supported — the practical limit; (2) detector inference
s/image at 600x1000, batch 1, with counted multiply-adds → FLOP/s and fraction of (1), baseline vs each
optimisation; (3) detector training s/iteration; (4) ResNet classification train/inference img/s at 224;
(5) detection data loading img/s vs a torchvision-reference pipeline; (6) COCO evaluation time, fast path vs
pycocotools with identical stats; optionally (7) the AP of a trained detector plain, optimised and in bf16
(--accuracy-weights); (8) "tools": the inference path the tools run (``build_inference_model``) beside the plain
model and detectron2's DefaultPredictor (when ``import detectron2`` works); opt-in, as they start processes: (9)
"loaded": the digits detector's training s/iteration quiet and beside one busy process, OpenMP defaults vs the
tools' thread policy; (10) "infer_tool": tools/infer.py images/s on a folder, end to end; (11) "train_tool":
tools/train_det.py s/iteration on a COCO-format folder; (12) "deploy": an exported detector under ONNX Runtime and
TorchScript beside the optimised path and the plain model, images/s and parity (--deploy-weights MODEL for a
trained detector; needs resdet[deploy]). Every comparison runs its variants interleaved (one call each per round) and
reports medians, so ratios hold even on a shared machine; the load average is recorded with each section.
"""
import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools._threads import OPENMP_DEFAULTS, set_threads  # noqa: E402  (first: OpenMP settings before torch)

import torch  # noqa: E402

from backbones.utils.atomic_io import atomic_write_text  # noqa: E402
from detection.benchmark.accuracy import measure_accuracy  # noqa: E402
from detection.benchmark.classification_speed import measure_classification  # noqa: E402
from detection.benchmark.coco_speed import measure_coco_eval  # noqa: E402
from detection.benchmark.deploy_speed import measure_deploy  # noqa: E402
from detection.benchmark.detector_speed import TEST_ROIS, measure_inference, measure_training  # noqa: E402
from detection.benchmark.gemm import gemm_probes, measure_gemm  # noqa: E402
from detection.benchmark.loader_speed import measure_loading  # noqa: E402
from detection.benchmark.report import markdown_tables, tools_tables  # noqa: E402
from detection.benchmark.loaded_speed import measure_loaded  # noqa: E402
from detection.benchmark.tools_speed import measure_infer_tool, measure_tool_inference, measure_train_tool  # noqa: E402
from detection.model.optimize import bf16_supported  # noqa: E402

SECTIONS = ("gemm", "inference", "training", "classification", "loading", "coco", "tools", "loaded", "infer_tool",
            "train_tool", "deploy")
DEFAULT_SECTIONS = SECTIONS[:7]  # the others start processes (and "loaded" a busy loop) or need extras: ask

FULL = {"repeats": 5, "gemm_sizes": [1024, 2048, 4096], "backbones": ["resnet50", "resnet101", "vgg16"],
        "det_size": [600, 1000], "rois": TEST_ROIS, "train_backbone": "resnet50", "train_images": 2,
        "train_overrides": [], "cls_arch": "resnet50", "cls_size": 224, "cls_batch": {"cpu": 32, "cuda": 256},
        "loader_images": 256, "loader_workers": [0, 2], "loader_batch": 2, "coco_images": 5000,
        "coco_dets": 100, "coco_repeats": 2, "tools_backbone": "resnet101", "tool_images": 4, "train_tool_images": 4,
        "train_tool_iters": 4, "loaded_steps": 5}
QUICK = {"repeats": 1, "gemm_sizes": [256], "backbones": ["resnet18"], "det_size": [64, 96], "rois": 8,
         "train_backbone": "resnet18", "train_images": 2,
         "train_overrides": ["model.roi_heads.batch_size_per_image=8", "model.rpn.post_nms_top_n_train=32",
                             "model.rpn.pre_nms_top_n_train=64"],
         "cls_arch": "resnet18", "cls_size": 32, "cls_batch": {"cpu": 2, "cuda": 2}, "loader_images": 4,
         "loader_workers": [0], "loader_batch": 2, "coco_images": 20, "coco_dets": 10, "coco_repeats": 1,
         "tools_backbone": "resnet18", "tool_images": 2, "train_tool_images": 2, "train_tool_iters": 3,
         "loaded_steps": 3}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--json", metavar="OUT", help="write the results here (JSON); printed to stdout otherwise")
    p.add_argument("--quick", action="store_true", help="tiny inputs and one repeat everywhere (the test suite)")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(DEFAULT_SECTIONS),
                   help=f"default: {' '.join(DEFAULT_SECTIONS)}")
    p.add_argument("--compile", action="store_true", help="also time a torch.compile variant (slow to compile)")
    p.add_argument("--no-bf16", action="store_true", help="skip bf16 variants even where supported")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads, also for the tools it starts (default: $OMP_NUM_THREADS or torch's choice; "
                        "--quick: 1, tiny ops only lose from threading)")
    p.add_argument("--tools-backbone", help="backbone of the tools sections (default resnet101)")
    p.add_argument("--repeats", type=int, help="rounds per comparison (default 5; --quick 1)")
    p.add_argument("--backbones", nargs="+", help="detector inference backbones (default resnet50 resnet101 vgg16)")
    p.add_argument("--det-size", nargs=2, type=int, metavar=("H", "W"), help="detector input (default 600 1000)")
    p.add_argument("--rois", type=int, help=f"RoIs per image at test time (default {TEST_ROIS})")
    p.add_argument("--cls-batch", type=int, help="classification batch (default 32 on CPU, 256 on CUDA)")
    p.add_argument("--loader-images", type=int, help="generated JPEGs per loading epoch (default 256)")
    p.add_argument("--loader-workers", nargs="+", type=int, help="DataLoader worker counts (default 0 2)")
    p.add_argument("--coco-images", type=int, help="images in the generated COCO case (default 5000)")
    p.add_argument("--coco-repeats", type=int, help="rounds for the COCO comparison (default 2)")
    p.add_argument("--accuracy-weights", metavar="MODEL",
                   help="a trained detector (model_final.pth): also score it plain, optimised and in bf16 (AP)")
    p.add_argument("--data-root", help="data root for --accuracy-weights (default: the one it was trained with)")
    p.add_argument("--accuracy-images", type=int, default=0, help="score only the first N test images")
    p.add_argument("--deploy-weights", metavar="MODEL",
                   help="deploy section: time this trained detector on generated images (default: a random-weight "
                        "tools-backbone detector at the benchmark size)")
    p.add_argument("--markdown", metavar="OUT", help="also write the tables as Markdown (docs/BENCHMARKS.md)")
    p.add_argument("--from-json", metavar="FILE", help="measure nothing: print the tables of an earlier --json")
    return p


def settings(args) -> dict:
    s = dict(QUICK if args.quick else FULL)
    for key, value in (("repeats", args.repeats), ("backbones", args.backbones), ("det_size", args.det_size),
                       ("rois", args.rois), ("loader_images", args.loader_images),
                       ("loader_workers", args.loader_workers), ("coco_images", args.coco_images),
                       ("coco_repeats", args.coco_repeats), ("tools_backbone", args.tools_backbone)):
        if value is not None:
            s[key] = value
    s["cls_batch"] = args.cls_batch or s["cls_batch"][args.device]
    return s


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(args, device: torch.device) -> dict:
    env = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
           "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "torch": torch.__version__,
           "python": platform.python_version(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "device": str(device), "quick": args.quick}
    try:
        import torchvision

        env["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["fp32_matmul"] = "IEEE fp32 (TF32 disabled)"
    return env


def load_average():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _g(flops) -> str:
    return f"{flops / 1e9:8.1f}"


def print_tables(results: dict) -> None:
    if "gemm" in results:
        print("\n(1) dense GEMM — the practical limit")
        for dtype, r in results["gemm"].items():
            if isinstance(r, dict) and "peak_flops" in r:
                print(f"  {dtype:5s} peak {_g(r['peak_flops'])} GFLOP/s  ({r['best']})")
    if "inference" in results:
        print("\n(2) detector inference, batch 1 (s/image, GFLOP/s, fraction of the GEMM limit, speed-up)")
        for name, r in results["inference"].items():
            print(f"  {name}: {r['multiply_adds'] / 1e9:.1f} G multiply-adds at {r['input_hw']}, "
                  f"RoIs/image {r['rois_per_image']}")
            for k, v in r["variants"].items():
                print(f"    {k:34s} {v['s_per_image']:8.3f} s {_g(v['flops_per_s'])} GFLOP/s "
                      f"{100 * v['fraction_of_gemm_peak']:5.1f}%  x{v['speedup_vs_baseline']:.2f}")
    if "training" in results:
        r = results["training"]
        print(f"\n(3) detector training {r['backbone']}, {r['images_per_iter']} images at {r['input_hw']} (s/iter)")
        for k, v in r["variants"].items():
            print(f"    {k:34s} {v['s_per_iter']:8.3f} s  x{v['speedup_vs_baseline']:.2f}")
    if "classification" in results:
        r = results["classification"]
        print(f"\n(4) {r['arch']} classification at {r['input_size']}, batch {r['batch']} (img/s)")
        for kind in ("train", "inference"):
            for k, v in r[kind].items():
                print(f"    {kind:9s} {k:44s} {v['img_per_s']:9.1f}  x{v['speedup_vs_baseline']:.2f}")
    if "loading" in results:
        r = results["loading"]
        print(f"\n(5) detection data loading, {r['num_images']} JPEGs, batch {r['batch']} (img/s, per core)")
        for n, pipelines in r["by_workers"].items():
            for k, v in pipelines.items():
                print(f"    {n} worker(s) {k:12s} {v['img_per_s']:8.1f} {v['img_per_s_per_core']:8.1f}  "
                      f"x{v['speedup_vs_reference']:.2f}")
    if "coco" in results:
        r = results["coco"]
        print(f"\n(6) COCO evaluation, {r['num_images']} images, {r['num_detections']} detections (s); "
              f"identical stats: {r['resdet_fast_identical_to_pycocotools']}")
        for k, v in r["evaluators"].items():
            print(f"    {k:18s} {v['s']:8.2f} s  x{v['speedup_vs_pycocotools']:.1f}  "
                  f"max |stat diff| {v['max_abs_stat_difference']:.2e}")
    tools = tools_tables(results)  # sections (8)-(11): the Markdown tables are readable as they are
    if tools:
        print("\n" + "\n".join(tools))
    if "accuracy" in results:
        r = results["accuracy"]
        print(f"\n(7) accuracy of the inference options: {r['backbone']} on {r['test_split']} ({r['num_images']} images)")
        for k, v in r["variants"].items():
            print(f"    {k:16s} AP {v['AP']:6.2f}  AP50 {v['AP50']:6.2f}  (AP {v['AP_delta_vs_fp32']:+.2f})  "
                  f"{v['wall_s']:7.1f} s")


def run(args) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device is available")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    threads = args.threads or (1 if args.quick else None)
    set_threads(threads)
    s = settings(args)
    bf16 = bf16_supported(device) and not args.no_bf16
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    results = {"environment": environment(args, device), "settings": s, "bf16_supported": bf16_supported(device),
               "load_average": {"start": load_average()}, "section_wall_s": {}}
    started = last = time.perf_counter()

    def done(section: str) -> None:
        nonlocal last
        results["load_average"][section] = load_average()
        results["section_wall_s"][section] = round(time.perf_counter() - last, 1)
        last = time.perf_counter()

    dtypes = ["fp32", "bf16"] if bf16 else ["fp32"]
    gemm = measure_gemm(device, dtypes, s["gemm_sizes"], max(s["repeats"], 2))
    results["gemm"] = gemm  # always measured: every FLOP/s figure is compared with it
    peaks = {d: gemm[d]["peak_flops"] for d in dtypes}
    probe = gemm_probes(device, gemm)
    done("gemm")
    if "inference" in args.sections:
        results["inference"] = measure_inference(s["backbones"], device, tuple(s["det_size"]), s["repeats"], peaks,
                                                 probe, bf16, args.compile, rois=s["rois"], log=log)
        done("inference")
    if "training" in args.sections:
        results["training"] = measure_training(s["train_backbone"], device, tuple(s["det_size"]), s["train_images"],
                                               s["repeats"], bf16, rois=s["rois"], overrides=s["train_overrides"],
                                               log=log)
        done("training")
    if "classification" in args.sections:
        results["classification"] = measure_classification(s["cls_arch"], device, s["cls_batch"], s["cls_size"],
                                                           s["repeats"], bf16, log=log)
        done("classification")
    if "loading" in args.sections:
        with tempfile.TemporaryDirectory(prefix="resdet-bench-") as folder:
            results["loading"] = measure_loading(Path(folder), s["loader_images"], s["loader_workers"],
                                                 s["loader_batch"], s["repeats"], device, log=log)
        done("loading")
    if "coco" in args.sections:
        results["coco"] = measure_coco_eval(s["coco_images"], s["coco_dets"], s["coco_repeats"], log=log)
        done("coco")
    if "tools" in args.sections:
        results["tools"] = measure_tool_inference(s["tools_backbone"], device, tuple(s["det_size"]), s["repeats"], bf16,
                                                  rois=s["rois"], log=log)
        done("tools")
    if "loaded" in args.sections:
        results["loaded"] = measure_loaded(OPENMP_DEFAULTS, s["loaded_steps"], log=log)
        done("loaded")
    with tempfile.TemporaryDirectory(prefix="resdet-bench-tools-") as folder:
        if "infer_tool" in args.sections:
            results["infer_tool"] = measure_infer_tool(Path(folder), s["tools_backbone"], tuple(s["det_size"]),
                                                       s["rois"], s["tool_images"], bf16, log=log)
            done("infer_tool")
        if "train_tool" in args.sections:
            results["train_tool"] = measure_train_tool(Path(folder), s["train_backbone"], tuple(s["det_size"]),
                                                       s["train_tool_images"], s["train_tool_iters"], bf16,
                                                       s["train_overrides"], log=log)
            done("train_tool")
    if "deploy" in args.sections:
        results["deploy"] = measure_deploy(device, s["repeats"], args.deploy_weights, s["tools_backbone"],
                                           tuple(s["det_size"]), s["rois"], log=log)
        done("deploy")
    if args.accuracy_weights:
        results["accuracy"] = measure_accuracy(args.accuracy_weights, device, args.data_root, args.accuracy_images,
                                               log=log)
        done("accuracy")
    results["wall_s"] = time.perf_counter() - started
    return results


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
    else:
        results = run(args)
    print_tables(results)
    if args.markdown:
        atomic_write_text(Path(args.markdown), markdown_tables(results) + "\n")
        print(f"\nwrote {args.markdown}")
    if args.from_json:
        return 0
    text = json.dumps(results, indent=1)
    if args.json:
        atomic_write_text(Path(args.json), text + "\n")
        print(f"\nwrote {args.json}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
