"""The rehearsal's pass/fail checks, as pure functions of what was measured (so each can be tested on its own).

Each returns a dict with ``passed`` (bool) and the numbers it decided on.
"""
import hashlib
import json
from pathlib import Path
from statistics import median
from typing import Dict, Iterable, List, Mapping, Sequence

MEMORY_GROWTH_LIMIT_PCT = 5.0
WARMUP_FRACTION = 0.2  # of the training segment's iterations: allocator pools, lazily built caches, worker start
WINDOW_FRACTION = 0.15  # of the segment's iterations, for the "after warm-up" and "at the end" medians
LINEAR_LIMIT = 2.0  # largest allowed ratio of per-item times, larger size / smaller size (4x the items)

RUN_FOLDER_ENTRIES = ("config.yaml", "metrics.jsonl", "tb", "checkpoints", "model_final.pth", "final.json",
                      "eval/metrics.json", "eval/coco_instances_results.json", "report/report.html",
                      "report/report.md")


def memory_growth(samples: Sequence[Mapping], first_iter: int, last_iter: int,
                  limit_pct: float = MEMORY_GROWTH_LIMIT_PCT) -> Dict[str, object]:
    """Growth of the process tree's memory over a training segment, after its warm-up.

    ``samples`` carry ``tag`` = the newest logged training iteration when taken (None before the first log line)
    and ``bytes``. The segment's iterations run from ``first_iter`` to ``last_iter``; samples tagged ``last_iter``
    or later belong to the final evaluation and are left out. Growth = median over the window just after the
    warm-up (``WARMUP_FRACTION``) vs median over the last window, in percent of the former.
    """
    span = max(last_iter - first_iter, 1)
    start = first_iter + WARMUP_FRACTION * span
    window = WINDOW_FRACTION * span
    early = [s["bytes"] for s in samples if s.get("tag") is not None and start <= s["tag"] <= start + window]
    late = [s["bytes"] for s in samples if s.get("tag") is not None and last_iter - window <= s["tag"] < last_iter]
    training = [s["bytes"] for s in samples if s.get("tag") is not None and s["tag"] < last_iter]
    out = {"limit_pct": limit_pct, "first_iter": first_iter, "last_iter": last_iter,
           "samples_early": len(early), "samples_late": len(late)}
    if not early or not late:
        return {**out, "passed": False, "growth_pct": None,
                "detail": "too few memory samples in the windows (training segment too short for the interval)"}
    base, end = median(early), median(late)
    growth = 100.0 * (end - base) / base
    return {**out, "passed": growth < limit_pct, "growth_pct": round(growth, 2), "after_warmup_mb": base / 2 ** 20,
            "end_mb": end / 2 ** 20, "peak_training_mb": max(training) / 2 ** 20}


def linear_in_size(seconds: Mapping[int, float], limit: float = LINEAR_LIMIT) -> Dict[str, object]:
    """Whether time per item stays flat between the smallest and largest size: per-item time ratio < ``limit``.

    Linear work gives ~1 (fixed costs make it < 1); quadratic work gives the size ratio (4 for 1,250 vs 5,000).
    """
    sizes = sorted(int(n) for n in seconds)
    small, large = sizes[0], sizes[-1]
    ratio = (seconds[large] / large) / (seconds[small] / small)
    return {"passed": ratio < limit, "per_item_time_ratio": round(ratio, 3), "size_ratio": large / small,
            "limit": limit, "seconds": {str(n): round(seconds[n], 3) for n in sizes}}


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def same_evaluation(eval_dirs: Mapping[str, Path]) -> Dict[str, object]:
    """Whether evaluation folders (keyed by a label such as "1 process") hold identical COCO metrics (all numbers,
    per-class AP included) and byte-identical detection results files."""
    metrics, digests = {}, {}
    for label, folder in eval_dirs.items():
        folder = Path(folder)
        bbox = json.loads((folder / "metrics.json").read_text())["bbox"]
        metrics[label] = {k: v for k, v in bbox.items() if k != "evaluator"}
        digests[label] = _file_digest(folder / "coco_instances_results.json")
    labels = list(eval_dirs)
    first = labels[0]
    differing = sorted({k for label in labels[1:] for k in set(metrics[first]) | set(metrics[label])
                        if metrics[first].get(k) != metrics[label].get(k)})
    results_equal = len(set(digests.values())) == 1
    return {"passed": not differing and results_equal, "differing_metrics": differing,
            "results_files_identical": results_equal,
            "AP": {label: metrics[label].get("AP") for label in labels},
            "num_detections": {label: metrics[label].get("num_detections") for label in labels}}


def run_folder_complete(run_dir: Path, entries: Iterable[str] = RUN_FOLDER_ENTRIES) -> Dict[str, object]:
    run_dir = Path(run_dir)
    missing = [e for e in entries if not (run_dir / e).exists()]
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("model_*.pth"))
    if not checkpoints:
        missing.append("checkpoints/model_*.pth")
    return {"passed": not missing, "missing": missing, "checkpoints": checkpoints}


def resume_consistent(records: List[Mapping], resumed_at: int, killed_after: int, max_iter: int,
                      log_period: int, final_iters: int) -> Dict[str, object]:
    """After a kill and ``--resume``: the run resumed from the newest checkpoint written before the kill
    (``killed_after``), finished all iterations, and its metrics log holds every logging iteration exactly once."""
    logged = [int(r["iter"]) for r in records if "loss" in r]
    expected = list(range(log_period, max_iter + 1, log_period))
    if max_iter % log_period:
        expected.append(max_iter)
    problems = []
    if resumed_at != killed_after:
        problems.append(f"resumed at iteration {resumed_at}, but the newest checkpoint before the kill was "
                        f"{killed_after}")
    if final_iters != max_iter:
        problems.append(f"final.json says {final_iters} iterations, expected {max_iter}")
    if logged != expected:
        duplicated = sorted({i for i in logged if logged.count(i) > 1})
        absent = sorted(set(expected) - set(logged))
        problems.append(f"metrics.jsonl training lines: duplicated {duplicated[:10]}, missing {absent[:10]}")
    return {"passed": not problems, "resumed_at": resumed_at, "newest_checkpoint_before_kill": killed_after,
            "problems": problems}
