"""Backbone-swap study: pretrain (or take given weights) → train_det → eval → report, for several arms and seeds.

A study file lists arms (``runs``); each arm is trained once per seed in ``seeds`` (a seed replicates the whole
chain: pretraining with ``train.seed``, detection with ``seed``), so the report can show each arm's mean and spread.
Every step runs as its own tool process (``tools/pretrain.py``, ``tools/train_det.py``, ``tools/report.py``) so a
study is exactly what a user would type by hand; ``jobs`` steps run at once, each with ``threads`` CPU threads. A step
whose ``final.json`` exists is skipped, and an interrupted step is continued with ``--resume``, so re-running a study
resumes it.
"""
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from backbones.utils.atomic_io import atomic_write_text
from backbones.utils.config import ConfigError, config_from_dict, load_config

TOOLS = Path(__file__).resolve().parents[1] / "tools"
MANIFEST = "study.json"

RUN_DEFAULTS = {
    "name": "",
    "backbone": "",
    # Backbone weights for detection: a weights source (torchvision, timm:..., a path) or null for scratch.
    # Ignored when `pretrain` is given: the pretraining run's model_final.pth is used.
    "weights": None,
    "pretrain": {"dataset": "", "config": "", "overrides": []},
    "detection": {"dataset": "digits", "config": "", "overrides": []},
    # An arm that trains nothing: the detectors of arm `arm` (same seeds), evaluated by tools/eval_det.py with
    # these overrides (test-time options such as test.box_refinement=true)
    "evaluate": {"arm": "", "overrides": []},
    # The paper's row this arm stands for, shown beside it in the report (e.g. Table 9's "+ box refinement")
    "paper": {"row": "", "AP50": 0.0, "AP": 0.0},
}
COMPARISON_DEFAULTS = {"arm": "", "baseline": "", "claim": ""}
STUDY_DEFAULTS = {
    "name": "study",
    "output_dir": "runs/study",
    "description": "",  # shown at the top of the report: what was shortened or shrunk, and why
    "seeds": [],  # empty: one run per arm with the configs' own seeds, in <output_dir>/<name>
    "jobs": 1,  # steps run at once
    "threads": 0,  # CPU threads per step (OMP_NUM_THREADS); 0 = cores // jobs, unless OMP_NUM_THREADS is set
    "overrides": [],
    "runs": [],
    "comparisons": [],  # [{arm, baseline, claim}]: differences the report states, or says are not resolved
}


@dataclass
class Step:
    kind: str  # "pretrain", "detect", "evaluate" or "report"
    run: str
    output_dir: Path
    argv: List[str]
    done: bool = False
    resume: bool = False
    depends_on: List[str] = field(default_factory=list)

    def command(self) -> List[str]:
        return [sys.executable, *self.argv, *(["--resume"] if self.resume else [])]


def load_study(path: str, overrides=()) -> dict:
    study = load_config(STUDY_DEFAULTS, path, overrides)
    if not study.runs:
        raise ConfigError(f"study {path} lists no runs")
    runs, names = [], set()
    for index, raw in enumerate(study.runs):
        run = config_from_dict(RUN_DEFAULTS, raw, f"{path} runs[{index}]")
        if run.evaluate.arm:
            source = next((r for r in runs if r.name == run.evaluate.arm), None)
            if source is None or source.evaluate.arm:
                raise ConfigError(f"study {path}: runs[{index}].evaluate.arm = {run.evaluate.arm!r} names no training "
                                  f"run listed before it (runs so far: {[r.name for r in runs]})")
            run.backbone = run.backbone or source.backbone
        if not run.name or not run.backbone:
            raise ConfigError(f"study {path}: runs[{index}] needs 'name' and 'backbone'")
        if run.name in names:
            raise ConfigError(f"study {path}: run name {run.name!r} is used twice")
        names.add(run.name)
        runs.append(run)
    study.runs = runs
    if any(not isinstance(s, int) or isinstance(s, bool) for s in study.seeds) or len(set(study.seeds)) != len(
            study.seeds):
        raise ConfigError(f"study {path}: 'seeds' must be distinct integers, got {study.seeds!r}")
    if study.jobs < 1 or study.threads < 0:
        raise ConfigError(f"study {path}: 'jobs' must be >= 1 and 'threads' >= 0 (got {study.jobs}, {study.threads})")
    comparisons = []
    for index, raw in enumerate(study.comparisons):
        comp = config_from_dict(COMPARISON_DEFAULTS, raw, f"{path} comparisons[{index}]")
        for key in ("arm", "baseline"):
            if comp[key] not in names:
                raise ConfigError(f"study {path}: comparisons[{index}].{key} = {comp[key]!r} names no run "
                                  f"(runs: {sorted(names)})")
        comparisons.append(comp)
    study.comparisons = comparisons
    return study


def _state(output_dir: Path, marker: str = "final.json"):
    """(done, resumable) for one step's output folder."""
    done = (output_dir / marker).is_file()
    started = (output_dir / "checkpoints").is_dir() and any((output_dir / "checkpoints").glob("model_*.pth"))
    return done, started and not done


def run_dirs(study) -> dict:
    """Arm name → its detection run folders (one per seed)."""
    root = Path(study.output_dir)
    if not study.seeds:
        return {run.name: [root / run.name] for run in study.runs}
    return {run.name: [root / run.name / f"seed{s}" for s in study.seeds] for run in study.runs}


def plan(study) -> List[Step]:
    """The steps of a study, seed by seed and each detector right after its pretraining (so parallel jobs finish
    whole chains early), then the report; completed steps are marked done."""
    root = Path(study.output_dir)
    steps: List[Step] = []
    pretrained = {}  # (backbone, dataset, config, overrides, seed) → pretraining output dir, shared between runs
    seeds = study.seeds or [None]
    folders = run_dirs(study)
    for index, seed in enumerate(seeds):
        for run in study.runs:
            out = folders[run.name][index]
            label = run.name if seed is None else f"{run.name} seed {seed}"
            if run.evaluate.arm:
                source = folders[run.evaluate.arm][index]
                argv = [str(TOOLS / "eval_det.py"), "--weights", str(source / "model_final.pth"), "-o", str(out),
                        "--no-report", *run.evaluate.overrides]
                steps.append(Step("evaluate", label, out, argv, _state(out, "eval/metrics.json")[0],
                                  depends_on=[str(source)]))
                continue
            weights: Optional[str] = run.weights
            depends = []
            if run.pretrain.dataset:
                key = (run.backbone, run.pretrain.dataset, run.pretrain.config, tuple(run.pretrain.overrides), seed)
                if key not in pretrained:
                    name = f"{run.pretrain.dataset}_{run.backbone}" + ("" if seed is None else f"_seed{seed}")
                    taken = {p.name for p in pretrained.values()}
                    name = name if name not in taken else f"{name}_{len(pretrained)}"
                    pre_out = root / "pretrain" / name
                    argv = [str(TOOLS / "pretrain.py"), "--arch", run.backbone, "--dataset", run.pretrain.dataset,
                            "--output-dir", str(pre_out)]
                    if run.pretrain.config:
                        argv += ["--config", run.pretrain.config]
                    argv += list(run.pretrain.overrides) + ([] if seed is None else [f"train.seed={seed}"])
                    steps.append(Step("pretrain", name, pre_out, argv, *_state(pre_out)))
                    pretrained[key] = pre_out
                weights = str(pretrained[key] / "model_final.pth")
                depends = [str(pretrained[key])]
            argv = [str(TOOLS / "train_det.py"), "--dataset", run.detection.dataset, "--backbone", run.backbone,
                    "--output-dir", str(out)]
            if weights:
                argv += ["--weights", weights]
            if run.detection.config:
                argv += ["--config", run.detection.config]
            argv += list(study.overrides) + list(run.detection.overrides) + ([] if seed is None else [f"seed={seed}"])
            steps.append(Step("detect", label, out, argv, *_state(out), depends_on=depends))
    report_dir = root / "report"
    argv = [str(TOOLS / "report.py"), "--study", str(root / MANIFEST), "-o", str(report_dir)]
    return steps + [Step("report", "all", report_dir, argv, depends_on=[str(s.output_dir) for s in steps])]


def manifest(study) -> dict:
    """What the report needs to group runs into arms and state the comparisons (written as <output_dir>/study.json)."""
    folders = run_dirs(study)
    return {
        "name": study.name,
        "description": study.description,
        "seeds": list(study.seeds),
        "arms": [{"name": r.name, "backbone": r.backbone, "init": _init_text(r),
                  "runs": [str(p) for p in folders[r.name]],
                  **({"paper": dict(r.paper)} if r.paper.row else {})} for r in study.runs],
        "comparisons": [dict(c) for c in study.comparisons],
    }


def _init_text(run) -> str:
    if run.evaluate.arm:
        return f"{run.evaluate.arm}'s detectors, " + " ".join(run.evaluate.overrides)
    return ("pretrained on " + run.pretrain.dataset) if run.pretrain.dataset else (run.weights or "scratch")


def step_env(study) -> dict:
    env = dict(os.environ)
    if study.threads:
        env["OMP_NUM_THREADS"] = str(study.threads)
    elif "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // study.jobs))
    return env


def run_study(study, dry_run: bool = False, log=print) -> List[Step]:
    steps = plan(study)
    if not dry_run:
        root = Path(study.output_dir)
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(root / MANIFEST, json.dumps(manifest(study), indent=1) + "\n")
    env = step_env(study)
    finished = {str(s.output_dir) for s in steps if s.done}
    pending = [s for s in steps if not s.done]
    for step in steps:
        if step.done:
            log(f"[study] {step.kind} {step.run}: done ({step.output_dir / 'final.json'}), skipped")
    if dry_run:
        for step in pending:
            log(f"[study] {step.kind} {step.run}: {shlex.join(step.command())}")
        return steps
    running = {}  # Popen → (step, log file or None, start time)
    try:
        while pending or running:
            ready = [s for s in pending if all(d in finished for d in s.depends_on)]
            while ready and len(running) < study.jobs:
                step = ready.pop(0)
                pending.remove(step)
                command = step.command()
                log(f"[study] {step.kind} {step.run}{' (resuming)' if step.resume else ''}: {shlex.join(command)}")
                out = None
                if study.jobs > 1:  # parallel steps: each writes its own log instead of interleaving on the terminal
                    step.output_dir.mkdir(parents=True, exist_ok=True)
                    out = open(step.output_dir / "log.txt", "a")
                    log(f"[study]   log: {step.output_dir / 'log.txt'}")
                running[subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT if out else None)] = (
                    step, out, time.time())
            if not running:
                raise RuntimeError("study steps wait for steps that never ran: " +
                                   ", ".join(f"{s.kind} {s.run}" for s in pending))
            time.sleep(0.2)
            for proc in [p for p in running if p.poll() is not None]:
                step, out, start = running.pop(proc)
                if out:
                    out.close()
                if proc.returncode != 0:
                    where = f" (log: {step.output_dir / 'log.txt'})" if out else ""
                    raise RuntimeError(
                        f"study step '{step.kind} {step.run}' failed with exit code {proc.returncode}{where}; fix "
                        f"the cause and run the study again: finished steps are skipped, this one resumes")
                log(f"[study] {step.kind} {step.run}: finished in {time.time() - start:.0f} s")
                finished.add(str(step.output_dir))
    finally:
        for proc, (step, out, _) in running.items():  # a failure or Ctrl-C stops the other running steps too
            proc.terminate()
            proc.wait()
            if out:
                out.close()
    return steps
