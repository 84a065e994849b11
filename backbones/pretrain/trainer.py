"""The pretraining loop: iteration-based SGD with exact resume, DDP, AMP, NaN guard, logging and final report.

Outputs in the run folder: ``config.yaml`` (resolved config), ``metrics.jsonl`` + ``tb/`` (per logged iteration
``iter, lr, loss, train_err``; evaluation lines ``eval/top1_err, eval/top5_err``), ``model_<iter>.pth`` training
checkpoints (last ``train.keep_last`` kept, ``last_checkpoint`` names the newest), ``model_final.pth`` (weights and
metadata only) and ``final.json``.
"""
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from ..utils.atomic_io import atomic_write_json, atomic_write_text
from ..utils.checkpoint import CheckpointManager, save_checkpoint
from ..utils.config import Config
from ..utils.dist import (DistInfo, all_gather_objects, all_reduce_sum, barrier, cleanup, init_distributed,
                          linear_scaled_lr, per_process_batch)
from ..utils.metrics_log import MetricsLogger
from ..utils.numerics import NanGuard, assert_finite_state
from ..utils.progress import TrainingProgress
from ..utils.precision import autocast_dtype
from ..utils.rng import get_rng_state, seed_everything, seed_worker, set_rng_state
from ..utils.run_dir import prepare_run_dir
from .datasets import build_datasets_for
from .defaults import validate
from .error_window import ErrorWindow
from .evaluation import evaluate
from .model_io import build_classifier, checkpoint_dict, weights_meta
from .sampler import AugmentedDataset, EpochBatchSampler
from .schedule import LRSchedule
from .transforms import TrainTransform

FINAL_WEIGHTS = "model_final.pth"
# Warm-up "until training error < X" looks at this many recent iterations, so one lucky batch does not end it.
WARMUP_ERROR_WINDOW = 20


def _log(message: str, info: DistInfo) -> None:
    if info.is_main:
        print(f"[resdet] {message}", file=sys.stderr, flush=True)


def _worker_init(worker_id: int) -> None:
    """DataLoader workers: seeded, one torch thread each (the workers are the parallelism; more threads contend)."""
    seed_worker(worker_id)
    torch.set_num_threads(1)


def train_transform(cfg: Config) -> TrainTransform:
    a = cfg.augment
    return TrainTransform(scale=tuple(a.scale) if a.scale else None, crop=a.crop or None, pad=a.pad, flip=a.flip,
                          lighting=a.lighting, mean=a.mean, std=a.std)


def eval_settings(cfg: Config, protocol: Optional[str] = None) -> Dict[str, Any]:
    e = cfg.eval
    return dict(protocol=protocol or e.protocol, mean=cfg.augment.mean, std=cfg.augment.std, resize=e.resize,
                crop=e.crop, scales=e.scales, flip=e.flip, batch_size=e.batch_size, max_images=e.max_images,
                num_workers=cfg.data.num_workers)


class Trainer:
    """One pretraining run. ``run()`` trains to ``solver.max_iter`` (or ``stop_after`` iterations) and reports.

    Args:
        cfg: resolved config (``load_config(PRETRAIN_DEFAULTS, ...)``).
        output_dir: run folder.
        resume: continue from the newest readable checkpoint in ``output_dir`` (falling back to older ones).
        stop_after: stop (with a checkpoint) once this many iterations are done — for time-limited jobs and tests.
        datasets: (train, val) datasets of (image, label) items with a ``categories`` list, used instead of
            ``data.dataset`` (library use with your own data).
    """

    def __init__(self, cfg: Config, output_dir, resume: bool = False, stop_after: Optional[int] = None,
                 datasets: Optional[Tuple[Dataset, Dataset]] = None):
        self.cfg, self.output_dir, self.resume, self.stop_after = cfg, Path(output_dir), resume, stop_after
        self.datasets = datasets

    def run(self) -> Dict[str, Any]:
        cfg = self.cfg
        info = init_distributed(cfg.train.device, timeout_s=cfg.train.dist_timeout_s)
        try:
            validate(cfg, info.world_size)
            if info.is_main:
                prepare_run_dir(self.output_dir, self.resume)
            return self._run(info)
        finally:
            cleanup()

    def _run(self, info: DistInfo) -> Dict[str, Any]:
        cfg, s, t = self.cfg, self.cfg.solver, self.cfg.train
        device = info.device
        started, cpu_started = time.time(), time.process_time()
        seed_everything(t.seed)
        train_set, val_set = self.datasets or build_datasets_for(cfg.data)
        categories = train_set.categories
        model, model_kwargs = build_classifier(cfg.model.arch, len(categories), cfg.model.shortcut,
                                               cfg.model.stride_in_1x1, cfg.model.norm, cfg.model.zero_init_residual,
                                               cfg.model.width_mult)
        model.to(device)
        if t.channels_last:
            model.to(memory_format=torch.channels_last)
        net = model
        if info.world_size > 1:
            net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

        lr = linear_scaled_lr(s.base_lr, s.batch_size, s.reference_batch)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=s.momentum, weight_decay=s.weight_decay,
                                    nesterov=s.nesterov)
        schedule = LRSchedule(lr, s.policy, s.steps, s.gamma, s.warmup_iters, s.warmup_factor, s.warmup_method,
                              s.warmup_until_err, s.plateau_patience, s.plateau_threshold, s.plateau_max_drops)
        amp_dtype = autocast_dtype(t.amp, device)
        if amp_dtype is None and t.amp != "none":
            _log(f"train.amp={t.amp} is not supported on {device}; training in float32", info)
        scaler = torch.amp.GradScaler(device.type, enabled=t.amp == "fp16")
        guard = NanGuard(s.nan_policy, s.max_consecutive_skips, check_grads=not scaler.is_enabled())
        per_process = per_process_batch(s.batch_size, info.world_size, "solver.batch_size")
        sampler = EpochBatchSampler(len(train_set), s.batch_size, info.rank, info.world_size, t.seed)
        window = ErrorWindow(sampler.batches_per_epoch)

        manager = CheckpointManager(self.output_dir, t.keep_last)
        iteration, epoch, batch_in_epoch, last_good = 0, 0, 0, None
        if self.resume:
            path, state = manager.load_latest()
            if state is None:
                _log(f"--resume: no readable checkpoint in {self.output_dir}; starting from scratch", info)
            else:
                iteration, epoch, batch_in_epoch = self._restore(state, model, optimizer, schedule, scaler, guard,
                                                                 window, sampler, info)
                last_good = str(path)
                _log(f"resumed from {path} at iteration {iteration}", info)
        logger = MetricsLogger(self.output_dir, enabled=info.is_main)
        if self.resume:
            # A run resumed after its last iteration repeats the final evaluation; drop the old one.
            finished = iteration == s.max_iter
            logger.resume_at(iteration, keep_at=(lambda r: "eval/top1_err" not in r) if finished else None)
        if info.is_main:
            atomic_write_text(self.output_dir / "config.yaml", cfg.dump())

        sampler = EpochBatchSampler(len(train_set), s.batch_size, info.rank, info.world_size, t.seed, epoch,
                                    batch_in_epoch)
        # A private generator keeps the DataLoader from drawing on the global RNG (restored on resume).
        loader = DataLoader(AugmentedDataset(train_set, train_transform(cfg), t.seed), batch_sampler=sampler,
                            num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda",
                            worker_init_fn=_worker_init, generator=torch.Generator().manual_seed(t.seed),
                            persistent_workers=cfg.data.num_workers > 0)
        meta_args = (cfg.model.arch, cfg.data.dataset, model, cfg.augment.mean, cfg.augment.std, categories)

        def save(at: int, ep: int, b: int) -> Path:
            state = self._state(model, optimizer, schedule, scaler, guard, window, at, ep, b, sampler, info)
            if info.is_main:
                assert_finite_state(state["model"])
                checkpoint = checkpoint_dict(cfg.model.arch, state.pop("model"), weights_meta(*meta_args),
                                             model_kwargs, **state)
                manager.save(checkpoint, at)
            barrier()
            return manager.path_for(at)

        autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else nullcontext
        progress = TrainingProgress(s.max_iter, iteration, f"{cfg.model.arch} on {cfg.data.dataset}",
                                    enabled=t.progress and info.is_main)
        loss_sum, loss_count = 0.0, 0
        net.train()
        data = iter(loader)
        while iteration < s.max_iter:
            if self.stop_after is not None and iteration >= self.stop_after:
                break
            images, labels = next(data)
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            if t.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            current_lr = schedule.lr(iteration)
            for group in optimizer.param_groups:
                group["lr"] = current_lr
            # Forward passes update BN running statistics; a skipped step must not keep NaNs from a bad batch.
            saved_buffers = [b.detach().clone() for b in model.buffers()] if s.nan_policy == "skip" else None
            with autocast():
                logits = net(images)
            loss = F.cross_entropy(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if guard.step_ok(iteration + 1, loss, model.parameters(), last_good):
                scaler.step(optimizer)
                scaler.update()
                stats = torch.tensor([loss.item() * len(labels), (logits.argmax(1) == labels).sum().item(),
                                      len(labels)], dtype=torch.float64, device=device)
                batch_loss, correct, seen = all_reduce_sum(stats).tolist()
                window.add(correct, seen)
                loss_sum, loss_count = loss_sum + batch_loss, loss_count + seen
                schedule.observe_train(iteration, window.error(WARMUP_ERROR_WINDOW))
            else:
                optimizer.zero_grad(set_to_none=True)
                with torch.no_grad():
                    for buffer, saved in zip(model.buffers(), saved_buffers):
                        buffer.copy_(saved)
                _log(f"iteration {iteration + 1}: non-finite loss/gradient, step skipped "
                     f"({guard.skipped_total} so far)", info)
            iteration += 1
            batch_in_epoch += 1
            if batch_in_epoch == sampler.batches_per_epoch:
                epoch, batch_in_epoch = epoch + 1, 0
            progress.update(1)

            if iteration % t.log_period == 0 or iteration == s.max_iter:
                mean_loss = loss_sum / loss_count if loss_count else float("nan")
                logger.log(iteration, lr=current_lr, loss=mean_loss, train_err=window.error(), epoch=epoch,
                           skipped_steps=guard.skipped_total)
                progress.log(loss=mean_loss, err=window.error(), lr=current_lr)
                loss_sum, loss_count = 0.0, 0
            if t.eval_period and iteration % t.eval_period == 0 and iteration < s.max_iter:
                result = evaluate(model, val_set, device=device, amp_dtype=amp_dtype, channels_last=t.channels_last,
                                  progress=t.progress and info.is_main,
                                  **eval_settings(cfg, cfg.eval.periodic_protocol or None))
                logger.log(iteration, **{"eval/top1_err": result["top1_err"], "eval/top5_err": result["top5_err"]})
                if schedule.observe_eval(result["top1_err"]):
                    _log(f"iteration {iteration}: validation error plateaued, lr divided by {1 / s.gamma:g}", info)
                net.train()
            if iteration % t.checkpoint_period == 0 or iteration == s.max_iter or iteration == self.stop_after:
                last_good = str(save(iteration, epoch, batch_in_epoch))
        progress.close()
        if iteration < s.max_iter:  # stopped by stop_after, with a checkpoint at that iteration
            logger.close()
            return {"stopped_at": iteration, "checkpoint": last_good}

        result = evaluate(model, val_set, device=device, amp_dtype=amp_dtype, channels_last=t.channels_last,
                          progress=t.progress and info.is_main, **eval_settings(cfg))
        logger.log(iteration, **{"eval/top1_err": result["top1_err"], "eval/top5_err": result["top5_err"]})
        logger.close()
        summary = {
            "arch": cfg.model.arch, "dataset": cfg.data.dataset, "iters": iteration,
            "train_err": window.error(), "top1_err": result["top1_err"], "top5_err": result["top5_err"],
            "protocol": result["protocol"], "eval_images": result["images"],
            "checkpoint": str(self.output_dir / FINAL_WEIGHTS), "train_state": last_good,
            "lr": lr, "global_batch": s.batch_size, "per_process_batch": per_process, "world_size": info.world_size,
            "epochs": iteration / sampler.batches_per_epoch, "skipped_steps": guard.skipped_total,
            "seed": t.seed, "wall_time_s": round(time.time() - started, 1),
            "cpu_time_s": round(time.process_time() - cpu_started, 1),
        }
        if info.is_main:
            extra = {k: summary[k] for k in ("iters", "train_err", "top1_err", "top5_err", "protocol")}
            state = model.state_dict()
            assert_finite_state(state)
            save_checkpoint(checkpoint_dict(cfg.model.arch, state, weights_meta(*meta_args, extra=extra),
                                            model_kwargs), self.output_dir / FINAL_WEIGHTS)
            atomic_write_json(self.output_dir / "final.json", summary)
            _log(f"done: train_err {summary['train_err']:.2f}%, top-1 {summary['top1_err']:.2f}%, "
                 f"top-5 {summary['top5_err']:.2f}% ({summary['protocol']}); {self.output_dir / 'final.json'}", info)
        barrier()
        return summary

    # ------------------------------------------------------------------------------------------ checkpoints
    @staticmethod
    def _state(model, optimizer, schedule, scaler, guard, window, iteration, epoch, batch_in_epoch, sampler,
               info) -> Dict[str, Any]:
        rng = all_gather_objects(get_rng_state())  # every rank's generators, so each resumes its own
        return {
            "model": model.state_dict(), "iteration": iteration, "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(), "scaler": scaler.state_dict(), "nan_guard": guard.state_dict(),
            "train_window": window.state_dict(), "rng": rng,
            "sampler": {"epoch": epoch, "index": batch_in_epoch, "batches_per_epoch": sampler.batches_per_epoch,
                        "global_batch": sampler.global_batch, "seed": sampler.seed},
            "world_size": info.world_size,
        }

    def _restore(self, state, model, optimizer, schedule, scaler, guard, window, sampler, info):
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        guard.load_state_dict(state.get("nan_guard", {}))
        window.load_state_dict(state["train_window"])
        rng = state["rng"]
        set_rng_state(rng[info.rank] if len(rng) == info.world_size else rng[0])
        position = state["sampler"]
        epoch, index = int(position["epoch"]), int(position["index"])
        if (position["global_batch"], position["batches_per_epoch"]) != (sampler.global_batch,
                                                                        sampler.batches_per_epoch):
            # The batch size changed: restart the epoch order at the same fraction of the epoch.
            index = index * sampler.batches_per_epoch // int(position["batches_per_epoch"])
            _log(f"global batch changed from {position['global_batch']} to {sampler.global_batch}; the epoch "
                 "continues from the same fraction (the run is no longer bit-identical to an uninterrupted one)",
                 info)
        return int(state["iteration"]), epoch, index
