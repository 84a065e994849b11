"""COCO-style bbox evaluation with pycocotools COCOeval semantics: the 12 standard stats and per-category AP."""
import contextlib
import io
import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from backbones.utils.dist import is_main_process

from .base import DatasetEvaluator, gather_predictions
from .pr_curves import section_from_coco_precision

# COCOeval.summarize() order; APs/APm/APl use areas < 32², 32²..96², > 96² (maxDets 100).
COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
COCO_RESULTS_FILE = "coco_instances_results.json"

ClassNames = Union[Dict[int, str], Sequence[str], None]


def predictions_to_coco_results(predictions: List[tuple], label_to_category_id: Dict[int, int]) -> List[dict]:
    """Standard COCO results entries ``{image_id, category_id, bbox: [x, y, w, h], score}`` from numpy predictions."""
    results = []
    for image_id, boxes, scores, labels in predictions:
        for box, score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
            if label not in label_to_category_id:
                raise KeyError(
                    f"image {image_id}: predicted label {label} has no COCO category id; "
                    f"label_to_category_id covers {sorted(label_to_category_id)}"
                )
            x1, y1, x2, y2 = box
            results.append(
                {
                    "image_id": image_id,
                    "category_id": label_to_category_id[label],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": score,
                }
            )
    return results


def run_pycocotools(coco_gt, results: List[dict], img_ids: Optional[Sequence[int]]):
    """The reference: pycocotools COCOeval. Returns (12 stats, precision [T,R,K,A,M], category ids, IoU thresholds)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        if results:
            # loadRes adds area/id/iscrowd to the dicts it gets; keep the caller's results clean.
            detections = coco_gt.loadRes([dict(r) for r in results])
        else:
            # loadRes cannot take an empty list; an empty detection set scores AP 0 on every category with GT.
            detections = COCO()
            detections.dataset = {"images": list(coco_gt.dataset.get("images", [])), "annotations": [],
                                  "categories": list(coco_gt.dataset.get("categories", []))}
            detections.createIndex()
        evaluator = COCOeval(coco_gt, detections, "bbox")
        if img_ids is not None:
            evaluator.params.imgIds = sorted(img_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    params = evaluator.params
    return (np.asarray(evaluator.stats, dtype=np.float64), np.asarray(evaluator.eval["precision"]),
            list(params.catIds), np.asarray(params.iouThrs))


def check_results(coco_gt, results: List[dict], source: str = "results") -> None:
    """One clear error for the first malformed results entry (pycocotools would fail with a bare assert)."""
    image_ids = set(coco_gt.getImgIds())
    category_ids = set(coco_gt.getCatIds())
    for i, r in enumerate(results):
        where = f"{source}[{i}]"
        if not isinstance(r, dict):
            raise ValueError(f"{where}: expected an object with image_id/category_id/bbox/score, "
                             f"got {type(r).__name__}")
        missing = [k for k in ("image_id", "category_id", "bbox", "score") if k not in r]
        if missing:
            raise ValueError(f"{where}: missing key(s) {missing}; COCO results need image_id, category_id, bbox, score")
        if not (isinstance(r["bbox"], (list, tuple)) and len(r["bbox"]) == 4 and all(map(_finite, r["bbox"]))):
            raise ValueError(f"{where}: bbox must be [x, y, w, h] of finite numbers, got {r['bbox']!r}")
        if r["bbox"][2] < 0 or r["bbox"][3] < 0:
            raise ValueError(f"{where}: bbox {r['bbox']!r} has a negative width or height")
        if not _finite(r["score"]):
            raise ValueError(f"{where}: score is {r['score']!r}, not a finite number")
        if r["image_id"] not in image_ids:
            raise ValueError(f"{where}: image_id {r['image_id']!r} is not an image of the ground truth")
        if r["category_id"] not in category_ids:
            raise ValueError(f"{where}: category_id {r['category_id']!r} is not a ground-truth category "
                             f"(known: {sorted(category_ids)})")


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_coco_ground_truth(path):
    """A COCO-format ground-truth file as a pycocotools COCO. Two images with one id are an error naming both
    entries: pycocotools would keep the last one and score the other's annotations against it."""
    from pycocotools.coco import COCO

    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not (isinstance(data, dict) and isinstance(data.get("images"), list)):
        raise ValueError(f"{path}: expected a COCO object with 'images', 'annotations', 'categories'")
    first = {}
    for i, image in enumerate(data["images"]):
        image_id = image.get("id") if isinstance(image, dict) else None
        if image_id in first:
            raise ValueError(f"{path}: images[{i}] has id {image_id!r}, already the id of images[{first[image_id]}]")
        first[image_id] = i
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def score_coco_results(
    coco_gt,
    results: List[dict],
    img_ids: Optional[Sequence[int]] = None,
    use_fast: bool = True,
    category_names: Optional[Dict[int, str]] = None,
    fast_runner=None,
) -> Tuple[dict, dict]:
    """Score COCO results entries against ``coco_gt`` (a pycocotools COCO).

    ``img_ids`` restricts the evaluation to those images (default: every ground-truth image, as the official
    evaluation does). Returns (the ``bbox`` section of metrics.json, the ``bbox`` section of pr_curves.json).
    """
    if use_fast:
        from .fast_coco import FastCocoEval

        runner = fast_runner or FastCocoEval(coco_gt)
        stats, precision, cat_ids, iou_thrs = runner.run(results, img_ids)
    else:
        stats, precision, cat_ids, iou_thrs = run_pycocotools(coco_gt, results, img_ids)
    names = [(category_names or {}).get(c) or coco_gt.cats[c].get("name", str(c)) for c in cat_ids]
    section = {name: _percent(v) for name, v in zip(COCO_STAT_NAMES, stats)}
    section["per_class"] = _per_class_ap(precision, iou_thrs, names)
    section["num_images"] = len(img_ids) if img_ids is not None else len(coco_gt.getImgIds())
    section["num_detections"] = len(results)
    section["evaluator"] = "resdet-fast" if use_fast else "pycocotools"
    return section, section_from_coco_precision(precision, iou_thrs, names)


def _per_class_ap(precision: np.ndarray, iou_thrs: np.ndarray, names: List[str]) -> Dict[str, dict]:
    # Same averaging as COCOeval._summarize restricted to one category (area "all", maxDets 100).
    t50 = int(np.argmin(np.abs(iou_thrs - 0.5)))
    per_class = {}
    for k, name in enumerate(names):
        all_iou = precision[:, :, k, 0, -1]
        at_50 = precision[t50, :, k, 0, -1]
        per_class[name] = {"AP": _percent(_mean_valid(all_iou)), "AP50": _percent(_mean_valid(at_50))}
    return per_class


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else -1.0


def _percent(value: float) -> Optional[float]:
    """COCOeval's -1 ("no ground truth to score") becomes null; JSON has no NaN."""
    value = float(value)
    return None if value < 0 or math.isnan(value) else value * 100.0


def _names_by_category(label_to_category_id: Dict[int, int], class_names: ClassNames, coco_gt) -> Dict[int, str]:
    names = {}
    for label, cat_id in label_to_category_id.items():
        if isinstance(class_names, dict):
            names[cat_id] = class_names[label]
        elif class_names is not None:
            names[cat_id] = class_names[label - 1]
        else:
            names[cat_id] = coco_gt.cats.get(cat_id, {}).get("name", str(cat_id))
    return names


class COCOEvaluator(DatasetEvaluator):
    """COCO bbox AP (pycocotools semantics) over the images passed to ``process``.

    Args:
        coco_gt: ``pycocotools.coco.COCO`` ground truth.
        label_to_category_id: contiguous label (1..K) -> COCO category id.
        output_dir: if set, rank 0 writes metrics.json, pr_curves.json and the results JSON there in ``evaluate``.
        use_fast: score with faster-coco-eval (same numbers as pycocotools, much faster) instead of pycocotools.
        class_names: names for per-class AP, ``{label: name}`` or a list (index i is label i + 1); default: the
            ground-truth category names.
    """

    section = "bbox"

    def __init__(self, coco_gt, label_to_category_id: Dict[int, int], output_dir=None, use_fast: bool = True,
                 class_names: ClassNames = None):
        self.coco_gt = coco_gt
        self.label_to_category_id = {int(k): int(v) for k, v in label_to_category_id.items()}
        unknown = sorted(set(self.label_to_category_id.values()) - set(coco_gt.getCatIds()))
        if unknown:
            raise ValueError(f"label_to_category_id maps to category ids {unknown} absent from the ground truth")
        self.output_dir = output_dir
        self.use_fast = use_fast
        self.category_names = _names_by_category(self.label_to_category_id, class_names, coco_gt)
        self._fast_runner = None
        self.results: List[dict] = []
        super().__init__()

    def reset(self) -> None:
        super().reset()
        self.results = []

    def evaluate(self) -> dict:
        predictions = gather_predictions(self._predictions)
        if not is_main_process():
            return {}
        img_ids = [p[0] for p in predictions]
        unknown = sorted(set(img_ids) - set(self.coco_gt.getImgIds()))
        if unknown:
            raise ValueError(f"processed image ids {unknown[:10]} are not images of the COCO ground truth")
        self.results = predictions_to_coco_results(predictions, self.label_to_category_id)
        if self.use_fast and self._fast_runner is None:
            from .fast_coco import FastCocoEval

            self._fast_runner = FastCocoEval(self.coco_gt)
        section, curves = score_coco_results(
            self.coco_gt, self.results, img_ids=img_ids, use_fast=self.use_fast,
            category_names=self.category_names, fast_runner=self._fast_runner,
        )
        # Order per-class entries by contiguous label, the order users know from training.
        order = [self.category_names[c] for _, c in sorted(self.label_to_category_id.items())]
        section["per_class"] = {n: section["per_class"][n] for n in order if n in section["per_class"]}
        return self._finish(section, curves)

    def write_results(self, eval_dir) -> List[str]:
        from backbones.utils.atomic_io import atomic_open

        path = Path(eval_dir) / COCO_RESULTS_FILE
        with atomic_open(path, "w", encoding="utf-8") as f:
            json.dump(self.results, f)
        return [str(path)]
