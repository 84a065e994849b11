#!/usr/bin/env python
"""Pretrain a registered classifier with the paper's recipe, or evaluate one.

    # ImageNet, ResNet-101, 8 GPUs (global batch 256 = 32 per GPU, lr 0.1, 600k iterations, as in the paper):
    torchrun --nproc_per_node 8 tools/pretrain.py --arch resnet101 --data-root /data/imagenet
    # See the resolved config of a command without running it (no data needed):
    tools/pretrain.py --arch resnet101 --print-config
    # CIFAR-10 ResNet-110 (paper §4.2, with warm-up):
    tools/pretrain.py --arch resnet110 --data-root /data/cifar10
    # CPU-scale degradation experiment (see docs/PRETRAINING.md):
    tools/pretrain.py --config configs/pretrain/digits_plain56.yaml --output-dir runs/digits/plain56
    # Evaluate a checkpoint with the 10-crop protocol:
    tools/pretrain.py --arch resnet50 --eval-only --weights runs/x/model_final.pth

Without --dataset (and --config), the dataset the architecture is trained on in the paper is used: imagenet for
resnet18..152, plain18/34 and vgg16; cifar10 for the 6n+2 nets (resnet20..1202, plain20..110). Without --config,
configs/pretrain/<dataset>_<arch>.yaml (or <dataset>_base.yaml) is used. Precedence: defaults <- config file <-
flags <- trailing key=value overrides (e.g. solver.max_iter=1000 eval.protocol=multiscale).
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools._threads import add_threads_argument, set_threads  # noqa: E402  (first: OpenMP settings before torch)
from backbones.pretrain import (PRETRAIN_DEFAULTS, Trainer, default_config_path, evaluate,  # noqa: E402
                                load_classifier, paper_dataset)
from backbones.pretrain.datasets import DATASETS, DatasetError, build_datasets_for  # noqa: E402
from backbones.pretrain.defaults import validate  # noqa: E402
from backbones.pretrain.trainer import eval_settings  # noqa: E402
from backbones.utils.atomic_io import atomic_write_json  # noqa: E402
from backbones.utils.checkpoint import CheckpointError  # noqa: E402
from backbones.utils.config import (ConfigError, load_config, override_value,  # noqa: E402
                                   resolved_config_text)
from backbones.utils.dist import cleanup, init_distributed  # noqa: E402
from backbones.utils.numerics import NonFiniteError  # noqa: E402
from backbones.utils.run_dir import RunFolderError  # noqa: E402
from backbones.weights.keys import WeightsMismatchError  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", help="registered backbone name (sets model.arch)")
    parser.add_argument("--dataset", choices=DATASETS,
                        help="sets data.dataset (default: the dataset the arch is trained on in the paper)")
    parser.add_argument("--data-root", help="dataset folder (sets data.root)")
    parser.add_argument("--config", help="YAML config (default: configs/pretrain/<dataset>_<arch>.yaml)")
    parser.add_argument("--output-dir", help="run folder (default: runs/pretrain/<dataset>_<arch>)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest good checkpoint")
    parser.add_argument("--eval-only", action="store_true", help="evaluate --weights instead of training")
    parser.add_argument("--weights", help="resdet checkpoint to evaluate (with --eval-only)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as YAML and exit (reads no data, writes no run folder)")
    add_threads_argument(parser)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. solver.base_lr=0.05")
    return parser


def setup(args):
    """The resolved config and the file it was read from (None: defaults only)."""
    if args.eval_only and not args.weights:
        raise ConfigError("--eval-only needs --weights PATH")
    # Flags are applied as overrides (so their types are checked too), before the trailing ones, which win.
    flags = ((args.arch, "model.arch"), (args.dataset, "data.dataset"), (args.data_root, "data.root"))
    overrides = [f"{key}={json.dumps(value)}" for value, key in flags if value] + list(args.overrides)
    config = args.config
    if config is None:
        arch = override_value(overrides, "model.arch") or ""
        dataset = override_value(overrides, "data.dataset")
        if not dataset and paper_dataset(arch):
            dataset = paper_dataset(arch)
            overrides.insert(0, f"data.dataset={json.dumps(dataset)}")
        config = default_config_path(dataset, arch) if dataset else None
    return load_config(PRETRAIN_DEFAULTS, str(config) if config else None, overrides), config


def run_eval_only(cfg, args) -> dict:
    model, meta, checkpoint = load_classifier(args.weights, cfg.model.arch or None)
    cfg.model.arch = checkpoint["arch"]  # --arch is optional here: the checkpoint names it
    info = init_distributed(cfg.train.device, timeout_s=cfg.train.dist_timeout_s)  # shards images under torchrun
    try:
        validate(cfg, info.world_size)
        model.to(info.device)
        _, val_set = build_datasets_for(cfg.data)
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
        cfg, config = setup(args)
        if args.print_config:
            if cfg.model.arch:  # with --eval-only and no --arch, the checkpoint names it later
                validate(cfg)
            print(resolved_config_text(cfg, "tools/pretrain.py", config), end="")
            return 0
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
