"""The rehearsal: a COCO-shaped dataset through the real tools, with 2 processes, a kill and ``--resume``.

Phases (each timed): generate the data; time dataset indexing at two sizes; ``tools/train_det.py`` under torchrun
(gloo) until a checkpoint is written and a few iterations more, then SIGKILL the whole process group; the same
command with ``--resume`` to the end, which evaluates all validation images gathered across the ranks;
``tools/report.py``; the same weights evaluated in one process (all images, and a quarter of them for the scaling
check). Memory of the process tree is sampled throughout (``memory.MemorySampler``). ``checks.py`` decides.

Faults can be planted through ``env`` (environment of the launched tools, e.g. a ``PYTHONPATH`` holding a
``sitecustomize`` that patches the library) and by patching the library in this process (indexing, 1-process
evaluation); tests/test_rehearsal.py does both.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch

from backbones.utils.atomic_io import atomic_write_json, atomic_write_text
from backbones.utils.metrics_log import read_metrics
from detection.data import DataIssues, DetectionDataset, TrainAugmentation
from detection.data.coco import load_coco_json
from detection.engine.evaluate import evaluate_checkpoint

from . import checks
from .coco_shaped import describe, generate_split, write_split
from .memory import MemorySampler, process_tree
from .summary import markdown_section

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "detection" / "rehearsal_resnet20.yaml"


class RehearsalError(RuntimeError):
    """A tool the rehearsal launched failed (the message holds the end of its log)."""


@dataclass
class RehearsalPlan:
    train_images: int = 5000
    val_images: int = 5000
    index_sizes: Tuple[int, int] = (29572, 118287)  # a quarter of COCO train2017, and all of it
    iterations: int = 300
    checkpoint_period: int = 50
    log_period: int = 10
    kill_after_checkpoint: int = 100  # SIGKILL once this checkpoint exists and 2 more log lines were written
    nproc: int = 2
    sample_interval_s: float = 1.0
    index_repeats: int = 2
    seed: int = 0
    overrides: List[str] = field(default_factory=list)


QUICK = RehearsalPlan(train_images=48, val_images=40, index_sizes=(1000, 4000), iterations=60, checkpoint_period=10,
                      log_period=2, kill_after_checkpoint=10, sample_interval_s=0.25, index_repeats=2)


def _last_training_iteration(run_dir: Path) -> Optional[int]:
    path = run_dir / "metrics.jsonl"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "loss" in record:
            return int(record["iter"])
    return None


def kill_tree(proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    """SIGKILL ``proc`` and every descendant at once, as a preempted node loses them (torchrun starts its workers
    in their own process groups, so killing its group alone would leave them running), and wait until all are gone."""
    pids = process_tree(proc.pid)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    deadline = time.time() + timeout_s
    while time.time() < deadline and any(Path(f"/proc/{pid}").exists() and _alive(pid) for pid in pids):
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie is dead; it only waits for its parent


def time_indexing(ann_file: Path, image_dir: Path, repeats: int = 1) -> float:
    """Best-of-``repeats`` seconds to index a COCO-format training split as ``train_det.py`` does: parse and check
    the JSON, build the training dataset (crowd boxes out, empty images left out) and its aspect groups."""
    best = float("inf")
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        issues = DataIssues("skip")
        source = load_coco_json(ann_file, image_dir, issues)
        dataset = DetectionDataset(source, True, TrainAugmentation([60], 100, 0.5), issues=issues)
        dataset.aspect_groups()
        best = min(best, time.perf_counter() - start)
    return best


class Rehearsal:
    """Runs every phase into ``output_dir`` and returns the summary (also written to ``summary.json``).

    Args:
        plan: counts and schedule (``RehearsalPlan()`` = COCO counts; ``QUICK`` for tests).
        env: extra environment for the launched tools (the fault-injection seam of the tests).
        log: progress messages.
    """

    def __init__(self, output_dir, plan: RehearsalPlan = RehearsalPlan(), env: Optional[Dict[str, str]] = None,
                 log: Callable[[str], None] = print):
        self.root, self.plan, self.log = Path(output_dir), plan, log
        self.env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), **(env or {})}
        self.phases: Dict[str, float] = {}
        self.memory: List[dict] = []
        self.t0 = time.time()

    # -- phases -------------------------------------------------------------------------------------------------
    def _timed(self, name: str, fn, *args, **kwargs):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        self.phases[name] = round(time.perf_counter() - start, 2)
        self.log(f"[rehearsal] {name}: {self.phases[name]:.1f} s")
        return result

    def generate(self) -> Dict[str, dict]:
        """Training and validation sets (reused when an earlier rehearsal generated the same ones)."""
        data = self.root / "data"
        spec = {"train": self.plan.train_images, "val": self.plan.val_images, "seed": self.plan.seed, "version": 1}
        stamp = data / "spec.json"
        if stamp.is_file() and json.loads(stamp.read_text()) == spec:
            self.log("[rehearsal] reusing the generated dataset in " + str(data))
        else:
            shutil.rmtree(data, ignore_errors=True)
            write_split(data, "train", self.plan.train_images, self.plan.seed + 1)
            write_split(data, "val", self.plan.val_images, self.plan.seed + 2, first_id=10 ** 7)
            atomic_write_text(stamp, json.dumps(spec))
        return {split: describe(json.loads(self.ann(split).read_text())) for split in ("train", "val")}

    def ann(self, split: str) -> Path:
        return self.root / "data" / "annotations" / f"instances_{split}.json"

    def images(self, split: str) -> Path:
        return self.root / "data" / split

    def index_scaling(self) -> Dict[int, float]:
        """Indexing seconds at the plan's two sizes (annotation files only: indexing reads no pixels)."""
        folder = self.root / "index"
        seconds = {}
        for n in self.plan.index_sizes:
            ann = folder / f"instances_{n}.json"
            if not ann.is_file():
                data, _ = generate_split(folder / "images", n, self.plan.seed + 3, write_images=False)
                folder.mkdir(parents=True, exist_ok=True)
                atomic_write_text(ann, json.dumps(data))
            seconds[n] = time_indexing(ann, folder / "images", self.plan.index_repeats)
            self.log(f"[rehearsal] indexing {n} images: {seconds[n]:.2f} s")
        return seconds

    def train_command(self, resume: bool) -> List[str]:
        p = self.plan
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(p.nproc),
                   str(REPO / "tools" / "train_det.py"), "--config", str(CONFIG),
                   "--ann", str(self.ann("train")), "--images", str(self.images("train")),
                   "--val-ann", str(self.ann("val")), "--val-images", str(self.images("val")),
                   "--output-dir", str(self.run_dir), f"solver.max_iter={p.iterations}",
                   f"solver.steps=[{int(p.iterations * 0.75)}]", f"solver.checkpoint_period={p.checkpoint_period}",
                   f"solver.log_period={p.log_period}", f"solver.ims_per_batch={2 * p.nproc}", f"seed={p.seed}",
                   "solver.keep_last=100", "device=cpu", *p.overrides]  # a CPU rehearsal, even next to a GPU
        return command + (["--resume"] if resume else [])

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    def _launch(self, name: str, command: List[str], until: Optional[Callable[[], bool]] = None) -> dict:
        """Run ``command`` in its own process group with memory sampling; with ``until``, SIGKILL the group as soon
        as ``until()`` holds. Returns timing, exit code and the memory samples."""
        logs = self.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_file = logs / f"{name}.log"
        start = time.time()
        with open(log_file, "wb") as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=REPO,
                                    start_new_session=True)
            killed = False
            with MemorySampler(proc.pid, self.plan.sample_interval_s, lambda: _last_training_iteration(self.run_dir),
                               name, t0=self.t0) as sampler:
                try:
                    while proc.poll() is None:
                        if until is not None and until():
                            kill_tree(proc)
                            killed = True
                            break
                        time.sleep(0.2)
                finally:
                    if proc.poll() is None:  # interrupted (Ctrl-C): take the whole tree down with us
                        kill_tree(proc)
        self.memory.extend(sampler.samples)
        text = log_file.read_text(errors="replace")
        if not killed and proc.returncode != 0:
            raise RehearsalError(f"{name} exited with {proc.returncode}; end of {log_file}:\n{text[-3000:]}")
        return {"seconds": time.time() - start, "killed": killed, "returncode": proc.returncode,
                "samples": sampler.samples, "log": text}

    def _checkpoints(self) -> List[int]:
        return sorted(int(p.stem.split("_")[1]) for p in (self.run_dir / "checkpoints").glob("model_*.pth"))

    def train_with_kill(self) -> dict:
        p = self.plan
        shutil.rmtree(self.run_dir, ignore_errors=True)
        kill_at = p.kill_after_checkpoint + 2 * p.log_period

        def past_checkpoint() -> bool:
            done = _last_training_iteration(self.run_dir)
            return done is not None and done >= kill_at and p.kill_after_checkpoint in self._checkpoints()

        first = self._launch("train_until_kill", self.train_command(False), until=past_checkpoint)
        if not first["killed"]:
            raise RehearsalError("training finished before the planned kill; raise iterations or lower "
                                 "kill_after_checkpoint")
        killed_after = max(self._checkpoints())
        self.phases["train_until_kill"] = round(first["seconds"], 2)
        self.log(f"[rehearsal] killed at iteration ~{_last_training_iteration(self.run_dir)} "
                 f"(newest checkpoint {killed_after})")
        second = self._launch("train_resumed", self.train_command(True))
        resumed_at = None
        for line in second["log"].splitlines():
            if "resumed from" in line and "at iteration" in line:
                resumed_at = int(line.rsplit("at iteration", 1)[1].split()[0])
        # The resumed run's own split: training until the last iteration is logged, then the final evaluation.
        end_of_training = min((s["t"] for s in second["samples"] if s["tag"] == p.iterations), default=None)
        start_t = second["samples"][0]["t"] if second["samples"] else 0.0
        end_t = second["samples"][-1]["t"] if second["samples"] else 0.0
        if end_of_training is not None:
            self.phases["train_resumed"] = round(end_of_training - start_t, 2)
            self.phases["eval_2proc"] = round(end_t - end_of_training, 2)
        else:
            self.phases["train_resumed"] = round(second["seconds"], 2)
        return {"first": first, "second": second, "killed_after": killed_after, "resumed_at": resumed_at}

    def report(self) -> None:
        command = [sys.executable, str(REPO / "tools" / "report.py"), str(self.run_dir), "-o",
                   str(self.run_dir / "report")]
        self._launch("report", command)

    def evaluate_one_process(self, max_images: int = 0, output_dir=None) -> dict:
        # Same threads per process as the launched ranks: a different count changes float reductions in the convs,
        # so the detections would differ by rounding for a reason other than the world size.
        threads = torch.get_num_threads()
        torch.set_num_threads(int(self.env["OMP_NUM_THREADS"]))
        try:
            return self._evaluate_checkpoint(max_images, output_dir)
        finally:
            torch.set_num_threads(threads)

    def _evaluate_checkpoint(self, max_images: int, output_dir) -> dict:
        return evaluate_checkpoint(self.run_dir / "model_final.pth",
                                   {"test_ann_file": str(self.ann("val")), "test_image_dir": str(self.images("val"))},
                                   output_dir=output_dir, device="cpu", max_images=max_images, progress=False)

    # -- everything ---------------------------------------------------------------------------------------------
    def run(self) -> dict:
        p = self.plan
        self.root.mkdir(parents=True, exist_ok=True)
        datasets = self._timed("generate", self.generate)
        index_seconds = self._timed("index", self.index_scaling)
        training = self.train_with_kill()
        self._timed("report", self.report)
        small = max(p.val_images // 4, 1)
        eval_seconds = {}
        start = time.perf_counter()
        self.evaluate_one_process(max_images=small)
        eval_seconds[small] = time.perf_counter() - start
        self.phases["eval_1proc_small"] = round(eval_seconds[small], 2)
        eval_1proc = self.root / "eval_1proc"
        shutil.rmtree(eval_1proc, ignore_errors=True)
        start = time.perf_counter()
        self.evaluate_one_process(output_dir=eval_1proc)
        eval_seconds[p.val_images] = time.perf_counter() - start
        self.phases["eval_1proc"] = round(eval_seconds[p.val_images], 2)
        self.log(f"[rehearsal] 1-process evaluation: {eval_seconds}")
        return self.summarize(datasets, index_seconds, eval_seconds, training, eval_1proc)

    def summarize(self, datasets, index_seconds, eval_seconds, training, eval_1proc) -> dict:
        p = self.plan
        second = training["second"]
        records = read_metrics(self.run_dir)
        final = json.loads((self.run_dir / "final.json").read_text())
        resumed_at = training["resumed_at"] if training["resumed_at"] is not None else -1
        results = {
            "memory": checks.memory_growth(second["samples"], resumed_at, p.iterations),
            "eval_equal_across_world_sizes": checks.same_evaluation(
                {f"{p.nproc} processes": self.run_dir / "eval", "1 process": eval_1proc}),
            "index_linear": checks.linear_in_size(index_seconds),
            "eval_linear": checks.linear_in_size(eval_seconds),
            "resume": checks.resume_consistent(records, resumed_at, training["killed_after"], p.iterations,
                                               p.log_period, final["iters"]),
            "run_folder": checks.run_folder_complete(self.run_dir),
        }
        first_segment = checks.memory_growth(training["first"]["samples"], 0, training["killed_after"])
        times = [r["time_per_iter"] for r in records if "time_per_iter" in r]
        times = sorted(times)[len(times) // 4:] or times  # the first logging windows include start-up
        images_per_iter = 2 * p.nproc
        train_ips = images_per_iter / (sum(times) / len(times)) if times else None
        peak = max((s["bytes"] for s in self.memory), default=0)
        summary = {
            "train_images": datasets["train"]["images"], "val_images": datasets["val"]["images"],
            "datasets": datasets, "plan": asdict(p), "nproc": p.nproc,
            "memory_growth_pct": results["memory"]["growth_pct"],
            "memory_growth_first_segment_pct": first_segment["growth_pct"],
            "memory_kind": self.memory[0]["kind"] if self.memory else None,
            "peak_memory_mb": round(peak / 2 ** 20, 1),
            "eval_equal_across_world_sizes": results["eval_equal_across_world_sizes"]["passed"],
            "index_seconds": {str(n): round(s, 3) for n, s in index_seconds.items()},
            "eval_seconds": {str(n): round(s, 2) for n, s in eval_seconds.items()},
            "resume_ok": results["resume"]["passed"],
            "phases_s": self.phases,
            "images_per_s": {
                "generate": round((p.train_images + p.val_images) / self.phases["generate"], 1)
                if self.phases.get("generate") else None,
                "train": round(train_ips, 2) if train_ips else None,
                "eval_2proc": (round(p.val_images / self.phases["eval_2proc"], 2)
                               if self.phases.get("eval_2proc") else None),
                "eval_1proc": round(p.val_images / eval_seconds[p.val_images], 2),
            },
            "final_AP": final["metrics"].get("bbox", {}).get("AP"),
            "checks": results,
            "checks_passed": all(r["passed"] for r in results.values()),
            "wall_s": round(time.time() - self.t0, 1),
        }
        with open(self.root / "memory.jsonl", "w") as f:
            for s in self.memory:
                f.write(json.dumps(s) + "\n")
        atomic_write_json(self.root / "summary.json", summary)
        atomic_write_text(self.root / "summary.md", markdown_section(summary))
        return summary
