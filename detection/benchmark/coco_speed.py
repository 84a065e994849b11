"""COCO bbox evaluation wall time on a generated val2017-sized case: resdet's fast path vs pycocotools.

The case mimics COCO val2017: 5000 images of COCO sizes, the 80 category ids, ~7.3 objects per image with COCO's
mix of small/medium/large areas and ~1% crowd boxes, and 100 detections per image (jittered copies of the ground
truth with high scores, the rest background boxes with low scores), coordinates rounded to 0.01 px as in results
files. Each timed run starts from the ground-truth ``COCO`` object and the results list and ends with the 12 stats.
"""
import contextlib
import io
from typing import Dict, List, Tuple

import numpy as np

from detection.evaluation.coco import run_pycocotools
from detection.evaluation.fast_coco import FastCocoEval

from .timing import interleaved

COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
_SIZES = np.array([(640, 480), (480, 640), (640, 427), (500, 375), (427, 640)], dtype=np.float64)


def generate_coco_case(num_images: int = 5000, dets_per_image: int = 100, seed: int = 0) -> Tuple[dict, List[dict]]:
    """(ground-truth dataset dict, results list) as described in the module docstring."""
    rng = np.random.default_rng(seed)
    cats = np.asarray(COCO_CATEGORY_IDS)
    images, annotations, results = [], [], []
    for image_id in range(1, num_images + 1):
        w, h = _SIZES[rng.integers(len(_SIZES))]
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": int(w), "height": int(h)})
        n = int(rng.poisson(7.3))
        side = np.exp(rng.uniform(np.log(8), np.log(400), n))  # log-uniform: ~40% small, ~30% medium, ~30% large
        bw = np.minimum(side * rng.uniform(0.6, 1.4, n), w - 1)
        bh = np.minimum(side * rng.uniform(0.6, 1.4, n), h - 1)
        x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        gt_cat = cats[rng.integers(len(cats), size=n)]
        crowd = rng.random(n) < 0.01
        for j in range(n):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(gt_cat[j]),
                                "bbox": [float(x[j]), float(y[j]), float(bw[j]), float(bh[j])],
                                "area": float(bw[j] * bh[j] * (0.7 if crowd[j] else 0.85)),
                                "iscrowd": int(crowd[j])})
        # Detections: up to 3 jittered copies per object, then background boxes up to dets_per_image.
        copies = rng.integers(0, 4, n) if n else np.zeros(0, int)
        src = np.repeat(np.arange(n), copies)[:dets_per_image]
        jitter = rng.normal(0, 0.1, (len(src), 4)) * np.stack([bw[src], bh[src], bw[src], bh[src]], 1)
        tp_box = np.stack([x[src], y[src], bw[src], bh[src]], 1) + jitter
        tp_box[:, 2:] = np.maximum(tp_box[:, 2:], 1.0)
        nb = dets_per_image - len(src)
        fw, fh = rng.uniform(4, w / 2, nb), rng.uniform(4, h / 2, nb)
        fp_box = np.stack([rng.uniform(0, w - fw), rng.uniform(0, h - fh), fw, fh], 1)
        boxes = np.round(np.concatenate([tp_box, fp_box]), 2)
        det_cat = np.concatenate([gt_cat[src], cats[rng.integers(len(cats), size=nb)]])
        scores = np.round(np.concatenate([rng.uniform(0.3, 1.0, len(src)), rng.uniform(0.0, 0.6, nb)]), 5)
        for b, c, s in zip(boxes.tolist(), det_cat.tolist(), scores.tolist()):
            results.append({"image_id": image_id, "category_id": c, "bbox": b, "score": s})
    categories = [{"id": int(c), "name": f"category{c}", "supercategory": "thing"} for c in cats]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def _coco(dataset: dict):
    from pycocotools.coco import COCO

    gt = COCO()
    gt.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def _faster_coco_eval(dataset: dict, results: List[dict]) -> np.ndarray:
    from faster_coco_eval import COCO, COCOeval_faster

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(dataset)
        evaluator = COCOeval_faster(gt, gt.loadRes([dict(r) for r in results]), "bbox", print_function=lambda *a: None)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return np.asarray(evaluator.stats, dtype=np.float64)


def measure_coco_eval(num_images: int, dets_per_image: int, repeats: int, faster_coco_eval: bool = True,
                      log=print) -> Dict[str, object]:
    """Median wall time of each evaluator; raises AssertionError if the fast path's stats differ from pycocotools'."""
    log(f"[coco eval] generating {num_images} images x {dets_per_image} detections")
    dataset, results = generate_coco_case(num_images, dets_per_image)
    coco_gt = _coco(dataset)
    stats = {}

    def run(name, fn):
        def call():
            stats[name] = np.asarray(fn(), dtype=np.float64)
        return call

    fns = {"pycocotools": run("pycocotools", lambda: run_pycocotools(coco_gt, results, None)[0]),
           "resdet_fast": run("resdet_fast", lambda: FastCocoEval(coco_gt).run(results, None)[0])}
    if faster_coco_eval:
        fns["faster_coco_eval"] = run("faster_coco_eval", lambda: _faster_coco_eval(dataset, results))
    log(f"[coco eval] timing {list(fns)}")
    times = interleaved(fns, repeats, warmup=0)
    reference = stats["pycocotools"]
    identical = bool(np.array_equal(stats["resdet_fast"], reference))
    base = times["pycocotools"]["median"]
    out = {"num_images": num_images, "num_annotations": len(dataset["annotations"]), "num_detections": len(results),
           "stats_pycocotools": reference.tolist(), "resdet_fast_identical_to_pycocotools": identical,
           "evaluators": {k: {"s": times[k]["median"], "speedup_vs_pycocotools": base / times[k]["median"],
                              "max_abs_stat_difference": float(np.abs(stats[k] - reference).max()),
                              "timing": times[k]} for k in fns}}
    if not identical:
        raise AssertionError(f"resdet fast COCO evaluation differs from pycocotools: {stats['resdet_fast'].tolist()} "
                             f"vs {reference.tolist()}")
    return out
