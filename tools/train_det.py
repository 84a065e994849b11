#!/usr/bin/env python
"""Train Faster R-CNN (C4) with a registered backbone on VOC, COCO, any COCO-format JSON, or the digits set.

    # The paper's COCO experiment, ResNet-101, 8 GPUs:
    torchrun --nproc_per_node 8 tools/train_det.py --dataset coco --backbone resnet101 --weights torchvision
    # VOC 07+12 with VGG-16 (RoIPool 7x7 -> fc6/fc7), one GPU:
    tools/train_det.py --dataset voc0712 --backbone vgg16 --weights torchvision --data-root /data
    # Any COCO-format dataset:
    tools/train_det.py --dataset coco_json --ann train.json --images imgs/ --val-ann val.json --val-images imgs/ \\
        --backbone resnet50 --weights torchvision
    # CPU: pretrain -> detect on the generated digits set (see docs/DETECTION.md):
    tools/train_det.py --dataset digits --backbone resnet20 --weights runs/pretrain/digits_resnet20/model_final.pth

Without --config, configs/detection/<dataset>_<backbone>.yaml (or <dataset>_base.yaml) is used. Trailing key=value
arguments override config keys (e.g. solver.max_iter=1000 model.roi_heads.pooler=pool).
"""
import argparse
import json
import sys
from pickle import UnpicklingError
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools._threads import add_threads_argument, set_threads  # noqa: E402  (first: OpenMP settings before torch)
from backbones.utils.checkpoint import CheckpointError  # noqa: E402
from backbones.utils.config import ConfigError  # noqa: E402
from backbones.utils.numerics import NonFiniteError  # noqa: E402
from backbones.weights.keys import WeightsMismatchError  # noqa: E402
from backbones.weights.weight_files import WeightsFileError  # noqa: E402
from detection.config import DATASETS, as_override, load_det_config  # noqa: E402
from detection.data import DataError  # noqa: E402
from detection.engine.trainer import DetectionTrainer, RunFolderError  # noqa: E402
from detection.model.inference import add_inference_arguments, inference_overrides  # noqa: E402

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "detection"


def default_config_path(dataset: str, backbone: str):
    for name in (f"{dataset}_{backbone}.yaml", f"{dataset}_base.yaml"):
        if (CONFIG_DIR / name).is_file():
            return CONFIG_DIR / name
    return None


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=DATASETS, help="sets data.dataset")
    parser.add_argument("--backbone", help="registered backbone name (sets model.backbone)")
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
    parser.add_argument("--stop-after", type=int, help="stop with a checkpoint after this many iterations")
    add_inference_arguments(parser)  # for the evaluations during and after training
    add_threads_argument(parser)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. solver.base_lr=0.01")
    return parser


def setup(args):
    config = args.config
    if config is None and args.dataset and args.backbone:
        config = default_config_path(args.dataset, args.backbone)
    flags = ((args.dataset, "data.dataset"), (args.backbone, "model.backbone"), (args.weights, "model.weights"),
             (args.data_root, "data.root"), (args.ann, "data.ann_file"), (args.images, "data.image_dir"),
             (args.val_ann, "data.test_ann_file"), (args.val_images, "data.test_image_dir"))
    # Explicit flags win over the file; applied as overrides so their types are checked too.
    overrides = [as_override(key, value) for value, key in flags if value]
    overrides += [*inference_overrides(args.no_optimize, args.precision), *args.overrides]
    return load_det_config(str(config) if config else None, overrides)


def main(args) -> int:
    try:
        set_threads(args.threads)
        cfg = setup(args)
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
