#!/usr/bin/env python
"""Convert classifier weights between torchvision, timm, detectron2, MSRA caffe2 and resdet files.

    python tools/convert_weights.py R-50.pkl r50_msra.pth --from msra --to resdet --arch resnet50
    python tools/convert_weights.py r50_msra.pth r50.pkl --from resdet --to detectron2 --arch resnet50
    # whole C4 Faster R-CNN detectors (docs/WEIGHTS.md):
    python tools/convert_weights.py model_final_721ade.pkl r50_c4_coco.pth --from detectron2 --to resdet \\
        --arch resnet50 --detector --classes coco
    python tools/convert_weights.py RUN/model_final.pth r50_c4.pkl --from resdet --to detectron2 --arch resnet50 --detector
    python tools/convert_weights.py IMAGENET1K_V2 r50_tv.safetensors --from torchvision --to safetensors --arch resnet50

SRC is a file, or for --from torchvision/timm a weights tag resolved through the hub caches (see docs/WEIGHTS.md).
The weights are loaded into the resdet model first, so every key and shape is checked, and the pixel convention
travels into the output.
"""
import argparse
import os
import pickle
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backbones.registry import build_backbone, list_backbones  # noqa: E402
from backbones.weights.detectron2_format import detectron2_config  # noqa: E402
from backbones.weights.export import EXPORT_FORMATS, export_weights  # noqa: E402
from backbones.weights.sources import KINDS  # noqa: E402


def source_string(kind: str, src: str, arch: str) -> str:
    """The ``weights=`` string for SRC given with ``--from kind``."""
    if kind in ("torchvision", "timm"):
        if os.path.isfile(src):
            # A bare file: torchvision's DEFAULT / timm's default tag supply the metadata.
            return f"torchvision={src}" if kind == "torchvision" else f"timm:{arch}={src}"
        return f"{kind}:{src}"
    return f"{kind}:{src}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="input file, or a torchvision/timm weights tag")
    parser.add_argument("dst", help="output file (.pkl for detectron2, .safetensors for safetensors)")
    parser.add_argument("--from", dest="src_format", required=True, choices=KINDS)
    parser.add_argument("--to", dest="dst_format", required=True, choices=EXPORT_FORMATS)
    parser.add_argument("--arch", required=True, choices=list_backbones(), metavar="NAME",
                        help="registered backbone name, e.g. resnet50")
    parser.add_argument("--detector", action="store_true",
                        help="convert a whole C4 Faster R-CNN (detectron2 <-> resdet detector file), not a backbone")
    parser.add_argument("--classes", help="--detector from detectron2: class list, 'coco', 'voc' or a file (one name "
                                          "per line, or a COCO-format JSON); detectron2 files carry none")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="--detector from detectron2: config overrides on top of detectron2's C4 settings")
    args = parser.parse_intermixed_args(argv)
    if args.detector:
        return convert_detector(args)
    if args.classes or args.overrides:
        parser.error("--classes and key=value overrides go with --detector")

    weights = source_string(args.src_format, args.src, args.arch)
    try:
        model = build_backbone(args.arch, weights=weights)
        path = export_weights(model, args.dst, args.dst_format)
    except (OSError, ValueError, KeyError, RuntimeError, pickle.UnpicklingError) as e:
        print(f"convert_weights: error: {e}", file=sys.stderr)
        return 1
    meta = model.weights_meta
    print(f"wrote {path} ({args.dst_format}) from {meta.source}: {meta.pixel_format}, input x{meta.input_scale:g}, "
          f"mean {list(meta.mean)}, std {list(meta.std)}, stride_in_1x1={meta.stride_in_1x1}, norm={meta.norm}")
    if args.dst_format == "detectron2":
        settings = " ".join(f"{k} {v!r}" if isinstance(v, str) else f"{k} {v}"
                            for k, v in detectron2_config(meta).items())
        print(f"detectron2 config for these weights: {settings}")
    return 0


def convert_detector(args) -> int:
    from backbones.utils.checkpoint import save_checkpoint
    from backbones.utils.config import ConfigError
    from detection.data.class_lists import class_list
    from detection.model.detectron2_detector import convert_detectron2_detector, export_detectron2_detector

    try:
        if (args.src_format, args.dst_format) == ("detectron2", "resdet"):
            categories = class_list(args.classes) if args.classes else None
            obj, summary = convert_detectron2_detector(args.src, args.arch, categories, args.overrides)
            save_checkpoint(obj, args.dst)
            print(f"wrote {args.dst} (resdet detector, {obj['config']['model']['conventions']} conventions): "
                  f"{summary['source_keys']} detectron2 keys, ResNet-{summary['depth']}, {summary['classes']} classes")
            return 0
        if (args.src_format, args.dst_format) == ("resdet", "detectron2"):
            if args.classes or args.overrides:
                print("convert_weights: error: --classes and key=value overrides go with --from detectron2 (a resdet "
                      "detector carries its classes and config)", file=sys.stderr)
                return 2
            pkl, yaml_path, summary = export_detectron2_detector(args.src, args.dst, args.arch)
            print(f"wrote {pkl} ({summary['keys']} keys, {summary['classes']} classes) and the detectron2 config "
                  f"overrides {yaml_path}" + (" (approximate: torchvision anchors)" if summary["approximate"] else ""))
            return 0
        print("convert_weights: error: --detector converts --from detectron2 --to resdet or --from resdet --to "
              "detectron2", file=sys.stderr)
        return 2
    except (OSError, ValueError, KeyError, RuntimeError, ConfigError, pickle.UnpicklingError) as e:
        print(f"convert_weights: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
