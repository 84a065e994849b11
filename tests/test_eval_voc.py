"""PASCAL VOC AP with devkit semantics, checked against APs worked out by hand."""
import json
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch

from detection.evaluation import VOCEvaluator
from detection.evaluation.voc import devkit_thresholds_11, voc_ap_11point, voc_ap_area
from detection.evaluation.voc_files import comp4_path, read_comp4

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["cat", "dog", "bird", "cow", "horse"]
NAMES = {1: "000001", 2: "000002", 3: "000003"}

# Ground truth in 0-based continuous coordinates: XML (xmin, ymin, xmax, ymax) = (x1 + 1, y1 + 1, x2, y2).
GT = {
    1: [{"label": 1, "bbox": [0, 0, 10, 10], "difficult": False},
        {"label": 1, "bbox": [20, 20, 30, 30], "difficult": True},
        {"label": 2, "bbox": [40, 40, 80, 80], "difficult": False}],
    2: [{"label": 1, "bbox": [0, 0, 10, 10], "difficult": False}],
    3: [{"label": 4, "bbox": [0, 0, 20, 20], "difficult": False},
        {"label": 4, "bbox": [0, 0, 20, 20], "difficult": False},  # identical twin: IoU tie
        {"label": 5, "bbox": [40, 40, 60, 60], "difficult": False}],
}
# (image, label, score, box) in model output order.
DETECTIONS = [
    (1, 1, 0.9, [0, 0, 10, 10]),      # cat: true positive
    (1, 1, 0.8, [0, 0, 10, 10]),      # cat: duplicate -> false positive
    (1, 1, 0.7, [20, 20, 30, 30]),    # cat: on the difficult object -> ignored
    (2, 1, 0.6, [50, 50, 60, 60]),    # cat: no overlap -> false positive
    (2, 1, 0.5, [0, 0, 10, 5]),       # cat: devkit IoU exactly 0.5 (+1 widths: 50 / 100) -> true positive
    (1, 3, 0.4, [0, 0, 5, 5]),        # bird: no bird anywhere -> class has no AP
    (3, 4, 0.8, [0, 0, 20, 20]),      # cow: best IoU tie, the devkit takes the first twin -> true positive
    (3, 4, 0.8, [0, 0, 20, 20]),      # cow: same score, same first twin, already detected -> false positive
    (3, 5, 0.6, [100, 100, 120, 120]),  # horse: tie in score, listed first -> ranked first -> false positive
    (3, 5, 0.6, [40, 40, 60, 60]),    # horse: true positive, ranked second
]
# By hand. cat: npos 2 (the difficult one does not count); ranked outcomes TP FP FP TP (the ignored one dropped):
#   recall .5 .5 .5 1, precision 1 .5 .333 .5
#   11-point: t = 0 .. .5 -> 1 (6 points), t = .6 .. 1 -> .5 (5 points) = 8.5 / 11
#   area: envelope 1 up to recall .5, .5 up to 1 -> .5 * 1 + .5 * .5 = .75
# dog: npos 1, no detection -> 0 and 0. bird: npos 0 -> None, not in the mean.
# cow: npos 2; TP FP -> recall .5 .5, precision 1 .5; 11-point 6 / 11; area .5.
# horse: npos 1; FP TP -> recall 0 1, precision 0 .5; 11-point .5; area .5.
EXPECTED_07 = {"cat": 8.5 / 11, "dog": 0.0, "bird": None, "cow": 6 / 11, "horse": 0.5}
EXPECTED_AREA = {"cat": 0.75, "dog": 0.0, "bird": None, "cow": 0.5, "horse": 0.5}


def outputs_by_image():
    per_image = {i: [] for i in GT}
    for image, label, score, box in DETECTIONS:
        per_image[image].append((label, score, box))
    ids = sorted(per_image)
    outputs = [{"boxes": torch.tensor([b for _, _, b in per_image[i]], dtype=torch.float32).reshape(-1, 4),
                "scores": torch.tensor([s for _, s, _ in per_image[i]]),
                "labels": torch.tensor([lab for lab, _, _ in per_image[i]], dtype=torch.int64)} for i in ids]
    return ids, outputs


def evaluate(output_dir=None):
    ev = VOCEvaluator(CLASSES, GT, output_dir=output_dir, image_names=NAMES)
    ids, outputs = outputs_by_image()
    ev.process(ids[:2], outputs[:2])
    ev.process(ids[2:], outputs[2:])
    return ev, ev.evaluate()["voc"]


def check_against_hand_values(voc):
    for name in CLASSES:
        exp07, exp_area = EXPECTED_07[name], EXPECTED_AREA[name]
        if exp07 is None:
            assert voc["per_class_07"][name] is None and voc["per_class_area"][name] is None
        else:
            assert voc["per_class_07"][name] == pytest.approx(100 * exp07, abs=1e-9), name
            assert voc["per_class_area"][name] == pytest.approx(100 * exp_area, abs=1e-9), name
    scored = [n for n in CLASSES if EXPECTED_07[n] is not None]
    assert voc["mAP_07"] == pytest.approx(100 * np.mean([EXPECTED_07[n] for n in scored]), abs=1e-9)
    assert voc["mAP_area"] == pytest.approx(100 * np.mean([EXPECTED_AREA[n] for n in scored]), abs=1e-9)
    assert voc["num_positives"] == {"cat": 2, "dog": 1, "bird": 0, "cow": 2, "horse": 1}


def test_hand_worked_devkit_ap():
    _, voc = evaluate()
    check_against_hand_values(voc)
    # 11-point and area AP differ where the curve is not flat between the 11 sample points.
    assert voc["per_class_07"]["cat"] != voc["per_class_area"]["cat"]
    assert voc["per_class_07"]["horse"] == pytest.approx(voc["per_class_area"]["horse"])


def test_score_tie_keeps_input_order():
    ev = VOCEvaluator(CLASSES, GT)
    ids, outputs = outputs_by_image()
    # Swap the two horse detections of image 3: the true positive now ranks first -> AP 1.
    outputs[2] = {k: v[[0, 1, 3, 2]] for k, v in outputs[2].items()}
    ev.process(ids, outputs)
    voc = ev.evaluate()["voc"]
    assert voc["per_class_07"]["horse"] == pytest.approx(100.0)
    assert voc["per_class_area"]["horse"] == pytest.approx(100.0)


def test_many_equal_scores_keep_input_order():
    """31 detections, scores 0.7 and 0.5 interleaved (more than numpy's small-array insertion sort covers): the true
    positive, 6th of the 16 detections at 0.5, must rank 15 + 6 = 21st, as MATLAB's stable sort ranks it."""
    gt = {1: [{"label": 4, "bbox": [0, 0, 20, 20], "difficult": False}]}
    boxes = [[100.0 + i, 100.0, 120.0 + i, 120.0] for i in range(30)]
    scores = [0.7 if i % 2 else 0.5 for i in range(30)]
    boxes.insert(10, [0.0, 0.0, 20.0, 20.0])
    scores.insert(10, 0.5)
    ev = VOCEvaluator(CLASSES, gt)
    ev.process([1], [{"boxes": torch.tensor(boxes), "scores": torch.tensor(scores), "labels": torch.full((31,), 4)}])
    voc = ev.evaluate()["voc"]
    assert voc["per_class_07"]["cow"] == pytest.approx(100 / 21)
    assert voc["per_class_area"]["cow"] == pytest.approx(100 / 21)


def test_11_point_thresholds_are_matlab_colon():
    t = devkit_thresholds_11()
    assert t[3] == 0.1 * 3 and t[3] > 0.3  # 0.30000000000000004
    assert t[6] == 0.6 and t[7] == 0.7  # built from the right end: the nearest doubles
    ones = lambda n: np.ones(n)  # noqa: E731
    # Recall 3/10 stops short of t = 0.30000000000000004: 3 of 11 points.
    assert voc_ap_11point(np.arange(1, 4) / 10, ones(3)) == pytest.approx(3 / 11)
    # Recall 6/10 does reach t = 0.6 (numpy's arange(0, 1.1, .1) would not): 7 of 11 points.
    assert voc_ap_11point(np.arange(1, 7) / 10, ones(6)) == pytest.approx(7 / 11)
    assert voc_ap_area(np.arange(1, 7) / 10, ones(6)) == pytest.approx(0.6)
    assert voc_ap_area(np.array([]), np.array([])) == 0.0


def test_duplicate_images_across_ranks_count_once():
    ev = VOCEvaluator(CLASSES, GT)
    ids, outputs = outputs_by_image()
    ev.process(ids, outputs)
    ev.process(ids[:1], outputs[:1])  # a distributed sampler's padding repeats images
    check_against_hand_values(ev.evaluate()["voc"])


def write_devkit(root: Path):
    voc = root / "VOCdevkit" / "VOC2007"
    (voc / "Annotations").mkdir(parents=True)
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "ImageSets" / "Main" / "test.txt").write_text("".join(f"{NAMES[i]}\n" for i in sorted(NAMES)))
    for image, objs in GT.items():
        xml_objects = "".join(
            f"<object><name>{CLASSES[o['label'] - 1]}</name><difficult>{int(o['difficult'])}</difficult>"
            f"<bndbox><xmin>{o['bbox'][0] + 1}</xmin><ymin>{o['bbox'][1] + 1}</ymin>"
            f"<xmax>{o['bbox'][2]}</xmax><ymax>{o['bbox'][3]}</ymax></bndbox></object>" for o in objs)
        (voc / "Annotations" / f"{NAMES[image]}.xml").write_text(
            f"<annotation><filename>{NAMES[image]}.jpg</filename><size><width>200</width><height>200</height>"
            f"<depth>3</depth></size>{xml_objects}</annotation>")
    return voc


def test_comp4_files_round_trip_through_eval_det(tmp_path):
    ev, voc = evaluate(output_dir=tmp_path / "run" / "eval")
    results_dir = tmp_path / "run" / "eval" / "voc_results"
    cat_file = comp4_path(results_dir, "test", "cat")
    lines = cat_file.read_text().splitlines()
    assert lines[0].split() == ["000001", "0.8999999761581421", "1", "1", "10", "10"]  # devkit coordinates
    assert lines[4].split()[2:] == ["1", "1", "10", "5"]
    ids, scores, boxes = read_comp4(cat_file, {n: i for i, n in NAMES.items()})
    assert ids.tolist() == [1, 1, 1, 2, 2] and boxes[4].tolist() == [0, 0, 10, 5]
    assert comp4_path(results_dir, "test", "dog").read_text() == ""  # every class gets a file
    metrics = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert metrics["voc"]["mAP_07"] == voc["mAP_07"]

    voc_root = write_devkit(tmp_path)
    out = tmp_path / "rescored"
    tool = runpy.run_path(str(REPO / "tools" / "eval_det.py"))
    argv = ["--results", str(results_dir), "--voc-root", str(voc_root), "--split", "test", "--classes",
            ",".join(CLASSES), "--output-dir", str(out)]
    assert tool["main"](tool["get_args_parser"]().parse_args(argv)) == 0
    assert "mAP (VOC07 11-point)" in (out / "report" / "report.md").read_text()
    rescored = json.loads((out / "eval" / "metrics.json").read_text())["voc"]
    for key in ("mAP_07", "mAP_area", "per_class_07", "per_class_area", "num_positives"):
        assert rescored[key] == voc[key], key
    check_against_hand_values(rescored)

    cat_file.write_text(cat_file.read_text() + "009999 0.5 1 1 2 2\n")
    with pytest.raises(ValueError, match="cat.txt:6: image '009999' is not in the evaluated image set"):
        tool["main"](tool["get_args_parser"]().parse_args(argv))
    comp4_path(results_dir, "test", "dog").unlink()
    with pytest.raises(FileNotFoundError, match="devkit results missing for 1 class"):
        tool["main"](tool["get_args_parser"]().parse_args(argv))


def test_bad_ground_truth_and_labels_are_named():
    with pytest.raises(ValueError, match=r"gt\[1\]\[0\]: label 9 outside 1..5"):
        VOCEvaluator(CLASSES, {1: [{"label": 9, "bbox": [0, 0, 1, 1]}]})
    ev = VOCEvaluator(CLASSES, GT)
    with pytest.raises(ValueError, match=r"predicted labels \[0\] outside 1..5"):
        ev.process([1], [{"boxes": torch.zeros(1, 4), "scores": torch.ones(1), "labels": torch.zeros(1)}])
    ev.process([7], [{"boxes": torch.zeros(0, 4), "scores": torch.ones(0), "labels": torch.zeros(0)}])
    with pytest.raises(KeyError, match=r"image ids \[7\] have no ground-truth entry"):
        ev.evaluate()
