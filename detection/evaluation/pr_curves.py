"""Precision-recall curve data for reports: precision sampled at 101 recall points (0, 0.01, ..., 1) at IoU 0.5.

One section per metrics.json section (``bbox`` from COCOeval's accumulated precision, ``voc`` from the devkit
curves), written to ``pr_curves.json``::

    {"iou_threshold": 0.5, "recall": [101 values], "overall": [101 values],
     "per_class": {"cat": [101 values] | null, ...}}

Precision is interpolated the COCO way: at recall r it is the best precision reached at any recall >= r (0 when
r is never reached). ``overall`` averages the classes that have ground truth, which is what AP50 / mAP average.
"""
from typing import Dict, List, Optional, Sequence

import numpy as np

RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def interpolate_precision(recall: np.ndarray, precision: np.ndarray) -> List[float]:
    """Precision envelope of a raw (recall, precision) curve, sampled at ``RECALL_POINTS``."""
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    sampled = np.zeros(len(RECALL_POINTS))
    if len(recall):
        envelope = np.maximum.accumulate(precision[::-1])[::-1]
        # Same lookup as COCOeval.accumulate: first curve point whose recall reaches the threshold.
        idx = np.searchsorted(recall, RECALL_POINTS, side="left")
        reached = idx < len(recall)
        sampled[reached] = envelope[idx[reached]]
    return [float(v) for v in sampled]


def make_section(per_class: Dict[str, Optional[Sequence[float]]], iou_threshold: float = 0.5) -> dict:
    """Bundle per-class sampled curves (``None`` for a class without ground truth) with their mean curve."""
    valid = [np.asarray(c, dtype=np.float64) for c in per_class.values() if c is not None]
    overall = np.mean(valid, axis=0) if valid else np.zeros(len(RECALL_POINTS))
    return {
        "iou_threshold": iou_threshold,
        "recall": [round(float(r), 2) for r in RECALL_POINTS],
        "overall": [float(v) for v in overall],
        "per_class": {name: (None if c is None else [float(v) for v in c]) for name, c in per_class.items()},
    }


def section_from_coco_precision(precision: np.ndarray, iou_thresholds: np.ndarray, class_names: List[str]) -> dict:
    """PR section from COCOeval's ``eval["precision"]`` [T, R, K, A, M] (area "all", largest maxDets).

    ``class_names[k]`` names the k-th category of the evaluation (sorted category ids). Entries of -1 mark a
    category with no ground truth in the evaluated images.
    """
    t = int(np.argmin(np.abs(np.asarray(iou_thresholds) - 0.5)))
    per_class = {}
    for k, name in enumerate(class_names):
        curve = precision[t, :, k, 0, -1]
        per_class[name] = None if np.all(curve < 0) else np.clip(curve, 0.0, None)
    return make_section(per_class)
