"""PASCAL VOC detection AP with the official devkit's semantics (VOCevaldet.m, VOCap.m).

- Boxes are compared in devkit coordinates with +1 pixel widths: a 0-based continuous box (x1, y1, x2, y2) is the
  devkit box (x1 + 1, y1 + 1, x2, y2).
- Detections of a class are ranked by score (stable sort, so ties keep their order as MATLAB's ``sort`` does); each
  one takes the ground truth of its image with the highest IoU (the first one on equal IoU). IoU >= 0.5 on a
  non-difficult, not yet detected object is a true positive; on an already detected one a false positive
  (duplicate); on a ``difficult`` object the detection is ignored (neither). Below 0.5 it is a false positive.
- Difficult objects are not counted as positives. A class with no positives in the evaluated images has no AP
  (``None``) and is left out of the mean (the devkit would produce NaN).
- VOC2007 11-point AP: mean over t in MATLAB's ``0:0.1:1`` of the best precision at recall >= t; VOC2010+ area AP:
  the area under the monotone precision envelope.
"""
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from backbones.utils.dist import is_main_process

from .base import DatasetEvaluator, gather_predictions
from .pr_curves import interpolate_precision, make_section
from .voc_files import comp4_path, format_comp4_lines

VOC_IOU_THRESHOLD = 0.5
VOC_RESULTS_DIR = "voc_results"


def devkit_thresholds_11() -> np.ndarray:
    """MATLAB's ``0:0.1:1``: the first half is k * 0.1, the second half 1 - k * 0.1 (the colon operator builds
    ranges from both ends). So t = 0.3 is 0.30000000000000004, which a recall of exactly 3/10 does not reach, while
    t = 0.6 and 0.7 are the doubles nearest 0.6 and 0.7 (numpy's arange gives 0.6000000000000001 and
    0.7000000000000001 there)."""
    return np.array([k * 0.1 for k in range(6)] + [1 - k * 0.1 for k in range(4, -1, -1)])


def voc_ap_11point(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2007 AP: (1/11) * sum over t of max(precision[recall >= t]), 0 where no recall reaches t."""
    ap = 0.0
    for t in devkit_thresholds_11():
        reached = precision[recall >= t]
        ap += (reached.max() if reached.size else 0.0) / 11
    return float(ap)


def voc_ap_area(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2010+ AP (VOCap.m): sum of recall steps times the monotone precision envelope."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[steps] - mrec[steps - 1]) * mpre[steps]))


def devkit_overlaps(box: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
    """IoU of one box against ground-truth boxes, all 0-based continuous, computed as VOCevaldet.m does on devkit
    coordinates (+1 pixel widths); no overlap gives -inf (the devkit never updates its running max there)."""
    d = box + np.array([1.0, 1.0, 0.0, 0.0])
    g = gt_boxes + np.array([1.0, 1.0, 0.0, 0.0])
    iw = np.minimum(d[2], g[:, 2]) - np.maximum(d[0], g[:, 0]) + 1
    ih = np.minimum(d[3], g[:, 3]) - np.maximum(d[1], g[:, 1]) + 1
    union = (d[2] - d[0] + 1) * (d[3] - d[1] + 1) + (g[:, 2] - g[:, 0] + 1) * (g[:, 3] - g[:, 1] + 1) - iw * ih
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((iw > 0) & (ih > 0), iw * ih / union, -np.inf)


def match_class(det_image: np.ndarray, det_score: np.ndarray, det_box: np.ndarray,
                gt: Dict[int, Tuple[np.ndarray, np.ndarray]], iou_threshold: float = VOC_IOU_THRESHOLD):
    """Devkit matching for one class. ``gt[image] = (boxes [G,4], difficult [G])``.

    Returns (recall, precision, num_positives) over the non-ignored detections in score order.
    """
    num_positives = int(sum(int(np.count_nonzero(~diff)) for _, diff in gt.values()))
    order = np.argsort(-det_score, kind="mergesort")
    detected = {image: np.zeros(len(boxes), dtype=bool) for image, (boxes, _) in gt.items()}
    outcome = []  # 1 true positive, 0 false positive; ignored detections are left out
    for d in order:
        image = int(det_image[d])
        boxes, difficult = gt.get(image, (np.zeros((0, 4)), np.zeros(0, dtype=bool)))
        if len(boxes) == 0:
            outcome.append(0)
            continue
        overlaps = devkit_overlaps(det_box[d], boxes)
        best = int(np.argmax(overlaps))  # first maximum, as the devkit's strict "ov > ovmax"
        if overlaps[best] < iou_threshold:
            outcome.append(0)
        elif difficult[best]:
            continue
        elif not detected[image][best]:
            detected[image][best] = True
            outcome.append(1)
        else:
            outcome.append(0)
    tp = np.cumsum(np.asarray(outcome, dtype=np.float64))
    fp = np.cumsum(1.0 - np.asarray(outcome, dtype=np.float64))
    recall = tp / num_positives if num_positives else np.full(len(tp), np.nan)
    precision = tp / np.maximum(tp + fp, 1.0)
    return recall, precision, num_positives


def _percent(value: Optional[float]) -> Optional[float]:
    return None if value is None else value * 100.0


def score_voc(class_names: Sequence[str], gt: Dict[int, List[dict]], class_detections: Sequence[tuple],
              image_ids: Sequence[int]) -> Tuple[dict, dict]:
    """VOC AP for every class over ``image_ids``.

    ``class_detections[c]`` = (image ids [D], scores [D], boxes [D,4] 0-based continuous) of label c + 1, in devkit
    file order. Returns (the ``voc`` section of metrics.json, the ``voc`` section of pr_curves.json).
    """
    missing = [i for i in image_ids if i not in gt]
    if missing:
        raise KeyError(f"image ids {missing[:10]} have no ground-truth entry (every evaluated image needs one, "
                       f"an empty list when it has no objects)")
    per_07, per_area, npos, curves = {}, {}, {}, {}
    num_dets = 0
    evaluated = set(int(i) for i in image_ids)
    for c, name in enumerate(class_names):
        label = c + 1
        class_gt = {}
        for image in evaluated:
            objs = [o for o in gt[image] if int(o["label"]) == label]
            class_gt[image] = (np.asarray([o["bbox"] for o in objs], dtype=np.float64).reshape(-1, 4),
                               np.asarray([bool(o.get("difficult", False)) for o in objs], dtype=bool))
        det_image, det_score, det_box = class_detections[c]
        keep = np.isin(det_image, list(evaluated))
        det_image, det_score, det_box = det_image[keep], det_score[keep], det_box[keep]
        num_dets += len(det_image)
        recall, precision, npos[name] = match_class(det_image, det_score, det_box, class_gt)
        if npos[name] == 0:
            per_07[name] = per_area[name] = curves[name] = None
            continue
        per_07[name] = voc_ap_11point(recall, precision)
        per_area[name] = voc_ap_area(recall, precision)
        curves[name] = interpolate_precision(recall, precision)
    scored_07 = [v for v in per_07.values() if v is not None]
    scored_area = [v for v in per_area.values() if v is not None]
    section = {
        "mAP_07": _percent(float(np.mean(scored_07))) if scored_07 else None,
        "mAP_area": _percent(float(np.mean(scored_area))) if scored_area else None,
        "per_class_07": {n: _percent(v) for n, v in per_07.items()},
        "per_class_area": {n: _percent(v) for n, v in per_area.items()},
        "num_positives": npos,
        "num_images": len(evaluated),
        "num_detections": num_dets,
        "iou_threshold": VOC_IOU_THRESHOLD,
    }
    return section, make_section(curves, VOC_IOU_THRESHOLD)


def _check_gt(gt: Dict[int, List[dict]], num_classes: int) -> Dict[int, List[dict]]:
    checked = {}
    for image_id, objs in gt.items():
        for i, o in enumerate(objs):
            for key in ("label", "bbox"):
                if key not in o:
                    raise KeyError(f"gt[{image_id}][{i}] has no {key!r}; expected label, bbox, difficult")
            if not 1 <= int(o["label"]) <= num_classes:
                raise ValueError(f"gt[{image_id}][{i}]: label {o['label']} outside 1..{num_classes}")
            if len(o["bbox"]) != 4:
                raise ValueError(f"gt[{image_id}][{i}]: bbox must be [x1, y1, x2, y2], got {o['bbox']!r}")
        checked[int(image_id)] = objs
    return checked


class VOCEvaluator(DatasetEvaluator):
    """PASCAL VOC AP (devkit semantics, 11-point and area) over the images passed to ``process``.

    Args:
        class_names: class names; index i is label i + 1.
        gt: {image_id: [{"label": int, "bbox": [x1, y1, x2, y2] (0-based continuous), "difficult": bool}]}.
        output_dir: if set, rank 0 writes metrics.json, pr_curves.json and the devkit files there in ``evaluate``.
        image_names: {image_id: devkit image name} for the results files (default: the id as text).
        split: image-set name used in the results file names (``comp4_det_<split>_<class>.txt``).
    """

    section = "voc"

    def __init__(self, class_names: Sequence[str], gt: Dict[int, List[dict]], output_dir=None,
                 image_names: Optional[Dict[int, str]] = None, split: str = "test"):
        self.class_names = list(class_names)
        self.gt = _check_gt(gt, len(self.class_names))
        self.output_dir = output_dir
        self.image_names = dict(image_names or {})
        self.split = split
        super().__init__()

    def reset(self) -> None:
        super().reset()
        self._gathered: List[tuple] = []

    def _check_prediction(self, prediction: tuple) -> None:
        image_id, labels = prediction[0], prediction[3]
        bad = labels[(labels < 1) | (labels > len(self.class_names))]
        if bad.size:
            raise ValueError(f"image {image_id}: predicted labels {sorted(set(bad.tolist()))} outside "
                             f"1..{len(self.class_names)}")

    def _class_detections(self) -> List[tuple]:
        per_class = []
        for c in range(len(self.class_names)):
            ids, scores, boxes = [], [], []
            for image_id, b, s, lab in self._gathered:
                sel = lab == c + 1
                ids.append(np.full(int(sel.sum()), image_id, dtype=np.int64))
                scores.append(s[sel])
                boxes.append(b[sel])
            per_class.append((np.concatenate(ids) if ids else np.zeros(0, np.int64),
                              np.concatenate(scores) if scores else np.zeros(0),
                              np.concatenate(boxes) if boxes else np.zeros((0, 4))))
        return per_class

    def evaluate(self) -> dict:
        self._gathered = gather_predictions(self._predictions)
        if not is_main_process():
            return {}
        image_ids = [p[0] for p in self._gathered]
        section, curves = score_voc(self.class_names, self.gt, self._class_detections(), image_ids)
        return self._finish(section, curves)

    def write_results(self, eval_dir) -> List[str]:
        from backbones.utils.atomic_io import atomic_write_text

        folder = Path(eval_dir) / VOC_RESULTS_DIR
        paths = []
        for name, (ids, scores, boxes) in zip(self.class_names, self._class_detections()):
            names = [self.image_names.get(int(i), str(int(i))) for i in ids]
            path = comp4_path(folder, self.split, name)
            atomic_write_text(path, format_comp4_lines(names, scores, boxes))
            paths.append(str(path))
        return paths
