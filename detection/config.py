"""Detection config schema (the defaults are the schema: every valid key, its type) and value checks.

Defaults follow the Faster R-CNN paper / py-faster-rcnn (see docs/DETECTION.md for sources): shorter side 600,
longer <= 1000; anchors 128/256/512 x 0.5/1/2; RPN 256 anchors at 1:1, IoU 0.7/0.3, NMS 0.7, top-k 12000/2000
(train) and 6000/300 (test); 128 RoIs per image, 25% foreground at IoU >= 0.5, background [0, 0.5); per-class NMS
0.3 at test.
"""
import sys
from typing import Any, Iterable, Optional

import yaml

from backbones.registry import get_spec
from backbones.utils.config import Config, ConfigError, load_config

from .data.catalog import coco_year, standard_splits
from .model.losses import BOX_LOSS_TYPES, DETECTRON2_ONLY_BOX_LOSSES, RPN_NORMALIZERS

# Freezable stages of the C4 split per backbone family (stem, res2..res5; VGG conv1_x..conv5_x; CIFAR stem + 3).
C4_STAGES = {"imagenet_resnet": 5, "vgg": 5, "cifar_resnet": 4}
DATASETS = ("voc07", "voc0712", "voc07++12", "coco", "coco_json", "digits")

DEFAULTS = {
    "seed": 0,
    "device": "auto",
    "dist_timeout_s": 1800,  # a collective waiting longer than this for a dead or hung process raises
    "model": {
        "backbone": "resnet50",
        # Any weights source of backbones.build_backbone (torchvision, timm, msra, a resdet checkpoint path), or null.
        "weights": None,
        "freeze_at": 2,
        "norm": "frozen_bn",
        # Channel scale of the ImageNet family and vgg16 (1.0 = the paper's nets); must match model.weights.
        "width_mult": 1.0,
        # vgg16 only, > 0: before training, conv5_3 x c and fc6 / c (the same box features) so that the trunk output
        # has this RMS on the first training images, which sets how fast the RPN learns (detection/model/trunk_scale.py)
        "trunk_output_rms": 0.0,
        # > 0: before training, the trunk's and the box head's BatchNorm statistics are measured again on this many
        # training images and their RoIs (detection/model/bn_restats.py); 0 keeps the pretrained statistics
        "bn_restats_images": 0,
        # torchvision | detectron2: whose anchors, proposal filtering, post-processing and test resize (DETECTION.md)
        "conventions": "torchvision",
        "init_detector": None,  # a resdet detector file to start from (train_det.py --init-detector)
        "anchor_sizes": [128, 256, 512],
        "aspect_ratios": [0.5, 1.0, 2.0],
        "rpn": {
            "fg_iou_thresh": 0.7,
            "bg_iou_thresh": 0.3,
            "batch_size_per_image": 256,
            "positive_fraction": 0.5,
            "pre_nms_top_n_train": 12000,
            "post_nms_top_n_train": 2000,
            "pre_nms_top_n_test": 6000,
            "post_nms_top_n_test": 300,
            "nms_thresh": 0.7,
            "ignore_cross_boundary": True,
            "boundary_tolerance": 0.0,
            # Losses (detection/model/losses.py): py-faster-rcnn's smooth L1 sigma = 3 (beta = 1/9) averaged over the
            # sampled anchors; detectron2: beta 0 (L1) and "batch_size" (sum / (batch_size_per_image x images))
            "box_loss_type": "smooth_l1",
            "smooth_l1_beta": 1.0 / 9,
            "loss_normalizer": "sampled",
        },
        "roi_heads": {
            "pooler": "align",
            "pooler_resolution": 0,  # 0 = the backbone's (14 before res5, 7 before VGG fc6)
            "sampling_ratio": 0,
            "aligned": True,
            "fg_iou_thresh": 0.5,
            "bg_iou_thresh": 0.5,
            "batch_size_per_image": 128,
            "positive_fraction": 0.25,
            "bbox_reg_weights": [10.0, 10.0, 5.0, 5.0],
            "score_thresh": 0.05,
            "nms_thresh": 0.3,
            "detections_per_img": 100,
            # Fast R-CNN box loss: py-faster-rcnn's smooth L1 sigma = 1 (beta = 1); torchvision 1/9, detectron2 0 (L1)
            "box_loss_type": "smooth_l1",
            "smooth_l1_beta": 1.0,
            # the paper's global context (App. B): the whole-image box through the same head, concatenated with each
            # region's feature before the class and box layers (detection/model/roi_heads.py)
            "global_context": False,
        },
    },
    "input": {
        "min_size_train": [600],  # several values = multi-scale training (one drawn per image)
        "max_size_train": 1000,
        "min_size_test": 600,
        "max_size_test": 1000,
        "size_divisible": 32,
        "hflip_prob": 0.5,
    },
    "data": {
        "dataset": "digits",
        "root": None,  # default: $RESDET_DATASETS or ./datasets
        "train": [],  # split names; empty = the dataset's standard training splits
        "test": "",  # split name; empty = the dataset's standard test split, "none" = no evaluation
        # --dataset coco with empty train/test: 2014 (train2014 / val2014) or 2017 splits; 0 = what is on disk
        "coco_year": 0,
        "ann_file": "",  # coco_json: training annotations and image folder
        "image_dir": "",
        "test_ann_file": "",
        "test_image_dir": "",
        "on_error": "skip",
        "filter_empty": True,
        "use_difficult": False,
        "aspect_ratio_grouping": True,
        "num_workers": 2,
        "max_image_pixels": 178956970,  # PIL's decompression-bomb limit
        "digits": {"seed": 0, "num_train": 1000, "num_val": 200, "canvas": [96, 128], "digit_size": [12, 40],
                   "per_image": [1, 4]},
    },
    "solver": {
        "ims_per_batch": 1,  # global batch (all processes)
        "base_lr": 0.001,
        "reference_batch": 0,  # >0: base_lr is stated for this batch and scaled linearly to ims_per_batch
        "momentum": 0.9,
        "weight_decay": 0.0005,
        "weight_decay_bias": 0.0,
        "weight_decay_norm": None,  # null: norm layers' weights as any weight (biases as biases); detectron2: 0.0
        "bias_lr_factor": 2.0,
        "max_iter": 80000,
        "steps": [60000],
        "gamma": 0.1,
        "warmup_iters": 0,
        "warmup_factor": 0.001,
        "clip_grad_norm": 0.0,
        # >0: the pretrained layers (trunk, box head) hold still for this many iterations while the new ones (RPN,
        # box predictor) learn, then train with a fresh warm-up (linear probing before fine-tuning)
        "freeze_pretrained_iters": 0,
        # none | bf16 | fp16 (fp16 with a GradScaler); bf16 also on CPUs with native bf16, else float32
        "amp": "bf16",
        "nan_policy": "stop",
        "checkpoint_period": 5000,
        "keep_last": 3,
        "log_period": 20,
    },
    "test": {"eval_period": 0, "ims_per_batch": 2, "max_images": 0,
             "num_samples": 8,  # images saved with their detections in eval/samples.json (report sample grid)
             "optimize": True,  # inference on the optimised detector (detection/model/inference.py); --no-optimize
             "precision": "fp32",  # fp32 | bf16 (where the device has native bf16); --precision
             # the paper's box refinement + box voting (App. B; detection/model/box_refinement.py); off = baseline
             "box_refinement": False,
             # the paper's multi-scale testing (App. B; detection/model/multiscale.py): "maxout" pools each RoI from the
             # two adjacent pyramid scales closest to its size (shorter sides test.scales; the RPN stays at
             # input.min_size_test) and takes the elementwise max; "none" = single scale
             "multiscale": "none",
             "scales": [200, 400, 600, 800, 1000],
             # detectron2-style flip test-time augmentation (not the paper's method): detections of the image and its
             # mirror image merged by per-class NMS
             "flip": False},
}


def _check(ok: bool, key: str, value, expected: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}' = {value!r} is invalid: expected {expected}")


def validate(cfg: Config, world_size: int = 1) -> Config:
    """Reject impossible values before any work starts; one error naming the key and what was expected."""
    m, r, h, i, d, s, t = (cfg.model, cfg.model.rpn, cfg.model.roi_heads, cfg.input, cfg.data, cfg.solver, cfg.test)
    _check(d.dataset in DATASETS, "data.dataset", d.dataset, f"one of {DATASETS}")
    _check(d.coco_year in (0, 2014, 2017), "data.coco_year", d.coco_year, "2014, 2017 or 0 (found on disk)")
    _check(d.on_error in ("skip", "raise"), "data.on_error", d.on_error, "'skip' or 'raise'")
    _check(h.pooler in ("align", "pool"), "model.roi_heads.pooler", h.pooler, "'align' or 'pool'")
    _check(s.nan_policy in ("stop", "skip"), "solver.nan_policy", s.nan_policy, "'stop' or 'skip'")
    _check(s.amp in ("none", "bf16", "fp16"), "solver.amp", s.amp, "'none', 'bf16' or 'fp16'")
    _check(cfg.dist_timeout_s > 0, "dist_timeout_s", cfg.dist_timeout_s, "> 0 seconds")
    try:
        family = get_spec(m.backbone).family
    except KeyError as e:
        raise ConfigError(f"config key 'model.backbone': {e.args[0]}") from None
    stages = C4_STAGES[family]
    _check(m.freeze_at is None or 0 <= m.freeze_at <= stages, "model.freeze_at", m.freeze_at,
           f"0..{stages} for {m.backbone} (0 = train everything, 1 = stem frozen, 2 = stem + res2, ...)")
    _check(m.width_mult > 0 and (m.width_mult == 1.0 or family != "cifar_resnet"), "model.width_mult",
           m.width_mult, "> 0, and 1.0 for the CIFAR nets (only the ImageNet family and vgg16 have reduced widths)")
    _check(m.trunk_output_rms >= 0 and (m.trunk_output_rms == 0 or family == "vgg"), "model.trunk_output_rms",
           m.trunk_output_rms, "0 (keep the weights' scale), or > 0 for vgg16 only (a ResNet trunk ends in a residual "
           "sum, which no single conv rescales)")
    _check(isinstance(m.bn_restats_images, int) and m.bn_restats_images >= 0, "model.bn_restats_images",
           m.bn_restats_images, "an integer >= 0 (0 = keep the pretrained BatchNorm statistics)")
    _check(m.conventions in ("torchvision", "detectron2"), "model.conventions", m.conventions,
           "'torchvision' or 'detectron2'")
    _check(m.norm in ("frozen_bn", "bn", "sync_bn"), "model.norm", m.norm, "'frozen_bn', 'bn' or 'sync_bn'")
    _check(len(m.anchor_sizes) > 0 and all(v > 0 for v in m.anchor_sizes), "model.anchor_sizes", m.anchor_sizes,
           "a non-empty list of positive sizes")
    _check(len(m.aspect_ratios) > 0 and all(v > 0 for v in m.aspect_ratios), "model.aspect_ratios",
           m.aspect_ratios, "a non-empty list of positive ratios")
    for prefix, node in (("model.rpn", r), ("model.roi_heads", h)):
        _check(0 < node.positive_fraction <= 1, f"{prefix}.positive_fraction", node.positive_fraction, "in (0, 1]")
        _check(node.batch_size_per_image >= 1, f"{prefix}.batch_size_per_image", node.batch_size_per_image, ">= 1")
        _check(0 <= node.bg_iou_thresh <= node.fg_iou_thresh <= 1, f"{prefix}.bg_iou_thresh",
               node.bg_iou_thresh, f"0 <= bg_iou_thresh <= fg_iou_thresh ({node.fg_iou_thresh}) <= 1")
    for key in ("pre_nms_top_n_train", "post_nms_top_n_train", "pre_nms_top_n_test", "post_nms_top_n_test"):
        _check(r[key] >= 1, f"model.rpn.{key}", r[key], ">= 1")
    for prefix, node in (("model.rpn", r), ("model.roi_heads", h)):
        other = " (detectron2's giou/diou/ciou are not implemented)" if node.box_loss_type in DETECTRON2_ONLY_BOX_LOSSES \
            else ""
        _check(node.box_loss_type in BOX_LOSS_TYPES, f"{prefix}.box_loss_type", node.box_loss_type,
               f"one of {BOX_LOSS_TYPES}{other}")
        _check(node.smooth_l1_beta >= 0, f"{prefix}.smooth_l1_beta", node.smooth_l1_beta, ">= 0 (0 = L1)")
    _check(r.loss_normalizer in RPN_NORMALIZERS, "model.rpn.loss_normalizer", r.loss_normalizer,
           f"one of {RPN_NORMALIZERS} (sampled: py-faster-rcnn/torchvision; batch_size: detectron2)")
    _check(0 < r.nms_thresh <= 1, "model.rpn.nms_thresh", r.nms_thresh, "in (0, 1]")
    _check(0 < h.nms_thresh <= 1, "model.roi_heads.nms_thresh", h.nms_thresh, "in (0, 1]")
    _check(h.pooler_resolution >= 0, "model.roi_heads.pooler_resolution", h.pooler_resolution, ">= 0")
    _check(len(h.bbox_reg_weights) == 4 and all(v > 0 for v in h.bbox_reg_weights), "model.roi_heads.bbox_reg_weights",
           h.bbox_reg_weights, "4 positive numbers")
    _check(len(i.min_size_train) > 0 and all(v >= 1 for v in i.min_size_train), "input.min_size_train",
           i.min_size_train, "a non-empty list of sizes >= 1")
    for key in ("max_size_train", "min_size_test", "max_size_test", "size_divisible"):
        _check(i[key] >= 1, f"input.{key}", i[key], ">= 1")
    _check(0 <= i.hflip_prob <= 1, "input.hflip_prob", i.hflip_prob, "in [0, 1]")
    _check(s.base_lr > 0, "solver.base_lr", s.base_lr, "> 0")
    _check(s.max_iter >= 1, "solver.max_iter", s.max_iter, ">= 1")
    _check(list(s.steps) == sorted(s.steps) and all(v > 0 for v in s.steps), "solver.steps", s.steps,
           "increasing iterations > 0")
    _check(0 < s.gamma <= 1, "solver.gamma", s.gamma, "in (0, 1]")
    _check(0 <= s.momentum < 1, "solver.momentum", s.momentum, "in [0, 1)")
    _check(s.weight_decay >= 0 and s.weight_decay_bias >= 0, "solver.weight_decay", s.weight_decay, ">= 0")
    _check(s.weight_decay_norm is None or (isinstance(s.weight_decay_norm, (int, float))
                                           and not isinstance(s.weight_decay_norm, bool) and s.weight_decay_norm >= 0),
           "solver.weight_decay_norm", s.weight_decay_norm, "null (as other weights) or a number >= 0")
    _check(s.warmup_iters >= 0 and 0 < s.warmup_factor <= 1, "solver.warmup_factor", s.warmup_factor, "in (0, 1]")
    _check(s.bias_lr_factor > 0, "solver.bias_lr_factor", s.bias_lr_factor, "> 0")
    _check(isinstance(s.freeze_pretrained_iters, int) and 0 <= s.freeze_pretrained_iters < s.max_iter,
           "solver.freeze_pretrained_iters", s.freeze_pretrained_iters,
           f"an integer in [0, max_iter={s.max_iter}) (0 = every layer trains from the first iteration)")
    _check(s.checkpoint_period >= 1, "solver.checkpoint_period", s.checkpoint_period, ">= 1")
    _check(s.keep_last >= 1, "solver.keep_last", s.keep_last, ">= 1")
    _check(s.log_period >= 1, "solver.log_period", s.log_period, ">= 1")
    _check(s.reference_batch >= 0, "solver.reference_batch", s.reference_batch, ">= 0")
    _check(s.ims_per_batch >= 1 and s.ims_per_batch % world_size == 0, "solver.ims_per_batch", s.ims_per_batch,
           f"a positive multiple of the world size ({world_size}); it is the global batch")
    _check(t.ims_per_batch >= 1, "test.ims_per_batch", t.ims_per_batch, ">= 1")
    _check(t.precision in ("fp32", "bf16"), "test.precision", t.precision, "'fp32' or 'bf16'")
    _check(t.multiscale in ("none", "maxout"), "test.multiscale", t.multiscale, "'none' or 'maxout'")
    _check(len(t.scales) > 0 and all(isinstance(v, (int, float)) and v > 0 for v in t.scales)
           and all(a < b for a, b in zip(t.scales, t.scales[1:])), "test.scales", t.scales,
           "a non-empty list of increasing positive shorter sides (the paper's [200, 400, 600, 800, 1000])")
    _check(t.eval_period >= 0 and t.max_images >= 0 and t.num_samples >= 0, "test.eval_period", t.eval_period,
           ">= 0 (and test.max_images, test.num_samples >= 0)")
    _check(d.num_workers >= 0, "data.num_workers", d.num_workers, ">= 0")
    _check(d.max_image_pixels >= 1, "data.max_image_pixels", d.max_image_pixels, ">= 1")
    if d.dataset == "coco_json":
        _check(bool(d.ann_file) == bool(d.image_dir), "data.image_dir", d.image_dir,
               "a folder whenever data.ann_file is given (coco_json: --ann FILE --images DIR)")
        _check(bool(d.ann_file or d.test_ann_file), "data.ann_file", d.ann_file,
               "coco_json needs --ann FILE --images DIR (training) or data.test_ann_file (evaluation)")
    g = d.digits
    for key in ("canvas", "digit_size", "per_image"):
        lo_hi = g[key]
        _check(len(lo_hi) == 2 and 1 <= lo_hi[0] <= lo_hi[1], f"data.digits.{key}", lo_hi, "[low, high] with 1 <= low <= high")
    _check(g.digit_size[1] <= g.canvas[0], "data.digits.digit_size", g.digit_size, "digits no larger than the canvas")
    _check(g.num_train >= 1 and g.num_val >= 1, "data.digits.num_train", g.num_train, ">= 1")
    return cfg


def drop_steps_beyond_max_iter(cfg: Config) -> Config:
    """Remove ``solver.steps`` past ``solver.max_iter`` with one warning line, as detectron2's
    ``build_lr_scheduler`` ignores them (a quick ``solver.max_iter=2`` run keeps the recipe's other keys)."""
    s = cfg.solver
    beyond = [v for v in s.steps if v > s.max_iter]
    if beyond and list(s.steps) == sorted(s.steps):  # unsorted steps stay for validate to refuse
        print(f"[resdet] solver.steps {beyond} lie beyond solver.max_iter={s.max_iter} and are ignored",
              file=sys.stderr)
        s.steps = [v for v in s.steps if v <= s.max_iter]
    return cfg


def resolve_coco_year(cfg: Config) -> Config:
    """``--dataset coco``: fix ``data.coco_year`` and the empty ``data.train`` / ``data.test`` to that year's splits, so
    ``--print-config`` and the run folder's config.yaml say which COCO is read."""
    d = cfg.data
    if d.dataset == "coco":
        train, test = standard_splits(cfg)
        d.coco_year = coco_year(cfg)
        d.train, d.test = list(d.train) or train, d.test or test
    return cfg


def load_det_config(path: Optional[str] = None, overrides: Iterable[str] = (), world_size: int = 1) -> Config:
    """Defaults ← YAML (``_base_`` chains) ← ``key=value`` overrides, then ``validate``."""
    cfg = validate(drop_steps_beyond_max_iter(load_config(DEFAULTS, path, overrides)), world_size)
    return resolve_coco_year(cfg)


def as_override(key: str, value: Any) -> str:
    """``key=value`` text that ``load_det_config`` parses back to ``value`` (floats like 1e-05 included)."""
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return f"{key}={text.removesuffix('...').strip()}"
