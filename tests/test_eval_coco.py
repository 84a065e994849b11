"""COCO evaluation against pycocotools' COCOeval run on the same files (the reference)."""
import contextlib
import io
import json
import random
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detection.evaluation import COCO_STAT_NAMES, COCOEvaluator, score_coco_results
from detection.evaluation.coco import COCO_RESULTS_FILE, check_results
from detection.evaluation.fast_coco import FastCocoEval, bbox_iou_like_pycocotools

REPO = Path(__file__).resolve().parents[1]


def run_eval_det(argv) -> int:
    """tools/eval_det.py in this process (a subprocess would pay the torch import again)."""
    tool = runpy.run_path(str(REPO / "tools" / "eval_det.py"))
    return tool["main"](tool["get_args_parser"]().parse_args(argv))
CATEGORIES = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 7, "name": "dog"},
              {"id": 9, "name": "kite"}]  # kite: no annotations anywhere; dog: annotations but no detections
LABEL_TO_CAT = {1: 1, 2: 3, 3: 7, 4: 9}


def make_fixture(seed: int = 0):
    """Ground truth with crowd, small/medium/large objects, empty images; detections with ties and duplicates."""
    rng = random.Random(seed)
    images, anns, dets = [], [], []
    aid = 1
    for i in range(1, 9):
        width, height = rng.choice([(640, 480), (320, 240), (500, 375)])
        images.append({"id": 100 + i, "width": width, "height": height, "file_name": f"{i}.jpg"})
        if i in (3, 6):  # images without any object
            if i == 6:
                dets.append({"image_id": 100 + i, "category_id": 3, "bbox": [10.0, 10.0, 50.0, 40.0], "score": 0.7})
            continue
        for side in (20, 60, 150, rng.uniform(5, 200)):  # areas below 32², between, above 96²
            w, h = side * rng.uniform(0.7, 1.3), side * rng.uniform(0.7, 1.3)
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            cat = rng.choice([1, 3, 7])
            crowd = int(rng.random() < 0.15)
            anns.append({"id": aid, "image_id": 100 + i, "category_id": cat, "bbox": [x, y, w, h],
                         "area": w * h * (0.8 if crowd else 1.0), "iscrowd": crowd})
            aid += 1
            if cat == 7:
                continue
            for _ in range(rng.randint(0, 3)):  # near-misses, duplicates and rounded scores (ties)
                jitter = 0.15 * max(w, h)
                box = [x + rng.gauss(0, jitter), y + rng.gauss(0, jitter), w * rng.uniform(0.8, 1.2),
                       h * rng.uniform(0.8, 1.2)]
                box = [round(v * 4) / 4 for v in box]  # quarter pixels: x1y1x2y2 <-> xywh is exact
                dets.append({"image_id": 100 + i, "category_id": cat, "bbox": box, "score": round(rng.random(), 1)})
        for _ in range(rng.randint(1, 4)):  # background false positives
            w, h = rng.uniform(8, 120), rng.uniform(8, 120)
            box = [rng.uniform(0, width - w), rng.uniform(0, height - h), w, h]
            dets.append({"image_id": 100 + i, "category_id": rng.choice([1, 3]),
                         "bbox": [round(v * 4) / 4 for v in box],
                         "score": rng.random()})
    return {"images": images, "annotations": anns, "categories": CATEGORIES}, dets


def load_coco(path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def reference_cocoeval(gt_file, dets_file, img_ids=None, cat_ids=None) -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        ev = COCOeval(gt, gt.loadRes(str(dets_file)), "bbox")
        if img_ids is not None:
            ev.params.imgIds = img_ids
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


@pytest.fixture()
def coco_files(tmp_path):
    gt, dets = make_fixture()
    gt_file, dets_file = tmp_path / "instances.json", tmp_path / "dets.json"
    gt_file.write_text(json.dumps(gt))
    dets_file.write_text(json.dumps(dets))
    return gt_file, dets_file, dets


def outputs_from_results(dets, image_ids):
    """The same detections as model outputs (x1y1x2y2 tensors, contiguous labels), in results order."""
    cat_to_label = {c: lab for lab, c in LABEL_TO_CAT.items()}
    outputs = []
    for image_id in image_ids:
        mine = [d for d in dets if d["image_id"] == image_id]
        boxes = torch.tensor([[d["bbox"][0], d["bbox"][1], d["bbox"][0] + d["bbox"][2], d["bbox"][1] + d["bbox"][3]]
                              for d in mine], dtype=torch.float64).reshape(-1, 4)
        outputs.append({"boxes": boxes, "scores": torch.tensor([d["score"] for d in mine], dtype=torch.float64),
                        "labels": torch.tensor([cat_to_label[d["category_id"]] for d in mine], dtype=torch.int64)})
    return outputs


def stats_from_metrics(section):
    return np.array([-1.0 if section[k] is None else section[k] for k in COCO_STAT_NAMES])


def reference_percent(ev):
    return np.where(np.asarray(ev.stats) < 0, -1.0, np.asarray(ev.stats) * 100.0)


@pytest.mark.parametrize("use_fast", [True, False])
def test_evaluator_12_stats_equal_pycocotools(coco_files, tmp_path, use_fast):
    gt_file, dets_file, dets = coco_files
    ref = reference_cocoeval(gt_file, dets_file)
    coco_gt = load_coco(gt_file)
    ev = COCOEvaluator(coco_gt, LABEL_TO_CAT, output_dir=tmp_path / "eval", use_fast=use_fast)
    image_ids = sorted(coco_gt.getImgIds())
    outputs = outputs_from_results(dets, image_ids)
    for start in range(0, len(image_ids), 3):  # batches of 3
        ev.process(image_ids[start:start + 3], outputs[start:start + 3])
    section = ev.evaluate()["bbox"]
    assert np.array_equal(stats_from_metrics(section), reference_percent(ref))
    assert 0 < section["AP"] < section["AP50"] <= 100
    assert section["APs"] is not None and section["APm"] is not None and section["APl"] is not None
    # Per-class AP against pycocotools restricted to that one category.
    assert list(section["per_class"]) == ["person", "car", "dog", "kite"]
    for name, cat in (("person", 1), ("car", 3), ("dog", 7)):
        one = reference_cocoeval(gt_file, dets_file, cat_ids=[cat])
        assert section["per_class"][name]["AP"] == pytest.approx(one.stats[0] * 100, abs=1e-9)
        assert section["per_class"][name]["AP50"] == pytest.approx(one.stats[1] * 100, abs=1e-9)
    assert section["per_class"]["dog"] == {"AP": 0.0, "AP50": 0.0}  # ground truth but no detections
    assert section["per_class"]["kite"] == {"AP": None, "AP50": None}  # nothing to score
    # The standard results file written by the evaluator scores the same under pycocotools.
    written = json.loads((tmp_path / "eval" / COCO_RESULTS_FILE).read_text())
    assert len(written) == len(dets)
    assert np.array_equal(reference_percent(reference_cocoeval(gt_file, tmp_path / "eval" / COCO_RESULTS_FILE)),
                          reference_percent(ref))
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["bbox"]["AP"] == section["AP"]
    curves = json.loads((tmp_path / "eval" / "pr_curves.json").read_text())["bbox"]
    assert len(curves["recall"]) == len(curves["overall"]) == 101
    assert curves["per_class"]["kite"] is None
    # Mean of the 101-point curves at IoU .5 is AP50 (COCOeval's own averaging).
    assert np.mean(curves["overall"]) * 100 == pytest.approx(section["AP50"], abs=1e-9)


def reference_in_memory(gt: dict, dets: list):
    """(COCO ground truth, pycocotools COCOeval after summarize) for in-memory dicts."""
    coco_gt = COCO()
    coco_gt.dataset = gt
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
        ref = COCOeval(coco_gt, coco_gt.loadRes([dict(d) for d in dets]), "bbox")
        ref.evaluate()
        ref.accumulate()
        ref.summarize()
    return coco_gt, ref


def test_fast_path_is_bitwise_pycocotools_on_random_fixtures():
    for seed in range(25):
        coco_gt, ref = reference_in_memory(*make_fixture(seed))
        stats, precision, cat_ids, _ = FastCocoEval(coco_gt).run(make_fixture(seed)[1], None)
        assert np.array_equal(stats, np.asarray(ref.stats)), seed
        assert np.array_equal(precision, ref.eval["precision"]), seed
        assert cat_ids == ref.params.catIds


def test_fast_path_matching_edge_cases_bitwise():
    """Equal IoUs (COCOeval keeps the last best), identical duplicates, crowd regions matched many times, a ground
    truth with id 0 (COCOeval treats a match to it as no match), zero-width boxes, > 100 detections per image."""
    rng = random.Random(7)
    images = [{"id": i, "width": 200, "height": 200} for i in range(4)]
    grid = [0, 10, 20, 40]
    anns, dets = [], []
    for i in range(4):
        for _ in range(12):
            x, y, w, h = rng.choice(grid), rng.choice(grid), rng.choice([0, 10, 20, 100]), rng.choice([10, 20, 100])
            anns.append({"id": len(anns), "image_id": i, "category_id": rng.choice([1, 2]), "bbox": [x, y, w, h],
                         "area": rng.choice([w * h, 500, 5000, 20000]), "iscrowd": int(rng.random() < 0.25)})
        for _ in range(130):
            x, y, w, h = rng.choice(grid), rng.choice(grid), rng.choice([0, 10, 20, 100]), rng.choice([10, 20, 100])
            dets.append({"image_id": i, "category_id": rng.choice([1, 2]), "bbox": [x, y, w, h],
                         "score": rng.choice([0.2, 0.5, 0.9])})
    # Two ground truths tie for the first detection (IoU 90/110 each); COCOeval gives it the later one, so the
    # second detection, which reaches IoU >= .55 only with that one, is a false positive from .55 up.
    images.append({"id": 99, "width": 50, "height": 50})
    anns += [{"id": 500, "image_id": 99, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
             {"id": 501, "image_id": 99, "category_id": 1, "bbox": [2, 0, 10, 10], "area": 100, "iscrowd": 0}]
    dets += [{"image_id": 99, "category_id": 1, "bbox": [1, 0, 10, 10], "score": 0.95},
             {"image_id": 99, "category_id": 1, "bbox": [3, 0, 10, 10], "score": 0.94}]
    coco_gt, ref = reference_in_memory({"images": images, "annotations": anns,
                                        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}, dets)
    stats, precision, _, _ = FastCocoEval(coco_gt).run(dets, None)
    assert np.array_equal(stats, np.asarray(ref.stats))
    assert np.array_equal(precision, ref.eval["precision"])


def test_iou_matches_pycocotools_mask_iou():
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    det = rng.uniform(0, 50, size=(40, 4))
    gt = rng.uniform(0, 50, size=(7, 4))
    crowd = [0, 1, 0, 0, 1, 0, 0]
    ref = mask_utils.iou(det.tolist(), gt.tolist(), crowd)
    d_idx, g_idx = np.meshgrid(np.arange(40), np.arange(7), indexing="ij")
    mine = bbox_iou_like_pycocotools(det[d_idx.ravel()], gt[g_idx.ravel()], np.asarray(crowd, bool)[g_idx.ravel()])
    assert np.array_equal(mine.reshape(40, 7), ref)


def test_subset_of_images_equals_pycocotools_imgids(coco_files):
    gt_file, dets_file, dets = coco_files
    coco_gt = load_coco(gt_file)
    subset = sorted(coco_gt.getImgIds())[::2]
    ref = reference_cocoeval(gt_file, dets_file, img_ids=subset)
    ev = COCOEvaluator(coco_gt, LABEL_TO_CAT)
    ev.process(subset, outputs_from_results(dets, subset))
    assert np.array_equal(stats_from_metrics(ev.evaluate()["bbox"]), reference_percent(ref))


def test_no_detections_scores_zero(coco_files):
    gt_file, _, _ = coco_files
    coco_gt = load_coco(gt_file)
    for use_fast in (True, False):
        section, curves = score_coco_results(coco_gt, [], use_fast=use_fast)
        assert section["AP"] == 0.0 and section["AR100"] == 0.0
        assert section["per_class"]["kite"]["AP"] is None
        assert max(curves["overall"]) == 0.0


def test_bad_outputs_and_results_give_clear_errors(coco_files):
    gt_file, _, _ = coco_files
    coco_gt = load_coco(gt_file)
    ev = COCOEvaluator(coco_gt, LABEL_TO_CAT)
    ev.process([101], [{"boxes": torch.zeros(1, 4), "scores": torch.ones(1), "labels": torch.tensor([9])}])
    with pytest.raises(KeyError, match="label 9 has no COCO category"):
        ev.evaluate()
    with pytest.raises(ValueError, match="lengths differ"):
        ev.process([101], [{"boxes": torch.zeros(2, 4), "scores": torch.ones(1), "labels": torch.ones(1)}])
    with pytest.raises(ValueError, match=r"results\[1\]: image_id 5 is not an image"):
        check_results(coco_gt, [{"image_id": 101, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1},
                                {"image_id": 5, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}])
    with pytest.raises(ValueError, match="absent from the ground truth"):
        COCOEvaluator(coco_gt, {1: 1, 2: 42})


def test_eval_det_cli_scores_coco_results_file(coco_files, tmp_path, capsys):
    gt_file, dets_file, _ = coco_files
    out = tmp_path / "scored"
    argv = ["--results", str(dets_file), "--gt", str(gt_file), "--output-dir", str(out), "--no-report"]
    assert run_eval_det(argv) == 0
    metrics = json.loads((out / "eval" / "metrics.json").read_text())["bbox"]
    ref = reference_cocoeval(gt_file, dets_file)
    assert np.array_equal(stats_from_metrics(metrics), reference_percent(ref))
    assert "AP50" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image_id": 101, "bbox": [0, 0, 1, 1], "score": 0.5}]))
    argv = ["--results", str(bad), "--gt", str(gt_file), "--output-dir", str(out)]
    with pytest.raises(ValueError, match=r"bad.json\[0\]: missing key\(s\) \['category_id'\]"):
        run_eval_det(argv)


@pytest.mark.parametrize("field,value,message", [
    ("score", float("nan"), r"dets.json\[3\]: score is nan, not a finite number"),
    ("score", "high", r"dets.json\[3\]: score is 'high'"),
    ("bbox", [10.0, 10.0, -5.0, 20.0], r"dets.json\[3\]: bbox .* has a negative width or height"),
    ("bbox", [10.0, 10.0, 5.0, -0.5], r"dets.json\[3\]: bbox .* has a negative width or height"),
    ("bbox", [10.0, float("nan"), 5.0, 5.0], r"dets.json\[3\]: bbox must be .* finite numbers"),
])
def test_eval_det_refuses_non_finite_scores_and_negative_boxes(coco_files, tmp_path, field, value, message):
    gt_file, dets_file, dets = coco_files
    dets[3][field] = value
    dets_file.write_text(json.dumps(dets))  # NaN is written as the bare token NaN, which json.loads accepts
    argv = ["--results", str(dets_file), "--gt", str(gt_file), "--output-dir", str(tmp_path / "out"), "--no-report"]
    with pytest.raises(ValueError, match=message):
        run_eval_det(argv)
    assert not (tmp_path / "out" / "eval" / "metrics.json").exists()


def test_eval_det_refuses_ground_truth_with_a_repeated_image_id(coco_files, tmp_path):
    gt_file, dets_file, _ = coco_files
    gt = json.loads(gt_file.read_text())
    gt["images"][5]["id"] = gt["images"][2]["id"]
    gt_file.write_text(json.dumps(gt))
    argv = ["--results", str(dets_file), "--gt", str(gt_file), "--output-dir", str(tmp_path / "out"), "--no-report"]
    with pytest.raises(ValueError, match=r"instances.json: images\[5\] has id 103, already the id of images\[2\]"):
        run_eval_det(argv)
