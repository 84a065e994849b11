#!/usr/bin/env python
"""Plot training (dashed) and validation (bold) top-1 error against iterations for several pretraining runs,
and print their final.json figures as a Markdown table.

    tools/plot_curves.py runs/digits/plain20 runs/digits/plain56 runs/digits/resnet20 runs/digits/resnet56 \\
        -o docs/figures/digits_degradation.png --title "digits, 16×16" --panels
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backbones.pretrain.curves import plot_error_curves, summary_table  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders holding metrics.jsonl (and final.json)")
    parser.add_argument("-o", "--output", required=True, help="image file to write (.png, .pdf, .svg)")
    parser.add_argument("--labels", nargs="+", help="legend labels, one per run (default: the arch)")
    parser.add_argument("--title", default="")
    parser.add_argument("--ymax", type=float, default=None, help="upper limit of the error axis")
    parser.add_argument("--panels", action="store_true",
                        help="one panel per architecture family (plain | resnet), as in the paper's Fig. 6")
    return parser


def main(args) -> int:
    try:
        path = plot_error_curves(args.runs, args.output, args.labels, args.title, args.ymax, args.panels)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(summary_table(args.runs))
    print(f"figure: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
