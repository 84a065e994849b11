#!/usr/bin/env python
"""Render a run's report, or the backbone-swap study of several runs.

  python tools/report.py runs/voc0712_resnet101 -o reports/resnet101
  python tools/report.py runs/voc0712_vgg16 runs/voc0712_resnet101 -o reports/study [--baseline vgg16]
  python tools/report.py --study runs/demo/study.json -o runs/demo/report     (a tools/study.py study: arms, seeds)

Writes OUT/report.md, OUT/report.html (self-contained: figures embedded, opens without a server) and the PNGs.
See docs/EVALUATION.md for what is read from each run folder.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detection.reports import build_report, build_study_report  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="*", help="run folder(s) (config.yaml, metrics.jsonl, final.json, eval/)")
    parser.add_argument("-o", "--output", required=True, help="folder for report.md, report.html and the PNGs")
    parser.add_argument("--baseline", help="study: run name or backbone the deltas are taken from "
                                           "(default: the vgg16 run, else the first)")
    parser.add_argument("--study", metavar="STUDY_JSON", help="a tools/study.py study's study.json: each arm's "
                        "mean ± spread over seeds and the study's comparisons (instead of run folders)")
    parser.add_argument("--score-threshold", type=float, default=0.5, help="sample grid: smallest score drawn")
    return parser


def main(args) -> int:
    if bool(args.study) == bool(args.run_dirs):
        raise ValueError("give run folders or --study STUDY_JSON (one of the two)")
    if args.study:
        md, html = build_study_report(args.study, args.output, score_threshold=args.score_threshold)
    else:
        md, html = build_report(args.run_dirs, args.output, baseline=args.baseline,
                                score_threshold=args.score_threshold)
    print(f"wrote {md}\nwrote {html}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(get_args_parser().parse_args()))
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
