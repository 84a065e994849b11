"""PASCAL VOC: ``VOCdevkit/VOC{year}/{Annotations,JPEGImages,ImageSets/Main}`` XML annotations.

Boxes are 1-based inclusive pixel indices in the XML; they become 0-based continuous coordinates as
``(xmin - 1, ymin - 1, xmax, ymax)``. ``difficult`` objects are kept in the records (the evaluator ignores them)
and left out of training unless ``data.use_difficult``.
"""
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import List, Optional

import numpy as np

from .image_io import safe_join
from .issues import DataError, DataIssues
from .records import DetectionSource, make_record, sanitize_boxes

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

VOC_LAYOUT = """expected layout under the data root:
  VOCdevkit/VOC2007/Annotations/000005.xml ...
  VOCdevkit/VOC2007/JPEGImages/000005.jpg ...
  VOCdevkit/VOC2007/ImageSets/Main/{trainval,test}.txt
  VOCdevkit/VOC2012/... (same folders; VOC2012 test has no Annotations)"""


def voc_image_id(name: str, fallback: int) -> int:
    """Integer id from a VOC image name ("000005" → 5, "2008_000002" → 2008000002), else ``fallback``."""
    digits = name.replace("_", "")
    return int(digits) if re.fullmatch(r"\d{1,18}", digits) else fallback


def _text(node: ET.Element, path: str) -> str:
    found = node.find(path)
    if found is None or found.text is None:
        raise ValueError(f"missing <{path}>")
    return found.text.strip()


def parse_voc_xml(xml_file: Path, class_to_label: dict, issues: DataIssues):
    """(width, height, boxes, labels, difficult) of one annotation file; raises ValueError when unreadable."""
    try:
        root = ET.parse(xml_file).getroot()
    except ET.ParseError as e:
        raise ValueError(f"not well-formed XML ({e})") from None
    width, height = int(float(_text(root, "size/width"))), int(float(_text(root, "size/height")))
    if width <= 0 or height <= 0:
        raise ValueError(f"<size> {width}x{height} is not a positive image size")
    boxes, labels, difficult = [], [], []
    for i, obj in enumerate(root.findall("object")):
        name = _text(obj, "name")
        if name not in class_to_label:
            issues.error("unknown_category", str(xml_file), f"object {i} has class {name!r}, not one of the "
                                                            f"{len(class_to_label)} dataset classes")
            continue
        try:
            coords = [float(_text(obj, f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
        except ValueError as e:
            issues.error("invalid_box", str(xml_file), f"object {i} ({name}) has no usable <bndbox>: {e}")
            continue
        diff = obj.find("difficult")
        boxes.append([coords[0] - 1, coords[1] - 1, coords[2], coords[3]])
        labels.append(class_to_label[name])
        difficult.append(int(diff is not None and (diff.text or "0").strip() == "1"))
    return width, height, boxes, labels, difficult


def load_voc(data_root: Path, year: int, image_set: str, issues: DataIssues, class_names=VOC_CLASSES,
             start_index: int = 0) -> List[dict]:
    """Records of ``VOC{year}/ImageSets/Main/{image_set}.txt``; images without an XML file get no ground truth only
    when the whole split has none (VOC2012 test)."""
    base = Path(data_root) / "VOCdevkit" / f"VOC{year}"
    list_file = base / "ImageSets" / "Main" / f"{image_set}.txt"
    if not list_file.is_file():
        raise FileNotFoundError(f"PASCAL VOC split {year} {image_set}: {list_file} not found.\n{VOC_LAYOUT}")
    ann_dir, img_dir = base / "Annotations", base / "JPEGImages"
    names = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
    # VOC2012 test ships without object annotations (evaluation server only), whatever XML files it holds.
    has_annotations = (int(year), image_set) != (2012, "test") and ann_dir.is_dir() and \
        any((ann_dir / f"{n}.xml").is_file() for n in names[:1])
    class_to_label = {n: i + 1 for i, n in enumerate(class_names)}
    records, seen = [], set()
    for index, name in enumerate(names):
        where = f"{list_file}:{index + 1}"
        image_file = safe_join(img_dir, f"{name}.jpg", where)
        image_id = voc_image_id(name, start_index + index)
        if image_id in seen:
            issues.error("duplicate_image_id", where, f"image {name!r} (id {image_id}) is listed twice")
            continue
        seen.add(image_id)
        if not has_annotations:
            records.append(make_record(image_id, image_file, name, None, None))
            continue
        xml_file = ann_dir / f"{name}.xml"
        if not xml_file.is_file():
            issues.error("malformed_annotation", str(xml_file), f"annotation file for image {name!r} not found")
            continue
        try:
            width, height, boxes, labels, difficult = parse_voc_xml(xml_file, class_to_label, issues)
        except ValueError as e:
            issues.error("malformed_annotation", str(xml_file), str(e))
            continue
        record = make_record(image_id, image_file, name, width, height, np.asarray(boxes, np.float32), labels,
                             difficult=difficult)
        records.append(sanitize_boxes(record, issues, str(xml_file)))
    return records


def voc_source(data_root: Path, splits, issues: DataIssues, name: Optional[str] = None) -> DetectionSource:
    """One source from ``[(year, image_set), ...]``; image ids stay unique across the splits."""
    records: List[dict] = []
    has_annotations = True
    for year, image_set in splits:
        part = load_voc(data_root, year, image_set, issues, start_index=len(records))
        has_annotations = has_annotations and (not part or part[0]["width"] is not None)
        records += part
    ids = [r["image_id"] for r in records]
    if len(set(ids)) != len(ids):
        raise DataError(f"VOC splits {splits} share image ids; combine disjoint splits only")
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(VOC_CLASSES)]
    year = int(splits[-1][0]) if len(splits) == 1 else None
    return DetectionSource(name or "+".join(f"voc_{y}_{s}" for y, s in splits), "voc", records, categories, issues,
                           has_annotations=has_annotations, year=year)
