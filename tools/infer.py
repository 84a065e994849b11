#!/usr/bin/env python
"""Run a trained detector on images: detections as JSON and a PNG with the boxes drawn, one pair per image.

    tools/infer.py --weights runs/detection/digits_resnet20/model_final.pth --image a.jpg b.png -o out/
    tools/infer.py --weights model_final.pth --image photos/ --score-thresh 0.7
    tools/infer.py --weights model_final.pth --image photos/ --precision bf16      # bf16 where the CPU/GPU has it
    tools/infer.py --runtime onnxruntime model.onnx --image photos/ -o out/         # a tools/export.py file

Folders given to --image are searched (not recursively) for .jpg/.jpeg/.png/.bmp/.webp files; a .npy file is taken
as the model input itself, which must be a float32 [3, H, W] RGB array in [0, 1] (docs/DEPLOY.md). Images larger
than --max-pixels are refused (decompression bombs). Writes OUT/<name>.json and OUT/<name>.png, plus
OUT/detections.json with every image. --runtime torch (default) runs the optimised detector
(detection/model/inference.py; --no-optimize for the plain model), --batch-size images per forward pass;
--runtime onnxruntime / torchscript run an exported file (tools/export.py), whose classes come from the JSON beside
it and whose inference settings were fixed at export.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools._threads import add_threads_argument, set_threads  # noqa: E402  (first: OpenMP settings before torch)

import torch  # noqa: E402

from backbones.utils.atomic_io import atomic_open, atomic_write_json  # noqa: E402
from backbones.utils.checkpoint import CheckpointError  # noqa: E402
from backbones.utils.config import ConfigError  # noqa: E402
from backbones.utils.dist import resolve_device  # noqa: E402
from detection.data import DataError  # noqa: E402
from detection.data.image_io import IMAGE_SUFFIXES, image_paths, read_image  # noqa: E402
from detection.deploy.contract import check_image, input_to_pixels, pixels_to_input  # noqa: E402
from detection.deploy.runtime import RUNTIMES  # noqa: E402
from detection.engine.visualize import detections_to_list, draw_detections  # noqa: E402
from detection.model.inference import add_inference_arguments, build_inference_model, inference_overrides  # noqa: E402
from detection.model.io import load_detector  # noqa: E402

DEFAULT_MAX_PIXELS = 50_000_000


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", help="trained detector (model_final.pth from tools/train_det.py), or an "
                                           "exported file with --runtime; may also be given as the first positional")
    parser.add_argument("--runtime", default="torch", choices=("torch", *RUNTIMES),
                        help="torch (resdet's own path, default), or onnxruntime / torchscript for a tools/export.py "
                             "file")
    parser.add_argument("--image", nargs="+", required=True, help="image files or folders")
    parser.add_argument("-o", "--output-dir", default="inference", help="output folder (default: ./inference)")
    parser.add_argument("--score-thresh", type=float, default=0.5, help="keep detections scoring at least this")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help=f"refuse images with more pixels (default {DEFAULT_MAX_PIXELS})")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--batch-size", type=int, default=2, help="images per forward pass (default 2)")
    add_inference_arguments(parser)
    add_threads_argument(parser)
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. input.min_size_test=800 model.roi_heads.nms_thresh=0.5 "
                             "(--runtime torch only)")
    return parser


def split_model_argument(args):
    """(weights, overrides): the model may be --weights or the one positional item without '='."""
    positional = [item for item in args.overrides if "=" not in item]
    overrides = [item for item in args.overrides if "=" in item]
    if len(positional) > 1 or (positional and args.weights):
        raise ValueError(f"one model please: got {[args.weights, *positional] if args.weights else positional}")
    weights = args.weights or (positional[0] if positional else None)
    if weights is None:
        raise ValueError("no model given: --weights MODEL (or MODEL as the first positional argument)")
    return weights, overrides


def load_net(args, weights, overrides, device):
    """(net, categories) for --runtime: resdet's own inference model, or an exported file."""
    if args.runtime == "torch":
        model, cfg, categories = load_detector(weights, [*overrides, *inference_overrides(args.no_optimize,
                                                                                           args.precision)])
        return build_inference_model(model, cfg, device, retain_memory=True), categories
    from detection.deploy.parity import summary_line
    from detection.deploy.runtime import load_exported

    used = [flag for flag, on in (("--no-optimize", args.no_optimize), ("--precision", args.precision),
                                  ("key=value overrides", overrides)) if on]
    if used:
        raise ValueError(f"{', '.join(used)}: not for --runtime {args.runtime}; the exported file's inference "
                         f"settings were fixed by tools/export.py (export again with them)")
    net, meta = load_exported(weights, args.runtime, device, threads=args.threads)
    check = meta.get("parity")
    print(f"[resdet] {weights}: {meta['backbone']} exported from {meta['source']}; "
          + (summary_line(check) if isinstance(check, dict) else f"parity {check}"), file=sys.stderr)
    return net, meta["categories"]


def read_input(path: Path, max_pixels: int):
    """(model input, HxWx3 uint8 pixels) of an image file, or of a .npy array already in the input contract."""
    if path.suffix.lower() == ".npy":
        import numpy as np

        if not path.is_file():
            raise FileNotFoundError(f"image {path} does not exist")
        image = check_image(np.load(path, allow_pickle=False))
        return image, input_to_pixels(image)
    pixels = read_image(path, None, max_pixels, [], "raise")  # refuses bombs, corrupt and missing files
    return pixels_to_input(pixels), pixels


def output_names(paths):
    """Unique output stems: the file stem, with a counter where two inputs share one."""
    names, used = [], {}
    for p in paths:
        n = used.get(p.stem, 0)
        used[p.stem] = n + 1
        names.append(p.stem if n == 0 else f"{p.stem}_{n}")
    return names


def batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


@torch.no_grad()
def run(args) -> list:
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    set_threads(args.threads)
    weights, overrides = split_model_argument(args)
    device = resolve_device(args.device)
    net, categories = load_net(args, weights, overrides, device)
    out_dir = Path(args.output_dir)
    results = []
    paths = image_paths(args.image, (*IMAGE_SUFFIXES, ".npy"))
    for batch in batches(list(zip(paths, output_names(paths))), args.batch_size):
        inputs = [read_input(path, args.max_pixels) for path, _ in batch]
        pixels = [p for _, p in inputs]
        outputs = net([image.to(device) for image, _ in inputs])
        for (path, name), image_pixels, output in zip(batch, pixels, outputs):
            output = {k: v.cpu() for k, v in output.items()}
            dets = detections_to_list(output, categories, args.score_thresh)
            record = {"image": str(path), "width": int(image_pixels.shape[1]), "height": int(image_pixels.shape[0]),
                      "detections": dets}
            atomic_write_json(out_dir / f"{name}.json", record)
            with atomic_open(out_dir / f"{name}.png", "wb") as f:
                draw_detections(image_pixels, dets).save(f, format="PNG")
            results.append(record)
            print(f"{path}: {len(dets)} detection(s) -> {out_dir / (name + '.png')}", file=sys.stderr)
    atomic_write_json(out_dir / "detections.json", results)
    return results


def main(args) -> int:
    try:
        run(args)
        return 0
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except (DataError, FileNotFoundError, CheckpointError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
