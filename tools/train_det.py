#!/usr/bin/env python
"""Train Faster R-CNN (C4) with a registered backbone on VOC, COCO, any COCO-format JSON, or the digits set.

    # The paper's COCO experiment (ResNet-101 C4, 8 images per batch, 240k + 80k iterations), 8 GPUs:
    torchrun --nproc_per_node 8 tools/train_det.py --dataset coco --weights torchvision --data-root /data
    # See the resolved config of a command without running it (no data needed):
    tools/train_det.py --dataset coco --print-config
    # VOC 07+12: ResNet-101 by default; --backbone vgg16 gives the VGG-16 baseline (RoIPool 7x7 -> fc6/fc7):
    tools/train_det.py --dataset voc0712 --backbone vgg16 --weights torchvision --data-root /data
    # Any COCO-format dataset:
    tools/train_det.py --dataset coco_json --ann train.json --images imgs/ --val-ann val.json --val-images imgs/ \\
        --backbone resnet50 --weights torchvision
    # CPU: pretrain -> detect on the generated digits set (see docs/DETECTION.md):
    tools/train_det.py --dataset digits --backbone resnet20 --weights runs/pretrain/digits_resnet20/model_final.pth

Without --backbone, the dataset's headline backbone of the paper is used (listed at the end). Without --config, configs/detection/<dataset>_<backbone>.yaml (or
<dataset>_base.yaml) is used. Precedence: defaults <- config file <- flags <- trailing key=value overrides (e.g.
solver.max_iter=1000 model.roi_heads.pooler=pool).
"""
import argparse
import json
import sys
from pickle import UnpicklingError
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools._threads import add_threads_argument, set_threads  # noqa: E402  (first: OpenMP settings before torch)
from backbones.utils.checkpoint import CheckpointError  # noqa: E402
from backbones.utils.config import ConfigError, load_config, override_value, resolved_config_text  # noqa: E402
from backbones.utils.numerics import NonFiniteError  # noqa: E402
from backbones.weights.keys import WeightsMismatchError  # noqa: E402
from backbones.weights.weight_files import WeightsFileError  # noqa: E402
from detection.config import DATASETS, DEFAULTS, as_override, load_det_config  # noqa: E402
from detection.data import DataError  # noqa: E402
from detection.engine.trainer import DetectionTrainer, RunFolderError  # noqa: E402
from detection.model.init_detector import architecture_overrides, check_conventions  # noqa: E402
from detection.paper_setups import DEFAULT_BACKBONES, default_backbone, default_config_path  # noqa: E402
from detection.model.inference import add_inference_arguments, inference_overrides  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    defaults = ", ".join(f"{d}: {b}" for d, b in DEFAULT_BACKBONES.items())
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=f"default backbones: {defaults}; coco_json: {DEFAULTS['model']['backbone']}")
    parser.add_argument("--dataset", choices=DATASETS, help="sets data.dataset")
    parser.add_argument("--backbone", help="registered backbone name (sets model.backbone; default: the paper's "
                                           "backbone for the dataset)")
    parser.add_argument("--weights", help="backbone weights source: torchvision[:TAG], timm:..., msra:FILE, "
                                          "detectron2:FILE or a tools/pretrain.py checkpoint (sets model.weights)")
    parser.add_argument("--config", help="YAML config (default: configs/detection/<dataset>_<backbone>.yaml)")
    parser.add_argument("--output-dir", help="run folder (default: runs/detection/<dataset>_<backbone>)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest good checkpoint")
    parser.add_argument("--data-root", help="dataset root (sets data.root; default $RESDET_DATASETS or ./datasets)")
    parser.add_argument("--ann", help="coco_json: training annotation file (sets data.ann_file)")
    parser.add_argument("--images", help="coco_json: training image folder (sets data.image_dir)")
    parser.add_argument("--val-ann", help="coco_json: evaluation annotation file (sets data.test_ann_file)")
    parser.add_argument("--val-images", help="coco_json: evaluation image folder (sets data.test_image_dir)")
    parser.add_argument("--init-detector", metavar="FILE",
                        help="start from a resdet detector file (trunk, RPN, head; its architecture is taken, the "
                             "class predictor re-initialised when the classes differ), e.g. a converted COCO model")
    parser.add_argument("--stop-after", type=int, help="stop with a checkpoint after this many iterations")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as YAML and exit (reads no data, writes no run folder)")
    add_inference_arguments(parser)  # for the evaluations during and after training
    add_threads_argument(parser)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. solver.base_lr=0.01")
    return parser


def setup(args):
    """The resolved config and the file it was read from (None: defaults only)."""
    flags = ((args.dataset, "data.dataset"), (args.backbone, "model.backbone"), (args.weights, "model.weights"),
             (args.data_root, "data.root"), (args.ann, "data.ann_file"), (args.images, "data.image_dir"),
             (args.val_ann, "data.test_ann_file"), (args.val_images, "data.test_image_dir"))
    # Flags are applied as overrides (so their types are checked too), before the trailing ones, which win.
    overrides = [as_override(key, value) for value, key in flags if value]
    overrides += [*inference_overrides(args.no_optimize, args.precision), *args.overrides]
    # The --init-detector architecture first: explicit flags and key=value still win.
    init = architecture_overrides(args.init_detector) if args.init_detector else []
    overrides = init + overrides
    config = args.config
    if config is None:
        dataset = override_value(overrides, "data.dataset", DEFAULTS["data"]["dataset"])
        backbone = override_value(overrides, "model.backbone")
        if not backbone and default_backbone(dataset):
            backbone = default_backbone(dataset)
            overrides.insert(0, as_override("model.backbone", backbone))
        config = default_config_path(dataset, backbone or DEFAULTS["model"]["backbone"])
    cfg = load_det_config(str(config) if config else None, overrides)
    if init:
        # what the config and the user ask for, before the file's architecture keys
        asked = load_config(DEFAULTS, str(config) if config else None, [o for o in overrides if o not in init])
        requested = asked.model.conventions
        warning = check_conventions(requested, cfg, args.init_detector)
        if warning:
            print(f"[resdet] warning: {warning}", file=sys.stderr)
    return cfg, config


def main(args) -> int:
    try:
        set_threads(args.threads)
        cfg, config = setup(args)
        if args.print_config:
            print(resolved_config_text(cfg, "tools/train_det.py", config), end="")
            return 0
        output_dir = args.output_dir or f"runs/detection/{cfg.data.dataset}_{cfg.model.backbone}"
        result = DetectionTrainer(cfg, output_dir, resume=args.resume, stop_after=args.stop_after).run()
        if "stopped_at" in result:
            print(json.dumps(result))
        return 0
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except (DataError, OSError, RunFolderError, CheckpointError, WeightsMismatchError, WeightsFileError,
            UnpicklingError, NonFiniteError, ValueError, KeyError) as e:  # OSError covers a full disk mid-run
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
