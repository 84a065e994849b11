#!/usr/bin/env python
"""Run a backbone-swap study: pretrain → train_det → eval → report for several backbones; re-running resumes.

    python tools/study.py --config configs/study/digits.yaml
    python tools/study.py --config configs/study/digits_table7.yaml --dry-run
    python tools/study.py --config configs/study/digits.yaml output_dir=runs/mystudy

The study report (Markdown + HTML, with the paper's Tables 7/8 beside the measured deltas) is written to
<output_dir>/report/.
"""
import argparse
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools._threads import add_threads_argument, set_threads  # noqa: E402  (first: OpenMP settings before torch)

from backbones.utils.config import ConfigError  # noqa: E402
from detection.study import load_study, run_study  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="study YAML (see configs/study/)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    add_threads_argument(parser)  # passed on to every step (through OMP_NUM_THREADS)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="study-level overrides, e.g. output_dir=X")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    # `kill` of the study stops its running steps too (run_study terminates them on the way out).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        study = load_study(args.config, args.overrides)
        run_study(study, dry_run=args.dry_run)
    except (ConfigError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.dry_run:
        print(f"[study] report: {study.output_dir}/report/report.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
