#!/usr/bin/env python
"""Pretrain a registered classifier with the paper's recipe, or evaluate one.

    # ImageNet, ResNet-101, 8 GPUs (global batch 256 = 32 per GPU, as in the paper):
    torchrun --nproc_per_node 8 tools/pretrain.py --arch resnet101 --dataset imagenet --data-root /data/imagenet
    # CIFAR-10 ResNet-110 (paper §4.2, with warm-up):
    tools/pretrain.py --arch resnet110 --dataset cifar10 --data-root /data/cifar10
    # CPU-scale degradation experiment (see docs/PRETRAINING.md):
    tools/pretrain.py --config configs/pretrain/digits_plain56.yaml --output-dir runs/digits/plain56
    # Evaluate a checkpoint with the 10-crop protocol:
    tools/pretrain.py --arch resnet50 --dataset imagenet --eval-only --weights runs/x/model_final.pth

Without --config, configs/pretrain/<dataset>_<arch>.yaml (or <dataset>_base.yaml) is used. Trailing key=value
arguments override config keys (e.g. solver.max_iter=1000 eval.protocol=multiscale).
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools._threads import add_threads_argument, set_threads  # noqa: E402  (first: OpenMP settings before torch)
from backbones.pretrain import PRETRAIN_DEFAULTS, Trainer, default_config_path, evaluate, load_classifier  # noqa: E402
from backbones.pretrain.datasets import DATASETS, DatasetError, build_datasets  # noqa: E402
from backbones.pretrain.defaults import validate  # noqa: E402
from backbones.pretrain.trainer import eval_settings  # noqa: E402
from backbones.utils.atomic_io import atomic_write_json  # noqa: E402
from backbones.utils.checkpoint import CheckpointError  # noqa: E402
from backbones.utils.config import Config, ConfigError, load_config  # noqa: E402
from backbones.utils.dist import cleanup, init_distributed  # noqa: E402
from backbones.utils.numerics import NonFiniteError  # noqa: E402
from backbones.utils.run_dir import RunFolderError  # noqa: E402
from backbones.weights.keys import WeightsMismatchError  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", help="registered backbone name (sets model.arch)")
    parser.add_argument("--dataset", choices=DATASETS, help="sets data.dataset")
    parser.add_argument("--data-root", help="dataset folder (sets data.root)")
    parser.add_argument("--config", help="YAML config (default: configs/pretrain/<dataset>_<arch>.yaml)")
    parser.add_argument("--output-dir", help="run folder (default: runs/pretrain/<dataset>_<arch>)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest good checkpoint")
    parser.add_argument("--eval-only", action="store_true", help="evaluate --weights instead of training")
    parser.add_argument("--weights", help="resdet checkpoint to evaluate (with --eval-only)")
    add_threads_argument(parser)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. solver.base_lr=0.05")
    return parser


def setup(args) -> Config:
    if args.eval_only and not args.weights:
        raise ConfigError("--eval-only needs --weights PATH")
    config = args.config
    if config is None and args.dataset:
        config = default_config_path(args.dataset, args.arch or "")
    overrides = list(args.overrides)
    # Explicit flags win over the file; they are applied as overrides so their types are checked too.
    for flag, key in ((args.arch, "model.arch"), (args.dataset, "data.dataset"), (args.data_root, "data.root")):
        if flag:
            overrides.append(f"{key}={json.dumps(flag)}")
    return load_config(PRETRAIN_DEFAULTS, str(config) if config else None, overrides)


def run_eval_only(cfg, args) -> dict:
    model, meta, checkpoint = load_classifier(args.weights, cfg.model.arch or None)
    cfg.model.arch = checkpoint["arch"]  # --arch is optional here: the checkpoint names it
    info = init_distributed(cfg.train.device, timeout_s=cfg.train.dist_timeout_s)  # shards images under torchrun
    try:
        validate(cfg, info.world_size)
        model.to(info.device)
        _, val_set = build_datasets(cfg.data.dataset, cfg.data.root, cfg.data.on_error, cfg.data.holdout,
                                    cfg.data.digits_size)
        settings = eval_settings(cfg)
        settings.update(mean=meta.mean, std=meta.std)  # the normalisation the weights were trained with
        result = evaluate(model, val_set, device=info.device, progress=cfg.train.progress and info.is_main,
                          **settings)
    finally:
        cleanup()
    result.update(arch=meta.arch, dataset=cfg.data.dataset, weights=str(args.weights))
    if info.is_main:
        if args.output_dir:
            atomic_write_json(Path(args.output_dir) / f"eval_{result['protocol']}.json", result)
        print(json.dumps(result, indent=2))
    return result


def main(args) -> int:
    try:
        set_threads(args.threads)
        cfg = setup(args)
        if args.eval_only:
            run_eval_only(cfg, args)
            return 0
        output_dir = args.output_dir or f"runs/pretrain/{cfg.data.dataset}_{cfg.model.arch}"
        result = Trainer(cfg, output_dir, resume=args.resume).run()
        if "stopped_at" in result:
            print(json.dumps(result))
        return 0
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except (DatasetError, RunFolderError, CheckpointError, WeightsMismatchError, NonFiniteError, ValueError,
            OSError) as e:  # OSError: e.g. the disk filled up mid-run (the last good checkpoint is kept)
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
