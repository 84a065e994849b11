"""Detection training loop: iteration-based SGD, warm-up + step schedule, DDP, AMP, NaN guard, exact resume.

Run folder: ``config.yaml``, ``metrics.jsonl`` + ``tb/`` (training lines ``iter, lr, loss, loss_classifier,
loss_box_reg, loss_objectness, loss_rpn_box_reg``; evaluation lines ``eval/bbox/AP``, ``eval/bbox/AP50``, ...),
``checkpoints/`` (``model_<iter>.pth``, last ``solver.keep_last`` kept), ``model_final.pth``, ``eval/`` (evaluation
library outputs) and ``final.json``.

Exact resume: the sample stream is a pure function of (seed, iteration) (``GroupedInfiniteBatchSampler``) and the
checkpoint holds the model, optimiser, schedule, AMP scaler, NaN-guard state and every process's RNG state (the RPN
and RoI samplers draw from torch's generator), so a resumed CPU run ends with the same weights as an uninterrupted
one.
"""
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from backbones.pretrain.schedule import LRSchedule, linear_warmup_factor
from backbones.utils.atomic_io import atomic_write_json, atomic_write_text
from backbones.utils.checkpoint import CheckpointManager
from backbones.utils.config import Config, ConfigError
from backbones.utils.dist import (DistInfo, all_gather_objects, all_reduce_sum, barrier, cleanup, init_distributed,
                                  linear_scaled_lr, per_process_batch)
from backbones.utils.metrics_log import MetricsLogger
from backbones.utils.numerics import NanGuard, assert_finite_state
from backbones.utils.progress import TrainingProgress
from backbones.utils.precision import autocast_dtype
from backbones.utils.rng import get_rng_state, seed_everything, set_rng_state
from backbones.utils.run_dir import RunFolderError, prepare_run_dir

from ..config import validate
from ..data import DataIssues, GroupedInfiniteBatchSampler, TrainAugmentation, collate, test_source, train_source
from ..data.fast_loader import FastDetectionDataset, images_to_float, worker_init_fn
from ..evaluation import flatten_metrics
from ..model import build_detector
from ..model.init_detector import detector_for_finetuning
from ..model.inference import build_inference_model
from ..model.bn_restats import restat_batchnorm
from ..model.optimize import prepare_for_training
from ..model.trunk_scale import fc6_group_options, rescale_trunk_output, rescaled_fc6_weight
from ..model.io import TRAIN_STATE_FORMAT, detector_file, save_detector
from .evaluate import evaluate_model

LOSS_KEYS = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")
FINAL_WEIGHTS = "model_final.pth"
CALIBRATION_IMAGES = 8  # model.trunk_output_rms is measured on the first training images


def _log(message: str, info: DistInfo) -> None:
    if info.is_main:
        print(f"[resdet] {message}", file=sys.stderr, flush=True)


PRETRAINED_PREFIXES = ("backbone.", "roi_heads.box_head.")  # what the classifier checkpoint initialises


def build_optimizer(model: torch.nn.Module, cfg: Config, lr: float, trunk_factor: float = 1.0) -> torch.optim.SGD:
    """SGD with biases in their own group (Fast R-CNN: bias lr x2, no weight decay); frozen parameters left out.

    With ``solver.weight_decay_norm`` set, normalisation layers' parameters get that weight decay (detectron2's
    ``WEIGHT_DECAY_NORM``; their biases keep ``bias_lr_factor``).

    With ``model.trunk_output_rms`` on, fc6's weight gets a third group whose options undo the rescaling by
    ``trunk_factor`` (on resume the saved groups bring the factor back). With ``solver.freeze_pretrained_iters``
    on, the trunk's and box head's parameters get groups of their own, marked ``pretrained``, whose lr the trainer
    holds at 0 for those iterations.
    """
    s = cfg.solver
    fc6 = rescaled_fc6_weight(model) if cfg.model.trunk_output_rms > 0 else None
    split = s.freeze_pretrained_iters > 0
    norms = norm_parameters(model) if s.weight_decay_norm is not None else set()
    # (pretrained, is_bias, is_norm) -> parameters; sorted, weights come before biases (old checkpoints: no norm group)
    buckets: Dict[tuple, list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad and p is not fc6:
            key = (split and name.startswith(PRETRAINED_PREFIXES), name.endswith(".bias"), id(p) in norms)
            buckets.setdefault(key, []).append(p)
    groups = []
    for pretrained, is_bias, is_norm in sorted(buckets):
        factor = s.bias_lr_factor if is_bias else 1.0
        decay = s.weight_decay_norm if is_norm else s.weight_decay_bias if is_bias else s.weight_decay
        groups.append({"params": buckets[(pretrained, is_bias, is_norm)], "lr": lr * factor, "lr_factor": factor,
                       "weight_decay": decay, "pretrained": pretrained})
    if fc6 is not None:
        options = fc6_group_options(trunk_factor, s.weight_decay)
        groups.append({"params": [fc6], "lr": lr * options["lr_factor"], **options, "pretrained": split})
    return torch.optim.SGD(groups, lr=lr, momentum=s.momentum)


NORM_LAYERS = (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.LocalResponseNorm)


def norm_parameters(model: torch.nn.Module) -> set:
    """``id``s of the parameters of normalisation layers (detectron2's ``norm_module_types``)."""
    return {id(p) for m in model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(recurse=False)}


def pretrained_lr_scale(iteration: int, hold: int, warmup_iters: int, warmup_factor: float) -> float:
    """Multiplier of the pretrained groups' lr: 0 for the first ``hold`` iterations, then the solver's linear warm-up
    again from the release (their momentum buffers hold the gradients of the held iterations)."""
    return 0.0 if iteration < hold else linear_warmup_factor(iteration - hold, warmup_iters, warmup_factor)


def _to_device(targets: List[dict], device) -> List[dict]:
    return [{"boxes": t["boxes"].to(device, non_blocking=True), "labels": t["labels"].to(device, non_blocking=True)}
            for t in targets]


def _merged(seen: DataIssues) -> DataIssues:
    """Every process's loader problems in one ``DataIssues`` (a collective: all processes call it)."""
    merged = DataIssues(seen.on_error)
    for part in all_gather_objects(seen):
        merged.merge(part)
    return merged


def training_amp_dtype(amp: str, device: torch.device, info: DistInfo) -> Optional[torch.dtype]:
    """The autocast dtype for ``solver.amp`` here: bf16 on CUDA and on CPUs with native bf16, fp16 on CUDA only."""
    dtype = autocast_dtype(amp, device)
    if dtype is None and amp != "none":
        _log(f"solver.amp={amp} is not supported on {device}; training in float32", info)
    return dtype


class DetectionTrainer:
    """One detection run; ``run()`` trains to ``solver.max_iter`` (or ``stop_after`` iterations) and reports.

    Args:
        cfg: resolved config (``load_det_config``).
        output_dir: run folder.
        resume: continue from the newest readable checkpoint (falling back to older ones when it is corrupt).
        stop_after: stop with a checkpoint after this many iterations (time-limited jobs, tests).
    """

    def __init__(self, cfg: Config, output_dir, resume: bool = False, stop_after: Optional[int] = None):
        self.cfg, self.output_dir, self.resume, self.stop_after = cfg, Path(output_dir), resume, stop_after

    def run(self) -> Dict[str, Any]:
        info = init_distributed(self.cfg.device, timeout_s=self.cfg.dist_timeout_s)
        try:
            validate(self.cfg, info.world_size)
            self._check_output_dir(info)
            return self._run(info)
        finally:
            cleanup()

    def _check_output_dir(self, info: DistInfo) -> None:
        if not info.is_main:
            return
        prepare_run_dir(self.output_dir, self.resume, self.output_dir / "checkpoints")

    def _run(self, info: DistInfo) -> Dict[str, Any]:
        self._setup(info)
        logger = MetricsLogger(self.output_dir, enabled=info.is_main)
        try:
            if self.resume:
                logger.resume_at(self.iteration)
            if info.is_main:
                atomic_write_text(self.output_dir / "config.yaml", self.cfg.dump())
            self._train(info, logger)
            if self.iteration < self.cfg.solver.max_iter:
                return {"stopped_at": self.iteration, "checkpoint": self.last_good}
            return self._finish(info, logger)
        finally:
            logger.close()

    def _setup(self, info: DistInfo) -> None:
        cfg, s, d = self.cfg, self.cfg.solver, self.cfg.data
        self.started = time.time()
        seed_everything(cfg.seed)
        self.issues = DataIssues(d.on_error)  # found while building the datasets (re-found on resume)
        self.seen = DataIssues(d.on_error)  # met by the loader during training (kept in checkpoints)
        self.train_src = train_source(cfg, self.issues)
        self.test_src = test_source(cfg, DataIssues(d.on_error))
        if self.test_src is not None and self.test_src.class_names != self.train_src.class_names:
            raise ValueError(f"test split {self.test_src.name} has other classes than {self.train_src.name}")
        augmentation = TrainAugmentation(cfg.input.min_size_train, cfg.input.max_size_train, cfg.input.hflip_prob,
                                         cfg.model.conventions)
        self.train_set = FastDetectionDataset(self.train_src, True, augmentation, d.use_difficult, d.filter_empty,
                                          d.max_image_pixels, self.issues)
        device = info.device
        self.trunk_factor = 1.0  # set by _rescale_trunk on a fresh start; restored with the optimizer on resume
        self.manager = CheckpointManager(self.output_dir / "checkpoints", s.keep_last)
        path, state = self.manager.load_latest() if self.resume else (None, None)
        if cfg.model.init_detector:  # --init-detector: trunk, RPN and head from a trained detector
            self.model, note = detector_for_finetuning(cfg, self.train_src.categories)
            self.model = self.model.to(device)
            _log(note, info)
        else:
            self.model = build_detector(cfg, len(self.train_src.categories)).to(device)
            if cfg.model.bn_restats_images > 0 and state is None:  # a resumed run restores the measured statistics
                self._restat_batchnorm(info)
            if cfg.model.trunk_output_rms > 0:
                self._rescale_trunk(info)
        # BN fused into the convs, channels_last, float32 box arithmetic under autocast; state_dict keys unchanged
        prepare_for_training(self.model)
        self.net = self.model
        if info.world_size > 1:
            self.net = DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.per_process = per_process_batch(s.ims_per_batch, info.world_size, "solver.ims_per_batch")
        self.lr = linear_scaled_lr(s.base_lr, s.ims_per_batch, s.reference_batch) if s.reference_batch else s.base_lr
        self.optimizer = build_optimizer(self.model, cfg, self.lr, self.trunk_factor)
        self.schedule = LRSchedule(self.lr, "step", s.steps, s.gamma, s.warmup_iters, s.warmup_factor, "linear")
        self.amp_dtype = training_amp_dtype(s.amp, device, info)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype is torch.float16)
        self.guard = NanGuard(s.nan_policy, check_grads=not self.scaler.is_enabled())
        self.iteration, self.last_good = 0, None
        if self.resume:
            if state is None:
                _log(f"--resume: no readable checkpoint in {self.manager.folder}; starting from iteration 0", info)
            else:
                self.last_good = str(path)
                self._restore(state, info)
                _log(f"resumed from {path} at iteration {self.iteration}", info)
        _log(f"{self.model.backbone_name} C4 on {self.train_src.name}: {len(self.train_set)} training images, "
             f"{len(self.train_src.categories)} classes, lr {self.lr:g}, global batch {s.ims_per_batch} "
             f"({info.world_size} process(es))", info)
        if s.freeze_pretrained_iters and self.iteration < s.freeze_pretrained_iters:
            _log(f"trunk and box head held for the first {s.freeze_pretrained_iters} iterations while the RPN and box "
                 f"predictor learn (solver.freeze_pretrained_iters)", info)

    def _first_training_samples(self, count: int, info: DistInfo) -> tuple:
        """Images (float, on the device) and targets of the first ``count`` training images, as epoch 0 draws them."""
        samples = [self.train_set[(index, 0)] for index in range(min(count, len(self.train_set)))]
        return (images_to_float([image for image, _ in samples], info.device),
                _to_device([target for _, target in samples], info.device))

    def _rescale_trunk(self, info: DistInfo) -> None:
        # Every process computes the same factor from the same images; DDP then starts from rank 0's weights anyway.
        images, _ = self._first_training_samples(CALIBRATION_IMAGES, info)
        before, factor = rescale_trunk_output(self.model, images, self.cfg.model.trunk_output_rms)
        self.trunk_factor = factor
        _log(f"trunk output RMS {before:.3g} on {len(images)} training images -> {self.cfg.model.trunk_output_rms:g}: conv5_3 "
             f"x {factor:.3g}, fc6 / {factor:.3g} and its lr / {factor ** 2:.3g} (model.trunk_output_rms; same box "
             f"features, fc6 learns as before)", info)

    def _restat_batchnorm(self, info: DistInfo) -> None:
        # Every process measures the same images, so the statistics agree before DDP broadcasts rank 0's buffers.
        images, targets = self._first_training_samples(self.cfg.model.bn_restats_images, info)
        batch = per_process_batch(self.cfg.solver.ims_per_batch, info.world_size, "solver.ims_per_batch")
        updated = restat_batchnorm(self.model, images, targets, batch)
        _log(f"BatchNorm statistics measured again on {len(images)} training images and their RoIs: {updated['trunk']} "
             f"trunk and {updated['head']} head layers (model.bn_restats_images)", info)

    def _loader(self, info: DistInfo) -> DataLoader:
        d = self.cfg.data
        groups = self.train_set.aspect_groups() if d.aspect_ratio_grouping else [0] * len(self.train_set)
        sampler = GroupedInfiniteBatchSampler(groups, self.per_process, self.cfg.seed, info.rank, info.world_size,
                                              self.iteration)
        # A private generator keeps the DataLoader off the global RNG (restored on resume).
        return DataLoader(self.train_set, batch_sampler=sampler, num_workers=d.num_workers, collate_fn=collate,
                          pin_memory=info.device.type == "cuda", worker_init_fn=worker_init_fn,
                          generator=torch.Generator().manual_seed(self.cfg.seed))

    def _save(self, info: DistInfo) -> str:
        state = self._state(info)
        if info.is_main:
            checkpoint = detector_file(self.model, self.cfg, self.train_src.categories, state)
            assert_finite_state(checkpoint["model"])
            self.manager.save(checkpoint, self.iteration)
        barrier()
        return str(self.manager.path_for(self.iteration))

    def _evaluate(self, info: DistInfo, logger: MetricsLogger, output_dir=None) -> Dict[str, Any]:
        if self.test_src is None:
            return {}
        cfg = self.cfg
        net = build_inference_model(self.model, cfg, info.device)  # what tools/eval_det.py runs
        metrics = evaluate_model(net, self.test_src, info.device, output_dir, cfg.test.ims_per_batch,
                                 cfg.data.num_workers, "none", cfg.test.max_images, cfg.data.max_image_pixels,
                                 progress=info.is_main,
                                 num_samples=cfg.test.num_samples if output_dir is not None else 0)
        logger.log(self.iteration, **flatten_metrics(metrics))
        return metrics

    def _train(self, info: DistInfo, logger: MetricsLogger) -> None:
        cfg, s, device = self.cfg, self.cfg.solver, info.device
        autocast = (lambda: torch.autocast(device.type, dtype=self.amp_dtype)) if self.amp_dtype else nullcontext
        params = [p for p in self.model.parameters() if p.requires_grad]
        window = torch.zeros(len(LOSS_KEYS) + 2, dtype=torch.float64)  # loss terms, their sum, step count
        # Wall time of the steps in this logging window (any length after a resume or at the end), without the
        # evaluations and checkpoints between them.
        step_seconds, steps = 0.0, 0
        stop = s.max_iter if self.stop_after is None else min(s.max_iter, self.stop_after)
        self.net.train()
        batches = iter(self._loader(info))
        with TrainingProgress(s.max_iter, self.iteration, f"{self.model.backbone_name} on {self.train_src.name}",
                              enabled=info.is_main) as progress:
            while self.iteration < stop:
                step_start = time.perf_counter()
                images, targets = next(batches)
                for t in targets:
                    for issue in t["issues"]:
                        self.seen.record(issue)
                images = images_to_float(images, device)
                lr = self.schedule.lr(self.iteration)
                held = pretrained_lr_scale(self.iteration, s.freeze_pretrained_iters, s.warmup_iters, s.warmup_factor)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr * group["lr_factor"] * (held if group.get("pretrained") else 1.0)
                if s.freeze_pretrained_iters and self.iteration == s.freeze_pretrained_iters:
                    _log(f"iteration {self.iteration}: trunk and box head released (solver.freeze_pretrained_iters)", info)
                with autocast():
                    losses = self.net(images, _to_device(targets, device))
                loss = sum(losses[k].float() for k in LOSS_KEYS)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                if self.guard.step_ok(self.iteration + 1, loss, params, self.last_good):
                    if s.clip_grad_norm > 0:
                        self.scaler.unscale_(self.optimizer)
                        torch.nn.utils.clip_grad_norm_(params, s.clip_grad_norm)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    values = [float(losses[k].detach()) for k in LOSS_KEYS]
                    window += torch.tensor([*values, sum(values), 1.0], dtype=torch.float64)
                else:
                    self.optimizer.zero_grad(set_to_none=True)
                    _log(f"iteration {self.iteration + 1}: non-finite loss/gradient, step skipped "
                         f"({self.guard.skipped_total} so far)", info)
                self.iteration += 1
                step_seconds, steps = step_seconds + time.perf_counter() - step_start, steps + 1
                progress.update(1)
                if self.iteration % s.log_period == 0 or self.iteration == s.max_iter:
                    totals = all_reduce_sum(window.to(device)).cpu()
                    count = max(float(totals[-1]), 1.0)
                    means = {k: float(v) / count for k, v in zip(LOSS_KEYS, totals[:len(LOSS_KEYS)])}
                    logger.log(self.iteration, lr=lr, loss=float(totals[-2]) / count, **means,
                               time_per_iter=step_seconds / steps,
                               skipped_steps=self.guard.skipped_total)
                    progress.log(loss=float(totals[-2]) / count, lr=lr)
                    window.zero_()
                    step_seconds, steps = 0.0, 0
                if cfg.test.eval_period and self.iteration % cfg.test.eval_period == 0 and self.iteration < s.max_iter:
                    self._evaluate(info, logger)
                    self.net.train()
                if self.iteration % s.checkpoint_period == 0 or self.iteration == stop:
                    self.last_good = self._save(info)

    def _finish(self, info: DistInfo, logger: MetricsLogger) -> Dict[str, Any]:
        cfg = self.cfg
        metrics = self._evaluate(info, logger, self.output_dir / "eval")
        self.issues.merge(_merged(self.seen))
        summary = {
            "backbone": self.model.backbone_name, "dataset": cfg.data.dataset, "train_splits": self.train_src.name,
            "test_split": self.test_src.name if self.test_src is not None else None, "iters": self.iteration,
            "checkpoint": str(self.output_dir / FINAL_WEIGHTS), "train_state": self.last_good,
            "weights_source": cfg.model.weights, "weights_meta": self.model.weights_meta.to_dict(),
            "metrics": {section: {k: v for k, v in values.items() if not k.startswith("per_class")}
                        for section, values in metrics.items() if section != "meta"},
            "lr": self.lr, "global_batch": cfg.solver.ims_per_batch, "world_size": info.world_size,
            "skipped_steps": self.guard.skipped_total, "data_issues": self.issues.as_dict(), "seed": cfg.seed,
            "wall_time_s": round(time.time() - self.started, 1),
        }
        if info.is_main:
            assert_finite_state(self.model.state_dict())
            save_detector(self.output_dir / FINAL_WEIGHTS, self.model, cfg, self.train_src.categories,
                          {"metrics": summary["metrics"], "iters": self.iteration})
            atomic_write_json(self.output_dir / "final.json", summary)
            report = self.issues.summary(f"{self.train_src.name} (training)")
            if report:
                print(report, file=sys.stderr)
            bbox = metrics.get("bbox", {})
            ap = ", ".join(f"{k} {bbox[k]:.1f}" for k in ("AP", "AP50") if bbox.get(k) is not None)
            _log(f"done: {ap or 'no evaluation'}; {self.output_dir / 'final.json'}", info)
        barrier()
        return summary

    def _state(self, info: DistInfo) -> Dict[str, Any]:
        return {
            "format": TRAIN_STATE_FORMAT, "iteration": self.iteration, "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(), "scaler": self.scaler.state_dict(),
            "nan_guard": self.guard.state_dict(),
            "rng": all_gather_objects(get_rng_state()),  # every process's generators: each resumes its own
            "world_size": info.world_size, "data_issues": _merged(self.seen).state_dict(),
        }

    def _restore(self, state: Dict[str, Any], info: DistInfo) -> None:
        self.model.load_state_dict(state["model"])
        saved = [len(g["params"]) for g in state["optimizer"]["param_groups"]]
        built = [len(g["params"]) for g in self.optimizer.param_groups]
        if saved != built:  # torch's own message names neither the file nor the cause
            raise ConfigError(f"{self.last_good}: its optimizer has parameter groups of sizes {saved}, "
                              f"this config builds {built}; solver.freeze_pretrained_iters, model.trunk_output_rms, "
                              f"model.freeze_at and the model keys must be those the run started with "
                              f"({self.output_dir / 'config.yaml'})")
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.guard.load_state_dict(state.get("nan_guard", {}))
        if info.is_main:  # the checkpoint holds every process's loader problems
            self.seen.load_state_dict(state.get("data_issues", {}))
        rng = state["rng"]
        if len(rng) != info.world_size:
            _log(f"checkpoint was written by {len(rng)} process(es), now {info.world_size}: the run continues but "
                 f"is no longer bit-identical to an uninterrupted one", info)
        set_rng_state(rng[info.rank] if len(rng) == info.world_size else rng[0])
        self.iteration = int(state["iteration"])
