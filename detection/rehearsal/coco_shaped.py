"""A COCO-format dataset with COCO's shape at a small pixel scale, for rehearsing a COCO run on the CPU.

Shape kept from COCO train2017/val2017: the 80 category ids (1..90 with COCO's gaps), COCO's image sizes
(640x480, 480x640, 640x427, ...; scaled down by ``scale``, so aspect ratios are COCO's), and COCO's objects per
image: ~1% of images without objects, the rest 1 + negative binomial (mean ~7.3 objects, long tail, capped at
``max_objects``), ~1% crowd annotations (larger boxes), box sides log-uniform from tiny to most of the image
(COCO's small/medium/large mix). Each object is drawn as a filled rectangle in its category's colour so a detector
has something to learn; the content is not meant to be realistic, the counts and the file formats are.
"""
import json
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
from PIL import Image

from backbones.utils.atomic_io import atomic_write_text
from detection.benchmark.coco_speed import COCO_CATEGORY_IDS

# (width, height) of common COCO images; their aspect ratios span COCO's 0.5..2 range.
COCO_SIZES = ((640, 480), (480, 640), (640, 427), (427, 640), (500, 375), (375, 500), (640, 360), (612, 612),
              (640, 320))
MEAN_OBJECTS = 7.3  # COCO train2017: 860k annotations / 117k images
EMPTY_FRACTION = 0.01  # COCO train2017: ~1,000 of 118,000 images have no annotation
CROWD_FRACTION = 0.01  # COCO: ~1% of annotations are iscrowd


def objects_per_image(rng: np.random.Generator, count: int, max_objects: int = 50) -> np.ndarray:
    """COCO-like counts: 0 for ~1% of images, else 1 + NegBin(r=1.5, mean 6.3), capped at ``max_objects``."""
    r, mean = 1.5, MEAN_OBJECTS - 1
    counts = 1 + rng.negative_binomial(r, r / (r + mean), count)
    counts[rng.random(count) < EMPTY_FRACTION] = 0
    return np.minimum(counts, max_objects)


def _category_colours(rng: np.random.Generator) -> Dict[int, np.ndarray]:
    return {c: rng.integers(0, 256, 3).astype(np.uint8) for c in COCO_CATEGORY_IDS}


def generate_split(folder: Path, count: int, seed: int, scale: float = 0.125, max_objects: int = 50,
                   first_id: int = 1, write_images: bool = True, quality: int = 85) -> Tuple[dict, Path]:
    """Write ``count`` JPEGs under ``folder`` (unless ``write_images`` is False: annotations only, for timing the
    indexing of larger sets) and return (COCO dataset dict, image folder)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    colours = _category_colours(np.random.default_rng(0))
    cats = np.asarray(COCO_CATEGORY_IDS)
    counts = objects_per_image(rng, count, max_objects)
    images, annotations = [], []
    for k in range(count):
        image_id = first_id + k
        w0, h0 = COCO_SIZES[rng.integers(len(COCO_SIZES))]
        w, h = max(8, round(w0 * scale)), max(8, round(h0 * scale))
        name = f"{image_id:012d}.jpg"
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
        n = int(counts[k])
        crowd = rng.random(n) < CROWD_FRACTION
        side = np.exp(rng.uniform(np.log(2.0), np.log(0.8 * min(w, h)), n))
        side[crowd] = np.maximum(side[crowd], 0.4 * min(w, h))  # crowd regions are large
        bw = np.clip(side * rng.uniform(0.6, 1.4, n), 1.0, w - 1)
        bh = np.clip(side * rng.uniform(0.6, 1.4, n), 1.0, h - 1)
        x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        labels = cats[rng.integers(len(cats), size=n)]
        if write_images:
            pixels = np.empty((h, w, 3), np.uint8)
            pixels[:] = rng.integers(60, 200, 3).astype(np.uint8)
            for j in np.argsort(-bw * bh):  # large first, so small objects stay visible
                x0, y0 = int(x[j]), int(y[j])
                pixels[y0:int(np.ceil(y[j] + bh[j])), x0:int(np.ceil(x[j] + bw[j]))] = colours[int(labels[j])]
            Image.fromarray(pixels).save(folder / name, quality=quality)
        for j in range(n):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": int(labels[j]),
                                "bbox": [round(float(v), 2) for v in (x[j], y[j], bw[j], bh[j])],
                                "area": round(float(bw[j] * bh[j] * 0.8), 2), "iscrowd": int(crowd[j])})
    categories = [{"id": int(c), "name": f"category{c}", "supercategory": "thing"} for c in cats]
    return {"images": images, "annotations": annotations, "categories": categories}, folder


def write_split(root: Path, split: str, count: int, seed: int, **kwargs) -> Tuple[Path, Path]:
    """``root/annotations/instances_<split>.json`` and ``root/<split>/*.jpg``; returns (annotation file, folder)."""
    root = Path(root)
    data, folder = generate_split(root / split, count, seed, **kwargs)
    ann = root / "annotations" / f"instances_{split}.json"
    ann.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(ann, json.dumps(data))
    return ann, folder


def describe(data: dict) -> Dict[str, float]:
    """Counts that show the set has COCO's shape (images, objects per image, crowd fraction, categories)."""
    per_image = np.bincount([a["image_id"] - data["images"][0]["id"] for a in data["annotations"]],
                            minlength=len(data["images"]))
    crowd = sum(a["iscrowd"] for a in data["annotations"])
    return {"images": len(data["images"]), "annotations": len(data["annotations"]),
            "categories": len(data["categories"]), "objects_per_image_mean": float(per_image.mean()),
            "objects_per_image_max": int(per_image.max()), "empty_images": int((per_image == 0).sum()),
            "crowd_annotations": int(crowd)}
