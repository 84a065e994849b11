#!/usr/bin/env python
"""Planning figures for the paper's detection runs, computed on the CPU (docs/DETECTION.md, "Planning a GPU run").

    tools/plan_run.py --json runs/plan_run.json --markdown runs/plan_run.md      # R50/R101-C4, 600x1000 and 800x1333
    tools/plan_run.py --backbones resnet50 --sizes 600x1000 --a100-tflops 60      # other assumptions

Measures multiply-adds per training image (FlopCounterMode) and activation memory per image in fp32 and bf16
autocast for each backbone and size, then expected GPU memory per GPU and hours for the paper's schedules at an
achieved TFLOP/s. The default assumption is calibrated on published speeds (detection.rehearsal.planning.calibrate:
detectron2's R50-C4 V100 time against NVIDIA's ResNet-50 V100/A100 rates); make gpu-check measures the real one.
Several minutes per backbone and size on one CPU core; --from-json reuses earlier measurements.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backbones.utils.atomic_io import atomic_write_json, atomic_write_text  # noqa: E402
from detection.rehearsal.planning import GPUS, calibrate, markdown, plan, schedule_rows  # noqa: E402


def _size(text: str):
    h, w = text.lower().split("x")
    return int(h), int(w)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", nargs="+", default=["resnet50", "resnet101"])
    p.add_argument("--sizes", nargs="+", type=_size, default=[(600, 1000), (800, 1333)], help="HxW, e.g. 600x1000")
    p.add_argument("--a100-tflops", type=float,
                   help="achieved TFLOP/s per A100 for a C4 training step (default: calibrated, see --help)")
    p.add_argument("--h100-tflops", type=float, help="the same for an H100 (default: calibrated)")
    p.add_argument("--json", help="write figures and rows here")
    p.add_argument("--markdown", help="write the tables here")
    p.add_argument("--from-json", help="measure nothing: recompute the tables from an earlier --json")
    return p


def main(args) -> int:
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    earlier = json.loads(Path(args.from_json).read_text()) if args.from_json else {}
    figures = earlier.get("figures") or plan(args.backbones, args.sizes, log=log)
    calibration = earlier.get("calibration") or calibrate(log=log)
    gpus = {"A100": {**GPUS["A100"], "assumed_tflops": args.a100_tflops or round(calibration["A100"])},
            "H100": {**GPUS["H100"], "assumed_tflops": args.h100_tflops or round(calibration["H100"])}}
    rows = schedule_rows(figures, gpus=gpus)
    text = markdown(figures, rows, gpus)
    print(text)
    print("calibration: " + json.dumps({k: round(v, 3) for k, v in calibration.items()}))
    if args.json:
        atomic_write_json(args.json, {"figures": figures, "calibration": calibration, "rows": rows, "gpus": gpus})
    if args.markdown:
        atomic_write_text(args.markdown, text)
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
