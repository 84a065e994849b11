"""What an evaluation leaves in ``RUN_DIR/eval/``: metrics.json, pr_curves.json and the results files.

``metrics.json`` (numbers in %, ``null`` where a metric is undefined, e.g. a class without ground truth)::

    {"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
              "per_class": {name: {"AP", "AP50"}}, "num_images", "num_detections", "evaluator"},
     "voc":  {"mAP_07", "mAP_area", "per_class_07", "per_class_area", "num_positives", "num_images",
              "num_detections", "iou_threshold"},
     "meta": {...}}        # optional: what was evaluated (checkpoint, iteration, dataset)

Sections written by other evaluators earlier into the same folder are kept, so COCO-style and VOC metrics of one
dataset can sit side by side.
"""
import json
import math
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from backbones.utils.atomic_io import atomic_write_json

from .base import DatasetEvaluator

METRICS_FILE = "metrics.json"
PR_CURVES_FILE = "pr_curves.json"


def write_eval_outputs(eval_dir, evaluators: Iterable[DatasetEvaluator], meta: Optional[dict] = None) -> dict:
    """Write metrics.json and pr_curves.json (atomically) and each evaluator's results files into ``eval_dir``.

    Call on rank 0 after ``evaluate()`` (an evaluator given ``output_dir`` does this itself). Returns the merged
    metrics dict that was written.
    """
    eval_dir = Path(eval_dir)
    metrics: Dict[str, dict] = {}
    curves: Dict[str, dict] = {}
    files: List[str] = []
    for evaluator in evaluators:
        if not evaluator.metrics:
            raise RuntimeError(f"{type(evaluator).__name__} has no metrics to write; call evaluate() first "
                               f"(on rank 0)")
        metrics.update(evaluator.metrics)
        curves.update(evaluator.pr_curves)
        files += [Path(p).relative_to(eval_dir).as_posix() for p in evaluator.write_results(eval_dir)]
    if files:
        meta = dict(meta or {}, results_files=files)
    return write_metrics_sections(eval_dir, metrics, curves, meta)


def write_metrics_sections(eval_dir, metrics: Dict[str, dict], pr_curves: Dict[str, dict],
                           meta: Optional[dict] = None) -> dict:
    """Like ``write_eval_outputs`` for sections computed without an evaluator object (scoring a results file)."""
    eval_dir = Path(eval_dir)
    eval_dir.mkdir(parents=True, exist_ok=True)
    merged = read_json_object(eval_dir / METRICS_FILE)
    merged.update(metrics)
    if meta is not None:
        merged["meta"] = dict(meta)
    curves = read_json_object(eval_dir / PR_CURVES_FILE)
    curves.update(pr_curves)
    atomic_write_json(eval_dir / PR_CURVES_FILE, curves)
    atomic_write_json(eval_dir / METRICS_FILE, merged)
    return merged


def read_json_object(path: Path) -> dict:
    """A JSON file holding an object; {} when the file does not exist; a clear error when it is malformed."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def flatten_metrics(metrics: dict, prefix: str = "eval/") -> Dict[str, float]:
    """Scalar metrics as flat keys for metrics.jsonl / TensorBoard: ``eval/bbox/AP``, ``eval/voc/mAP_07`` ...

    Per-class tables and counts are left out; undefined (null) values are skipped.
    """
    flat = {}
    for section, values in metrics.items():
        if section == "meta" or not isinstance(values, dict):
            continue
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not key.startswith("num_") \
                    and key != "iou_threshold" and math.isfinite(value):
                flat[f"{prefix}{section}/{key}"] = float(value)
    return flat


def _fmt(value) -> str:
    return "  -  " if value is None else f"{value:5.1f}"


def format_metrics(metrics: dict) -> str:
    """Console summary of a metrics dict (the numbers of metrics.json, in %)."""
    lines = []
    if "bbox" in metrics:
        from .coco import COCO_STAT_NAMES

        bbox = metrics["bbox"]
        lines.append("COCO-style bbox (%): " + "  ".join(f"{k} {_fmt(bbox.get(k))}" for k in COCO_STAT_NAMES[:6]))
        lines.append("                     " + "  ".join(f"{k} {_fmt(bbox.get(k))}" for k in COCO_STAT_NAMES[6:]))
        for name, ap in bbox.get("per_class", {}).items():
            lines.append(f"  {name:>16s}  AP {_fmt(ap['AP'])}  AP50 {_fmt(ap['AP50'])}")
    if "voc" in metrics:
        voc = metrics["voc"]
        lines.append(f"PASCAL VOC (%): mAP (VOC07 11-point) {_fmt(voc.get('mAP_07'))}  "
                     f"mAP (area, VOC2010+) {_fmt(voc.get('mAP_area'))}")
        for name, ap07 in voc.get("per_class_07", {}).items():
            lines.append(f"  {name:>16s}  AP07 {_fmt(ap07)}  AP area {_fmt(voc['per_class_area'].get(name))}")
    return "\n".join(lines)
