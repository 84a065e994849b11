"""Everything a report reads from one run folder, loaded with clear errors for malformed files.

Layout (written by tools/train_det.py and the evaluation library; every part is optional)::

    RUN_DIR/config.yaml          resolved config
    RUN_DIR/metrics.jsonl        one JSON object per line: training lines (iter, lr, loss, loss_*), eval lines
                                 (iter, eval/...)
    RUN_DIR/final.json           backbone, dataset, iters, checkpoint, weights_meta, ...
    RUN_DIR/eval/metrics.json    {"bbox": {...}, "voc": {...}}
    RUN_DIR/eval/pr_curves.json  {"bbox": {...}, "voc": {...}}
    RUN_DIR/eval/samples.json    + the images it lists
"""
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from ..evaluation.outputs import METRICS_FILE, PR_CURVES_FILE, read_json_object
from ..evaluation.samples import SAMPLES_FILE


@dataclass
class RunData:
    path: Path
    name: str
    config_text: Optional[str] = None
    config: Optional[dict] = None
    train_log: List[dict] = field(default_factory=list)
    eval_log: List[dict] = field(default_factory=list)
    final: Dict[str, Any] = field(default_factory=dict)
    metrics: Dict[str, Any] = field(default_factory=dict)
    pr_curves: Dict[str, Any] = field(default_factory=dict)
    samples: Optional[dict] = None

    @property
    def eval_dir(self) -> Path:
        return self.path / "eval"

    @property
    def backbone(self) -> str:
        model = (self.config or {}).get("model", {}) if isinstance(self.config, dict) else {}
        return str(self.final.get("backbone") or model.get("backbone") or "?")

    @property
    def dataset(self) -> str:
        data = (self.config or {}).get("data", {}) if isinstance(self.config, dict) else {}
        return str(self.final.get("dataset") or data.get("dataset") or "?")


def read_metrics_log(path: Path):
    """(training lines, evaluation lines) of a metrics.jsonl; a truncated last line (a run killed mid-write) is
    skipped, any other malformed line is an error naming it."""
    train, evals = [], []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines):
                continue
            raise ValueError(f"{path}:{number}: not a JSON object ({e})") from None
        if not isinstance(entry, dict) or "iter" not in entry:
            raise ValueError(f"{path}:{number}: expected a JSON object with an 'iter' key")
        if any(k.startswith("eval/") for k in entry):
            evals.append(entry)
        if "loss" in entry or "lr" in entry:
            train.append(entry)
    return train, evals


def load_run(run_dir) -> RunData:
    path = Path(run_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"run folder {path} not found")
    run = RunData(path=path, name=path.resolve().name)
    config_file = path / "config.yaml"
    if config_file.is_file():
        run.config_text = config_file.read_text()
        try:
            run.config = yaml.safe_load(run.config_text)
        except yaml.YAMLError as e:
            raise ValueError(f"{config_file}: not valid YAML ({e})") from None
    if (path / "metrics.jsonl").is_file():
        run.train_log, run.eval_log = read_metrics_log(path / "metrics.jsonl")
    run.final = read_json_object(path / "final.json")
    run.metrics = read_json_object(run.eval_dir / METRICS_FILE)
    run.pr_curves = read_json_object(run.eval_dir / PR_CURVES_FILE)
    run.samples = read_json_object(run.eval_dir / SAMPLES_FILE) or None
    if not (run.config_text or run.train_log or run.final or run.metrics):
        raise FileNotFoundError(f"{path} holds none of config.yaml, metrics.jsonl, final.json, eval/metrics.json; "
                                f"is it a run folder?")
    return run
