"""Dataset records: one dict per image, shared by every loader (VOC, COCO, COCO-format JSON, digits).

A record holds ``image_id`` (int, unique), ``file`` (path), ``name`` (VOC image name / COCO file_name), ``width``,
``height`` (from the annotation, or None), and per-object arrays: ``boxes`` float32 [N, 4] (x1, y1, x2, y2 in
0-based continuous pixels of the upright image), ``labels`` int64 (contiguous 1..K), ``iscrowd`` and ``difficult``
(uint8), ``area`` float32 (COCO's segment area, used for small/medium/large AP).
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from .issues import DataIssues


def make_record(image_id: int, file: str, name: str, width: Optional[int], height: Optional[int],
                boxes=None, labels=None, iscrowd=None, difficult=None, area=None) -> dict:
    boxes = np.zeros((0, 4), np.float32) if boxes is None else np.asarray(boxes, np.float32).reshape(-1, 4)
    n = len(boxes)

    def arr(values, dtype, default):
        return np.full(n, default, dtype) if values is None else np.asarray(values, dtype).reshape(n)

    wh = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return {
        "image_id": int(image_id), "file": str(file), "name": str(name),
        "width": None if width is None else int(width), "height": None if height is None else int(height),
        "boxes": boxes, "labels": arr(labels, np.int64, 0), "iscrowd": arr(iscrowd, np.uint8, 0),
        "difficult": arr(difficult, np.uint8, 0), "area": wh.astype(np.float32) if area is None else arr(area, np.float32, 0),
    }


def sanitize_boxes(record: dict, issues: DataIssues, where: str, object_names: Optional[List[str]] = None) -> dict:
    """Clip boxes to the image and drop invalid ones (policy ``invalid_box``); returns the record, updated.

    ``object_names[i]`` names object i in messages (default "object i").
    """
    boxes, w, h = record["boxes"], record["width"], record["height"]
    if len(boxes) == 0:
        return record
    keep = np.ones(len(boxes), bool)
    names = object_names or [f"object {i}" for i in range(len(boxes))]
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        problem = None
        if not np.all(np.isfinite([x1, y1, x2, y2])):
            problem = "has non-finite coordinates"
        elif x2 < x1 or y2 < y1:
            problem = "is inverted (x2 < x1 or y2 < y1)"
        elif x2 == x1 or y2 == y1:
            problem = "has zero area"
        elif w is not None and h is not None:
            cx1, cy1, cx2, cy2 = min(max(x1, 0), w), min(max(y1, 0), h), min(max(x2, 0), w), min(max(y2, 0), h)
            if cx2 <= cx1 or cy2 <= cy1:
                problem = f"lies outside the {w}x{h} image"
            elif (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
                issues.repair("clipped_box", where, f"{names[i]} box {[x1, y1, x2, y2]} clipped to the {w}x{h} image")
                boxes[i] = (cx1, cy1, cx2, cy2)
        if problem:
            issues.error("invalid_box", where, f"{names[i]} box (x1, y1, x2, y2) = {[x1, y1, x2, y2]} {problem}")
            keep[i] = False
    if not keep.all():
        record = select_objects(record, keep)
    return record


def select_objects(record: dict, keep: np.ndarray) -> dict:
    out = dict(record)
    for key in ("boxes", "labels", "iscrowd", "difficult", "area"):
        out[key] = record[key][keep]
    return out


@dataclass
class DetectionSource:
    """Records of one or more splits with their categories.

    ``categories[i]`` is label ``i + 1``: ``{"id": original dataset id, "name": ...}``. ``has_annotations`` is False
    for splits whose ground truth is not public (VOC 2012 test), which can be run but not scored.
    """

    name: str
    kind: str  # "voc" or "coco"
    records: List[dict]
    categories: List[Dict]
    issues: DataIssues
    has_annotations: bool = True
    year: Optional[int] = None  # VOC year of the test split (picks the 11-point metric for 2007)
    extra: dict = field(default_factory=dict)

    @property
    def class_names(self) -> List[str]:
        return [c["name"] for c in self.categories]

    @property
    def label_to_category_id(self) -> Dict[int, int]:
        return {i + 1: int(c["id"]) for i, c in enumerate(self.categories)}


def coco_ground_truth(source: DetectionSource) -> dict:
    """The source's (cleaned) ground truth as a COCO-format dict, for pycocotools-style evaluation."""
    images, annotations = [], []
    ann_id = 1
    for r in source.records:
        images.append({"id": r["image_id"], "file_name": r["name"], "width": r["width"], "height": r["height"]})
        for box, label, crowd, difficult, area in zip(r["boxes"].tolist(), r["labels"].tolist(), r["iscrowd"].tolist(),
                                                       r["difficult"].tolist(), r["area"].tolist()):
            x1, y1, x2, y2 = box
            annotations.append({
                "id": ann_id, "image_id": r["image_id"], "category_id": source.categories[label - 1]["id"],
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(area),
                # VOC "difficult" objects neither count as misses nor as false-positive matches: COCO's crowd rule.
                "iscrowd": int(crowd or difficult),
            })
            ann_id += 1
    categories = [{"id": int(c["id"]), "name": c["name"]} for c in source.categories]
    return {"images": images, "annotations": annotations, "categories": categories}
