#!/usr/bin/env python
"""Rehearse a COCO-scale detection run on the CPU before paying for GPUs (docs/BENCHMARKS.md).

    tools/rehearse.py                     # COCO counts: 5,000 + 5,000 images, 2 processes, kill + resume (~30 min)
    tools/rehearse.py --quick -o /tmp/r   # tiny counts (the test suite)

Generates a COCO-format dataset with COCO's shape, runs tools/train_det.py on it under torchrun (gloo), kills it
after a checkpoint, resumes it, evaluates all validation images across the ranks and in one process, renders the
report, and checks: memory growth over training, identical evaluation with 1 and 2 processes, indexing and
evaluation time linear in the number of images, resume, a complete run folder. Writes OUTPUT/summary.json,
OUTPUT/summary.md (the docs/BENCHMARKS.md section) and OUTPUT/memory.jsonl; exits 1 when a check fails.
"""
import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detection.rehearsal.run import QUICK, Rehearsal, RehearsalError, RehearsalPlan  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output-dir", default="runs/rehearsal", help="rehearsal folder (default runs/rehearsal)")
    p.add_argument("--quick", action="store_true", help="tiny counts (tests): 48 + 40 images, 60 iterations")
    p.add_argument("--train-images", type=int, help="training images (default 5000)")
    p.add_argument("--val-images", type=int, help="validation images (default 5000)")
    p.add_argument("--iterations", type=int, help="training iterations (default 300)")
    p.add_argument("--nproc", type=int, help="training processes (default 2)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="extra train_det.py config overrides")
    return p


def main(args) -> int:
    plan = dataclasses.replace(QUICK if args.quick else RehearsalPlan())
    for name in ("train_images", "val_images", "iterations", "nproc"):
        if getattr(args, name) is not None:
            setattr(plan, name, getattr(args, name))
    plan.overrides = list(args.overrides)
    try:
        summary = Rehearsal(args.output_dir, plan).run()
    except RehearsalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print((Path(args.output_dir) / "summary.md").read_text())
    failed = [name for name, check in summary["checks"].items() if not check["passed"]]
    if failed:
        print(f"FAILED checks: {failed}; details in {Path(args.output_dir) / 'summary.json'}", file=sys.stderr)
        print(json.dumps({k: summary["checks"][k] for k in failed}, indent=1), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
