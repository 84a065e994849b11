"""The pretraining config schema (every key, its type and default) and the checks run before any work starts.

Conventions: ``solver.batch_size`` is the **global** batch (split evenly over processes); ``solver.base_lr`` is the
rate at ``solver.reference_batch`` and is scaled linearly with the global batch (lr = base_lr · batch_size /
reference_batch). Iterations count optimiser steps of one global batch.
"""
import math
from pathlib import Path
from typing import Optional

from ..norm import NORMS
from ..registry import get_spec, list_backbones
from ..utils.config import Config, ConfigError, recipe_path
from ..weights.meta import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB
from .datasets import DATASETS
from .schedule import POLICIES, WARMUP_METHODS

PROTOCOLS = ("single", "1crop", "10crop", "multiscale")
AMP_MODES = ("none", "bf16", "fp16")
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "pretrain"

PRETRAIN_DEFAULTS = {
    "model": {
        "arch": "",                   # registered backbone name (``--arch`` sets it)
        "shortcut": None,             # "A" / "B" / "C"; None = the registry's default for the arch
        "stride_in_1x1": None,        # bottleneck stride placement; None = registry default (paper: True)
        "norm": "bn",                 # bn (per-process statistics, like the paper's 8 GPUs) | sync_bn (GPU only) |
                                      # frozen_bn (no batch statistics; for exact DDP-equivalence checks)
        "zero_init_residual": False,
        "width_mult": 1.0,            # channel scale of the ImageNet family and vgg16 (1.0 = the paper's nets)
    },
    "data": {
        "dataset": "",                # imagenet | cifar10 | digits (``--dataset`` sets it)
        "root": "",                   # "" = datasets/<dataset>
        "num_workers": 4,             # DataLoader worker processes (does not change samples or order)
        "on_error": "raise",          # unreadable image: raise | skip (replaced by the next one, with a warning)
        "holdout": 0,                 # CIFAR-10: images held out of the 50k as validation (paper's search: 5000)
        "digits_size": 16,            # digits: upsampled side length
        "digits_background": "black",  # digits: black | canvas (ink on the detection set's textured canvases) |
                                       # context (a digit of digits_heights px anywhere on a digits_size texture)
        "digits_heights": [12, 40],   # digits, context: digit height range (the detection canvases' 12-40 px)
        "digits_curriculum_epochs": 0,  # digits, context: epochs from large digits on black to the full task
        "digits_train_sizes": [],     # digits, context: training side lengths cycled by epoch ([] = digits_size)
    },
    "augment": {
        "scale": [256, 480],          # random shorter side [min, max]; [] keeps the input size
        "crop": 224,                  # random crop size; 0 = no crop
        "pad": 0,                     # zero padding before the crop (CIFAR: 4)
        "flip": True,
        "lighting": 0.1,              # PCA colour lighting alpha std; 0 disables
        "mean": list(IMAGENET_MEAN_RGB),  # per-channel normalisation of [0, 1] RGB inputs
        "std": list(IMAGENET_STD_RGB),
    },
    "solver": {
        "batch_size": 256,            # global mini-batch
        "reference_batch": 256,       # batch at which base_lr is stated
        "base_lr": 0.1,
        "momentum": 0.9,
        "nesterov": False,
        "weight_decay": 0.0001,
        "max_iter": 600000,
        "policy": "step",             # step | plateau
        "steps": [150000, 300000, 450000],
        "gamma": 0.1,
        "plateau_patience": 3,        # evaluations without improvement before dividing the lr
        "plateau_threshold": 0.1,     # improvement (top-1 error, %) that counts
        "plateau_max_drops": 3,
        "warmup_iters": 0,            # warm-up length (cap, when warmup_until_err > 0)
        "warmup_factor": 0.1,         # warm-up lr = factor · lr
        "warmup_method": "constant",  # constant | linear
        "warmup_until_err": 0.0,      # > 0: end warm-up once the recent training error (%) is below this
        "nan_policy": "stop",         # non-finite loss/gradient: stop | skip the step
        "max_consecutive_skips": 10,
    },
    "train": {
        "seed": 0,
        "device": "auto",             # auto | cpu | cuda
        "amp": "none",                # none | bf16 | fp16 (fp16: GPU, with a GradScaler; bf16: GPU or a bf16 CPU)
        "channels_last": False,
        "log_period": 20,
        "checkpoint_period": 5000,
        "keep_last": 3,
        "eval_period": 0,             # 0 = evaluate only at the end
        "progress": True,             # main process: a bar on a terminal, else one line per log period
        "dist_timeout_s": 1800,       # a collective waiting longer than this for a dead peer raises
    },
    "eval": {
        "protocol": "10crop",         # single | 1crop | 10crop | multiscale
        "periodic_protocol": "",      # protocol of the evaluations during training; "" = same as protocol
        "resize": 256,
        "crop": 224,
        "scales": [224, 256, 384, 480, 640],
        "flip": True,                 # multiscale: also average the mirrored image's scores
        "batch_size": 64,             # images per process and forward pass
        "max_images": 0,              # 0 = the whole validation set
    },
}


# The dataset each registry family is trained on in the paper: ImageNet (§3.4) for the ImageNet ResNets, plain nets
# and VGG-16; CIFAR-10 (§4.2) for the 6n+2 nets. digits is this project's CPU stand-in, never a default.
PAPER_DATASETS = {"imagenet_resnet": "imagenet", "vgg": "imagenet", "cifar_resnet": "cifar10"}


def paper_dataset(arch: str) -> Optional[str]:
    """The dataset ``arch``'s family is pretrained on in the paper; None for a name the registry does not know."""
    try:
        return PAPER_DATASETS[get_spec(arch).family]
    except KeyError:
        return None


def default_config_path(dataset: str, arch: str) -> Optional[Path]:
    """``configs/pretrain/<dataset>_<arch>.yaml`` if it exists, else ``<dataset>_base.yaml``, else None."""
    return recipe_path(CONFIG_DIR, dataset, arch)


def _fail(key: str, message: str) -> ConfigError:
    return ConfigError(f"config key '{key}' {message}")


def validate(cfg: Config, world_size: int = 1) -> None:
    """Reject impossible values with one ConfigError naming the key, before any data or model is touched."""
    m, d, a, s, t, e = cfg.model, cfg.data, cfg.augment, cfg.solver, cfg.train, cfg.eval

    def positive(key, value, strict=True):
        if not math.isfinite(value) or value < 0 or (strict and value == 0):
            raise _fail(key, f"must be {'> 0' if strict else '>= 0'}, got {value}")

    def choice(key, value, allowed):
        if value not in allowed:
            raise _fail(key, f"must be one of {', '.join(map(str, allowed))}, got {value!r}")

    if not m.arch:
        raise _fail("model.arch", "is empty: pass --arch NAME or set it in the config")
    if m.arch not in list_backbones():
        try:
            get_spec(m.arch)
        except KeyError as err:
            raise _fail("model.arch", str(err.args[0])) from None
    if not d.dataset:
        raise _fail("data.dataset", f"is empty: pass --dataset ({', '.join(DATASETS)})")
    choice("data.dataset", d.dataset, DATASETS)
    if m.shortcut is not None:
        choice("model.shortcut", m.shortcut, ("A", "B", "C"))
    choice("model.norm", m.norm, NORMS)
    if m.stride_in_1x1 is not None and not isinstance(m.stride_in_1x1, bool):
        raise _fail("model.stride_in_1x1", f"must be true, false or null, got {m.stride_in_1x1!r}")
    positive("model.width_mult", m.width_mult)
    if m.width_mult != 1.0 and get_spec(m.arch).family == "cifar_resnet":
        raise _fail("model.width_mult", f"must be 1.0 for {m.arch}: only the ImageNet family and vgg16 have "
                                        f"reduced-width variants, got {m.width_mult}")
    choice("data.on_error", d.on_error, ("raise", "skip"))
    positive("data.num_workers", d.num_workers, strict=False)
    positive("data.holdout", d.holdout, strict=False)
    if d.digits_size < 8:
        raise _fail("data.digits_size", f"must be >= 8 (the images are 8×8), got {d.digits_size}")
    choice("data.digits_background", d.digits_background, ("black", "canvas", "context"))
    sizes = d.digits_train_sizes
    if not (isinstance(sizes, list) and all(isinstance(v, int) and v >= 8 for v in sizes)):
        raise _fail("data.digits_train_sizes", f"must be a list of integers >= 8 ([] = data.digits_size), got {sizes!r}")
    if sizes and d.digits_background != "context":
        raise _fail("data.digits_train_sizes", f"needs data.digits_background: context, got {d.digits_background!r}")
    if d.digits_background == "context":
        heights, smallest = d.digits_heights, min([d.digits_size] + sizes)
        if not (isinstance(heights, list) and len(heights) == 2 and all(isinstance(v, int) for v in heights)
                and 4 <= heights[0] <= heights[1] <= smallest):
            bound = "data.digits_size" if not sizes else "the smallest of data.digits_size and data.digits_train_sizes"
            raise _fail("data.digits_heights", f"must be [low, high] with 4 <= low <= high <= {bound} ({smallest}), "
                                               f"got {heights}")
    if not (isinstance(d.digits_curriculum_epochs, int) and d.digits_curriculum_epochs >= 0):
        raise _fail("data.digits_curriculum_epochs", f"must be an integer >= 0, got {d.digits_curriculum_epochs!r}")

    if a.scale and (len(a.scale) != 2 or not 0 < a.scale[0] <= a.scale[1]):
        raise _fail("augment.scale", f"must be [] or [min, max] with 0 < min <= max, got {a.scale}")
    positive("augment.crop", a.crop, strict=False)
    positive("augment.pad", a.pad, strict=False)
    if a.scale and a.crop > a.scale[0]:
        raise _fail("augment.crop", f"({a.crop}) must not exceed the smallest random scale {a.scale[0]}")
    positive("augment.lighting", a.lighting, strict=False)
    for key in ("mean", "std"):
        values = a[key]
        if len(values) != 3 or not all(isinstance(v, (int, float)) for v in values):
            raise _fail(f"augment.{key}", f"must be 3 numbers (R, G, B), got {values}")
    if any(v <= 0 for v in a.std):
        raise _fail("augment.std", f"values must be > 0, got {a.std}")

    positive("solver.batch_size", s.batch_size)
    if s.batch_size % world_size:
        raise _fail("solver.batch_size", f"= {s.batch_size} (global batch) is not divisible by the world size "
                                         f"{world_size}; use a multiple of {world_size}")
    positive("solver.reference_batch", s.reference_batch)
    positive("solver.base_lr", s.base_lr)
    if not 0 <= s.momentum < 1:
        raise _fail("solver.momentum", f"must be in [0, 1), got {s.momentum}")
    positive("solver.weight_decay", s.weight_decay, strict=False)
    positive("solver.max_iter", s.max_iter)
    choice("solver.policy", s.policy, POLICIES)
    # Steps past max_iter are allowed (never reached), so a shortened run needs only solver.max_iter changed.
    if any(not isinstance(x, int) or x <= 0 for x in s.steps) or list(s.steps) != sorted(set(s.steps)):
        raise _fail("solver.steps", f"must be strictly increasing positive iterations, got {s.steps}")
    if not 0 < s.gamma <= 1:
        raise _fail("solver.gamma", f"must be in (0, 1], got {s.gamma}")
    positive("solver.plateau_patience", s.plateau_patience)
    positive("solver.plateau_threshold", s.plateau_threshold, strict=False)
    positive("solver.plateau_max_drops", s.plateau_max_drops, strict=False)
    if s.policy == "plateau" and t.eval_period == 0:
        raise _fail("train.eval_period", "must be > 0 with solver.policy=plateau (it needs periodic evaluations)")
    positive("solver.warmup_iters", s.warmup_iters, strict=False)
    if not 0 < s.warmup_factor <= 1:
        raise _fail("solver.warmup_factor", f"must be in (0, 1], got {s.warmup_factor}")
    choice("solver.warmup_method", s.warmup_method, WARMUP_METHODS)
    if not 0 <= s.warmup_until_err <= 100:
        raise _fail("solver.warmup_until_err", f"must be a percentage in [0, 100], got {s.warmup_until_err}")
    if s.warmup_until_err and not s.warmup_iters:
        raise _fail("solver.warmup_iters", "must be > 0 (a cap) when solver.warmup_until_err is set")
    choice("solver.nan_policy", s.nan_policy, ("stop", "skip"))
    positive("solver.max_consecutive_skips", s.max_consecutive_skips)

    choice("train.device", t.device.split(":")[0], ("auto", "cpu", "cuda"))
    choice("train.amp", t.amp, AMP_MODES)
    for key in ("log_period", "checkpoint_period", "keep_last", "dist_timeout_s"):
        positive(f"train.{key}", t[key])
    positive("train.eval_period", t.eval_period, strict=False)

    choice("eval.protocol", e.protocol, PROTOCOLS)
    if e.periodic_protocol:
        choice("eval.periodic_protocol", e.periodic_protocol, PROTOCOLS)
    positive("eval.resize", e.resize)
    positive("eval.crop", e.crop)
    if e.crop > e.resize:
        raise _fail("eval.crop", f"({e.crop}) must not exceed eval.resize ({e.resize})")
    if not e.scales or any(v <= 0 for v in e.scales):
        raise _fail("eval.scales", f"must be positive shorter-side lengths, got {e.scales}")
    positive("eval.batch_size", e.batch_size)
    positive("eval.max_images", e.max_images, strict=False)
    if d.dataset in ("cifar10", "digits") and e.protocol in ("1crop", "10crop", "multiscale") and e.resize >= 64:
        raise _fail("eval.protocol", f"'{e.protocol}' resizes to {e.resize} px, meant for ImageNet; use 'single' "
                                     f"for {d.dataset} (or set eval.resize/crop to small-image sizes)")
