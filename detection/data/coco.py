"""COCO-format JSON (COCO 2014/2017 and any ``--ann FILE --images DIR``): records and category mapping.

Categories map to contiguous labels 1..K in increasing category-id order (detectron2's convention); the evaluator
maps them back with ``DetectionSource.label_to_category_id``. ``bbox`` is ``[x, y, w, h]`` in continuous pixels.
"""
import json
from pathlib import Path
from typing import List, Optional

import numpy as np

from .image_io import image_size, safe_join
from .issues import DataError, DataIssues
from .records import DetectionSource, make_record, sanitize_boxes

COCO_LAYOUT = """expected layout under the data root:
  coco/annotations/instances_{train,val}2017.json    coco/{train,val}2017/*.jpg
  coco/annotations/instances_{train,val}2014.json    coco/{train,val}2014/*.jpg
  coco/annotations/instances_{minival,valminusminival}2014.json   (images in coco/val2014)"""


def read_json(path: Path) -> dict:
    """Parse a JSON annotation file; a malformed file is one clear error with its line and column (whatever the
    policy: without the file there is nothing to skip to)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} not found")
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: line {e.lineno} column {e.colno}: malformed JSON ({e.msg})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with 'images', 'annotations', 'categories'")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: key {key!r} must be a list (COCO format), got {type(data.get(key)).__name__}")
    if not isinstance(data.get("annotations", []), list):
        raise DataError(f"{path}: key 'annotations' must be a list (COCO format)")
    return data


def _int_id(value) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def coco_categories(data: dict, where: str) -> List[dict]:
    cats = []
    for i, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or _int_id(c.get("id")) is None or not isinstance(c.get("name"), str):
            raise DataError(f"{where}: categories[{i}] must have an integer 'id' and a string 'name', got {c!r}")
        cats.append({"id": c["id"], "name": c["name"]})
    ids = [c["id"] for c in cats]
    if len(set(ids)) != len(ids):
        raise DataError(f"{where}: duplicate category ids in 'categories'")
    if not cats:
        raise DataError(f"{where}: 'categories' is empty")
    return sorted(cats, key=lambda c: c["id"])


def load_coco_json(ann_file: Path, image_dir: Path, issues: DataIssues, name: Optional[str] = None,
                   categories: Optional[List[dict]] = None) -> DetectionSource:
    """Records of one COCO-format file. ``categories`` forces a category list (to combine splits consistently)."""
    ann_file, image_dir = Path(ann_file), Path(image_dir)
    data = read_json(ann_file)
    where = str(ann_file)
    cats = categories or coco_categories(data, where)
    cat_to_label = {c["id"]: i + 1 for i, c in enumerate(cats)}
    images = {}
    for i, img in enumerate(data["images"]):
        at = f"{where} images[{i}]"
        if not isinstance(img, dict) or _int_id(img.get("id")) is None or "file_name" not in img:
            issues.error("malformed_annotation", at, f"image entry needs an integer 'id' and a 'file_name', got {img!r}")
            continue
        width, height = img.get("width"), img.get("height")
        if (width is None) != (height is None) or (width is not None and (
                _int_id(width) is None or _int_id(height) is None or width <= 0 or height <= 0)):
            issues.error("malformed_annotation", at, f"width/height {width!r}x{height!r} are not positive integers")
            continue
        if img["id"] in images:
            issues.error("duplicate_image_id", at, f"image id {img['id']} already used by "
                                                    f"{images[img['id']]['name']!r}; this entry is skipped")
            continue
        file = safe_join(image_dir, img["file_name"], at)
        if width is None:
            try:
                width, height = image_size(file)
            except (OSError, ValueError):
                pass  # reported when the image is read
        images[img["id"]] = make_record(img["id"], file, img["file_name"], width, height)
        images[img["id"]]["_objects"] = []
    for i, ann in enumerate(data.get("annotations", [])):
        at = f"{where} annotations[{i}]"
        if not isinstance(ann, dict) or ann.get("image_id") not in images:
            image_id = ann.get("image_id") if isinstance(ann, dict) else None
            issues.error("malformed_annotation", at, f"annotation refers to image id {image_id!r}, which is not "
                                                     f"in 'images' (or was skipped)")
            continue
        if ann.get("category_id") not in cat_to_label:
            issues.error("unknown_category", at, f"category_id {ann.get('category_id')!r} is not in 'categories'")
            continue
        bbox = ann.get("bbox")
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)):
            issues.error("invalid_box", at, f"bbox {bbox!r} is not [x, y, width, height]")
            continue
        x, y, w, h = (float(v) for v in bbox)
        area = ann.get("area", w * h)
        images[ann["image_id"]]["_objects"].append(
            ([x, y, x + w, y + h], cat_to_label[ann["category_id"]], int(bool(ann.get("iscrowd", 0))),
             float(area) if isinstance(area, (int, float)) else w * h, f"annotations[{i}] (id {ann.get('id')})"))
    records = []
    for image_id, rec in images.items():
        objects = rec.pop("_objects")
        names = None
        if objects:
            boxes, labels, crowd, area, names = zip(*objects)
            rec = make_record(image_id, rec["file"], rec["name"], rec["width"], rec["height"],
                              np.asarray(boxes, np.float32), labels, iscrowd=crowd, area=area)
        records.append(sanitize_boxes(rec, issues, f"{where} image id {image_id} ({rec['name']})",
                                      list(names) if names else None))
    return DetectionSource(name or ann_file.stem, "coco", records, cats, issues,
                           extra={"ann_files": [str(ann_file)]})


def combine_coco(sources: List[DetectionSource], name: str) -> DetectionSource:
    """Concatenate COCO sources with the same categories (e.g. 2014 train + valminusminival)."""
    first = sources[0]
    for s in sources[1:]:
        if s.categories != first.categories:
            raise DataError(f"cannot combine {first.name} and {s.name}: their category lists differ")
    records = [r for s in sources for r in s.records]
    ids = [r["image_id"] for r in records]
    if len(set(ids)) != len(ids):
        raise DataError(f"splits {[s.name for s in sources]} share image ids; combine disjoint splits only")
    files = [f for s in sources for f in s.extra.get("ann_files", [])]
    return DetectionSource(name, "coco", records, first.categories, first.issues, extra={"ann_files": files})
