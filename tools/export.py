#!/usr/bin/env python
"""Export a trained detector as one file, pixels in, boxes/scores/labels out (docs/DEPLOY.md).

    tools/export.py runs/detection/digits_resnet20/model_final.pth --format onnx -o model.onnx
    tools/export.py model_final.pth --format torchscript -o model.pt --check photos/
    tools/export.py model_final.pth --format onnx -o model.onnx model.roi_heads.score_thresh=0.3

Writes OUT and OUT.json (classes, pixel convention, input contract, parity figures). Before writing, the exported
model is run (ONNX Runtime on the CPU, or torch.jit.load) on the --check images (default: 4 generated digits
canvases) beside tools/infer.py --no-optimize; the export fails, writing nothing, when fewer than --min-matched of
the detections match (same class, IoU >= 0.99, score within 1e-3). Needs `pip install resdet[deploy]` for ONNX.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools._threads import add_threads_argument, set_threads  # noqa: E402  (first: OpenMP settings before torch)

from backbones.utils.checkpoint import CheckpointError  # noqa: E402
from backbones.utils.config import ConfigError  # noqa: E402
from detection.data import DataError  # noqa: E402
from detection.data.image_io import image_paths  # noqa: E402
from detection.deploy.export import FORMATS, export_detector, load_check_images  # noqa: E402
from detection.deploy.graph import DEFAULT_OPSET, ExportError  # noqa: E402
from detection.deploy.parity import MIN_MATCHED  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", help="trained detector (model_final.pth, or a converted detector file)")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("-o", "--output", required=True, help="exported file (its folder must exist)")
    parser.add_argument("--check", nargs="+", metavar="IMAGES",
                        help="images or folders for the parity check (default: 4 generated images)")
    parser.add_argument("--no-check", action="store_true", help="skip the parity check (the JSON says so)")
    parser.add_argument("--min-matched", type=float, default=MIN_MATCHED,
                        help=f"fraction of detections that must match (default {MIN_MATCHED})")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    add_threads_argument(parser)
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="inference settings baked into the export, e.g. model.roi_heads.score_thresh=0.3")
    return parser


def parse_args(argv=None):
    return get_args_parser().parse_intermixed_args(argv)  # key=value may follow the options


def main(args) -> int:
    try:
        set_threads(args.threads)
        if args.check and args.no_check:
            raise ExportError("--check and --no-check exclude each other")
        images = load_check_images(image_paths(args.check)) if args.check else None
        meta = export_detector(args.weights, args.format, args.output, images, args.overrides, args.opset,
                               args.min_matched, check=not args.no_check,
                               log=lambda msg: print(msg, file=sys.stderr, flush=True))
        parity = meta["parity"]
        print(f"{args.output}: {parity['matched_fraction'] * 100:.1f}% of {parity['reference_detections']} "
              f"detections matched" if isinstance(parity, dict) else f"{args.output}: {parity}")
        return 0
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except (ExportError, DataError, FileNotFoundError, CheckpointError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(parse_args()))
