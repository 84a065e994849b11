#!/usr/bin/env python
"""Planning figures for the paper's detection runs, computed on the CPU (docs/DETECTION.md, "Planning a GPU run").

    tools/plan_run.py --json runs/plan_run.json --markdown runs/plan_run.md      # R50/R101-C4, 600x1000 and 800x1333
    tools/plan_run.py --backbones resnet50 --sizes 600x1000 --a100-tflops 60      # other assumptions

Measures multiply-adds per training image (FlopCounterMode) and activation memory per image in fp32 and bf16
autocast for each backbone and size, then expected GPU memory per GPU and hours for the paper's schedules at an
assumed achieved TFLOP/s. Several minutes per backbone and size on one CPU core.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backbones.utils.atomic_io import atomic_write_json, atomic_write_text  # noqa: E402
from detection.rehearsal.planning import GPUS, markdown, plan, schedule_rows  # noqa: E402


def _size(text: str):
    h, w = text.lower().split("x")
    return int(h), int(w)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", nargs="+", default=["resnet50", "resnet101"])
    p.add_argument("--sizes", nargs="+", type=_size, default=[(600, 1000), (800, 1333)], help="HxW, e.g. 600x1000")
    p.add_argument("--a100-tflops", type=float, default=GPUS["A100"]["assumed_tflops"],
                   help="assumed achieved bf16 TFLOP/s per A100 for a C4 training step")
    p.add_argument("--h100-tflops", type=float, default=GPUS["H100"]["assumed_tflops"],
                   help="assumed achieved bf16 TFLOP/s per H100")
    p.add_argument("--json", help="write figures and rows here")
    p.add_argument("--markdown", help="write the tables here")
    p.add_argument("--from-json", help="measure nothing: recompute the tables from an earlier --json")
    return p


def main(args) -> int:
    gpus = {"A100": {**GPUS["A100"], "assumed_tflops": args.a100_tflops},
            "H100": {**GPUS["H100"], "assumed_tflops": args.h100_tflops}}
    if args.from_json:
        figures = json.loads(Path(args.from_json).read_text())["figures"]
    else:
        figures = plan(args.backbones, args.sizes, log=lambda m: print(m, file=sys.stderr, flush=True))
    rows = schedule_rows(figures, gpus=gpus)
    text = markdown(figures, rows, gpus)
    print(text)
    if args.json:
        atomic_write_json(args.json, {"figures": figures, "rows": rows, "gpus": gpus})
    if args.markdown:
        atomic_write_text(args.markdown, text)
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
