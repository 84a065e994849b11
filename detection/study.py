"""Backbone-swap study: pretrain (or take given weights) → train_det → eval → report, for several backbones.

A study file lists runs; each step runs as its own tool process (``tools/pretrain.py``, ``tools/train_det.py``,
``tools/report.py``) so a study is exactly what a user would type by hand. A step whose ``final.json`` exists is
skipped, and an interrupted step is continued with ``--resume``, so re-running a study resumes it.
"""
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from backbones.utils.config import ConfigError, config_from_dict, load_config

TOOLS = Path(__file__).resolve().parents[1] / "tools"

RUN_DEFAULTS = {
    "name": "",
    "backbone": "",
    # Backbone weights for detection: a weights source (torchvision, timm:..., a path) or null for scratch.
    # Ignored when `pretrain` is given: the pretraining run's model_final.pth is used.
    "weights": None,
    "pretrain": {"dataset": "", "config": "", "overrides": []},
    "detection": {"dataset": "digits", "config": "", "overrides": []},
}
STUDY_DEFAULTS = {"name": "study", "output_dir": "runs/study", "overrides": [], "runs": []}


@dataclass
class Step:
    kind: str  # "pretrain", "detect" or "report"
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
        if not run.name or not run.backbone:
            raise ConfigError(f"study {path}: runs[{index}] needs 'name' and 'backbone'")
        if run.name in names:
            raise ConfigError(f"study {path}: run name {run.name!r} is used twice")
        names.add(run.name)
        runs.append(run)
    study.runs = runs
    return study


def _state(output_dir: Path):
    """(done, resumable) for one step's output folder."""
    done = (output_dir / "final.json").is_file()
    started = (output_dir / "checkpoints").is_dir() and any((output_dir / "checkpoints").glob("model_*.pth"))
    return done, started and not done


def plan(study) -> List[Step]:
    """The steps of a study in order, with completed ones marked done."""
    root = Path(study.output_dir)
    steps: List[Step] = []
    pretrained = {}  # (backbone, dataset, config, overrides) → pretraining output dir, shared between runs
    for run in study.runs:
        weights: Optional[str] = run.weights
        depends = []
        if run.pretrain.dataset:
            key = (run.backbone, run.pretrain.dataset, run.pretrain.config, tuple(run.pretrain.overrides))
            if key not in pretrained:
                name = f"{run.pretrain.dataset}_{run.backbone}"
                taken = {p.name for p in pretrained.values()}
                name = name if name not in taken else f"{name}_{len(pretrained)}"
                out = root / "pretrain" / name
                argv = [str(TOOLS / "pretrain.py"), "--arch", run.backbone, "--dataset", run.pretrain.dataset,
                        "--output-dir", str(out)]
                if run.pretrain.config:
                    argv += ["--config", run.pretrain.config]
                argv += list(run.pretrain.overrides)
                steps.append(Step("pretrain", run.name, out, argv, *_state(out)))
                pretrained[key] = out
            weights = str(pretrained[key] / "model_final.pth")
            depends = [str(pretrained[key])]
        out = root / run.name
        argv = [str(TOOLS / "train_det.py"), "--dataset", run.detection.dataset, "--backbone", run.backbone,
                "--output-dir", str(out)]
        if weights:
            argv += ["--weights", weights]
        if run.detection.config:
            argv += ["--config", run.detection.config]
        argv += list(study.overrides) + list(run.detection.overrides)
        steps.append(Step("detect", run.name, out, argv, *_state(out), depends_on=depends))
    report_dir = root / "report"
    argv = [str(TOOLS / "report.py"), *[str(root / r.name) for r in study.runs], "-o", str(report_dir)]
    steps.append(Step("report", "all", report_dir, argv))
    return steps


def run_study(study, dry_run: bool = False, log=print) -> List[Step]:
    steps = plan(study)
    for step in steps:
        if step.done:
            log(f"[study] {step.kind} {step.run}: done ({step.output_dir / 'final.json'}), skipped")
            continue
        command = step.command()
        log(f"[study] {step.kind} {step.run}{' (resuming)' if step.resume else ''}: {shlex.join(command)}")
        if dry_run:
            continue
        result = subprocess.run(command)
        if result.returncode != 0:
            raise RuntimeError(
                f"study step '{step.kind} {step.run}' failed with exit code {result.returncode}; "
                f"fix the cause and run the study again: finished steps are skipped, this one resumes"
            )
    return steps
