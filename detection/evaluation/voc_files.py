"""PASCAL VOC devkit files: ``comp4_det_<split>_<class>.txt`` detection results and the ground truth of a split.

A results line is ``<image_name> <score> <xmin> <ymin> <xmax> <ymax>`` in devkit coordinates (1-based pixel
indices), i.e. a 0-based continuous box (x1, y1, x2, y2) is written as (x1 + 1, y1 + 1, x2, y2). Numbers are
written with the shortest text that reads back to the same double, so re-scoring a written file reproduces the
in-memory evaluation exactly (ties in score keep their file order, as in the devkit).
"""
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

COMP4_TEMPLATE = "comp4_det_{split}_{cls}.txt"


def comp4_path(results_dir, split: str, class_name: str) -> Path:
    return Path(results_dir) / COMP4_TEMPLATE.format(split=split, cls=class_name)


def _number(value: float) -> str:
    return np.format_float_positional(float(value), unique=True, trim="-")


def format_comp4_lines(image_names: Sequence[str], scores: np.ndarray, boxes: np.ndarray) -> str:
    """Devkit lines for one class; ``boxes`` are 0-based continuous (x1, y1, x2, y2)."""
    lines = []
    for name, score, (x1, y1, x2, y2) in zip(image_names, scores.tolist(), boxes.tolist()):
        coords = " ".join(_number(v) for v in (x1 + 1, y1 + 1, x2, y2))
        lines.append(f"{name} {_number(score)} {coords}\n")
    return "".join(lines)


def read_comp4(path: Path, name_to_id: Dict[str, int]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image ids, scores, 0-based continuous boxes) of one devkit results file, in file order."""
    ids, scores, boxes = [], [], []
    for line_no, line in enumerate(Path(path).read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{line_no}"
        if len(fields) != 6:
            raise ValueError(f"{where}: expected '<image_name> <score> <xmin> <ymin> <xmax> <ymax>', got {line!r}")
        if fields[0] not in name_to_id:
            raise ValueError(f"{where}: image {fields[0]!r} is not in the evaluated image set")
        try:
            score, xmin, ymin, xmax, ymax = (float(v) for v in fields[1:])
        except ValueError:
            raise ValueError(f"{where}: score and box must be numbers, got {line!r}") from None
        ids.append(name_to_id[fields[0]])
        scores.append(score)
        boxes.append([xmin - 1, ymin - 1, xmax, ymax])
    return (np.asarray(ids, dtype=np.int64), np.asarray(scores, dtype=np.float64),
            np.asarray(boxes, dtype=np.float64).reshape(-1, 4))


def read_image_set(voc_root, split: str) -> List[str]:
    """Image names of ``ImageSets/Main/<split>.txt`` (first column) under a ``VOCdevkit/VOC<year>`` folder."""
    path = Path(voc_root) / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; --voc-root must be a VOCdevkit/VOC<year> folder holding "
            f"ImageSets/Main/{split}.txt and Annotations/<image>.xml"
        )
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def load_voc_ground_truth(voc_root, split: str, class_names: Sequence[str]):
    """Ground truth of a devkit split in VOCEvaluator's form.

    Returns (gt {image_id: [{label, bbox (0-based continuous), difficult}]}, image_names {image_id: name}); image ids
    are positions in the image set file.
    """
    from detection.data.issues import DataIssues
    from detection.data.voc import parse_voc_xml

    names = read_image_set(voc_root, split)
    class_to_label = {n: i + 1 for i, n in enumerate(class_names)}
    issues = DataIssues(on_error="raise")
    gt, image_names = {}, {}
    for image_id, name in enumerate(names):
        xml_file = Path(voc_root) / "Annotations" / f"{name}.xml"
        if not xml_file.is_file():
            raise FileNotFoundError(f"{xml_file} not found (image {name!r} of ImageSets/Main/{split}.txt)")
        try:
            _, _, boxes, labels, difficult = parse_voc_xml(xml_file, class_to_label, issues)
        except ValueError as e:
            raise ValueError(f"{xml_file}: {e}") from None
        gt[image_id] = [{"label": int(lab), "bbox": [float(v) for v in box], "difficult": bool(d)}
                        for box, lab, d in zip(boxes, labels, difficult)]
        image_names[image_id] = name
    return gt, image_names
