"""Class lists for detectors that carry none (detectron2 files): ``--classes coco|voc|FILE``.

COCO: the 80 instances_*2017.json categories, (id, name) in id order, which is detectron2's contiguous order.
"""
import json
from pathlib import Path
from typing import List

from .voc import VOC_CLASSES

COCO_CATEGORIES = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"),
    (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"),
    (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"),
    (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"), (28, "umbrella"),
    (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"), (36, "snowboard"),
    (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"), (41, "skateboard"),
    (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"), (47, "cup"), (48, "fork"),
    (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"), (54, "sandwich"), (55, "orange"),
    (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"), (60, "donut"), (61, "cake"), (62, "chair"),
    (63, "couch"), (64, "potted plant"), (65, "bed"), (67, "dining table"), (70, "toilet"), (72, "tv"),
    (73, "laptop"), (74, "mouse"), (75, "remote"), (76, "keyboard"), (77, "cell phone"), (78, "microwave"),
    (79, "oven"), (80, "toaster"), (81, "sink"), (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"),
    (87, "scissors"), (88, "teddy bear"), (89, "hair drier"), (90, "toothbrush"),
)
NAMED_CLASS_LISTS = ("coco", "voc")


def class_list(spec: str) -> List[dict]:
    """``[{"id", "name"}, ...]`` for ``coco``, ``voc``, a COCO-format JSON (its ``categories``, sorted by id) or a
    text file with one class name per line (ids 1..N)."""
    if spec == "coco":
        return [{"id": i, "name": n} for i, n in COCO_CATEGORIES]
    if spec == "voc":
        return [{"id": i + 1, "name": n} for i, n in enumerate(VOC_CLASSES)]
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"--classes {spec!r}: expected {' or '.join(NAMED_CLASS_LISTS)}, a COCO-format JSON "
                                f"or a text file with one class name per line; no such file")
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        cats = data.get("categories") if isinstance(data, dict) else None
        if not isinstance(cats, list) or not all(isinstance(c, dict) and "id" in c and "name" in c for c in cats):
            raise ValueError(f"{path}: expected a COCO-format JSON with a 'categories' list of {{id, name}}")
        return [{"id": int(c["id"]), "name": str(c["name"])} for c in sorted(cats, key=lambda c: c["id"])]
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{path}: no class names (expected one per line)")
    return [{"id": i + 1, "name": n} for i, n in enumerate(names)]
