"""``digits``: a small generated COCO-format detection dataset that trains on a CPU in minutes.

scikit-learn's 8x8 handwritten digits (``load_digits``, 1797 images) are scaled to 12-40 px and painted, 1-4 per
image, on textured canvases of 96-128 px. Everything is a pure function of the parameters (seed included), so two
machines generate identical files. Train and val canvases draw from the pretraining stage's fixed digits split
(1437 / 360, ``backbones.pretrain.datasets.digits``), so a digits-pretrained backbone never saw a val digit. The folder holds PNG images and
``instances_{train,val}.json`` and is read through the same COCO-format loader as any ``--ann/--images`` dataset.
"""
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image

from backbones.pretrain.datasets.digit_canvas import ink_digit, scaled_alpha, texture
from backbones.utils.atomic_io import atomic_write_json

CATEGORIES = [{"id": d + 1, "name": str(d)} for d in range(10)]
VERSION = 1  # bump when the rendering changes, so stale generated folders are not reused
INK_THRESHOLD = 0.25  # a pixel is part of the digit (and of its box) where the ink alpha exceeds this


def digits_folder_name(seed: int, num_train: int, num_val: int, canvas: Sequence[int], digit_size: Sequence[int],
                       per_image: Sequence[int]) -> str:
    return (f"digits_v{VERSION}_s{seed}_n{num_train}-{num_val}_c{canvas[0]}-{canvas[1]}_d{digit_size[0]}-{digit_size[1]}"
            f"_k{per_image[0]}-{per_image[1]}")


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def render_image(rng: np.random.Generator, digit_images: np.ndarray, digit_labels: np.ndarray, canvas: Sequence[int],
                 digit_size: Sequence[int], per_image: Sequence[int]) -> Tuple[np.ndarray, List[Tuple[List[float], int]]]:
    """One canvas (HxWx3 uint8) and its objects [(box x1 y1 x2 y2, digit)]."""
    h, w = (int(v) for v in rng.integers(canvas[0], canvas[1] + 1, 2))
    img = texture(rng, h, w)
    objects: List[Tuple[List[float], int]] = []
    for _ in range(int(rng.integers(per_image[0], per_image[1] + 1))):
        for _attempt in range(20):
            size = int(rng.integers(digit_size[0], digit_size[1] + 1))
            dw = max(4, int(round(size * rng.uniform(0.75, 1.0))))
            x0, y0 = int(rng.integers(0, w - dw + 1)), int(rng.integers(0, h - size + 1))
            k = int(rng.integers(len(digit_images)))
            alpha = scaled_alpha(digit_images[k] / 16.0, dw, size)
            ys, xs = np.nonzero(alpha > INK_THRESHOLD)
            if len(xs) == 0:
                continue
            box = [float(x0 + xs.min()), float(y0 + ys.min()), float(x0 + xs.max() + 1), float(y0 + ys.max() + 1)]
            if any(_iou(box, other) > 0.1 for other, _ in objects):
                continue
            ink_digit(img, alpha, y0, x0, rng)
            objects.append((box, int(digit_labels[k])))
            break
    return (img * 255 + 0.5).astype(np.uint8), objects


def _write_split(folder: Path, split: str, rng: np.random.Generator, images: np.ndarray, labels: np.ndarray,
                 count: int, params: Dict) -> None:
    (folder / split).mkdir(parents=True, exist_ok=True)
    coco = {"info": {"description": "resdet digits", **params, "split": split}, "images": [], "annotations": [],
            "categories": CATEGORIES}
    ann_id = 1
    for i in range(count):
        pixels, objects = render_image(rng, images, labels, params["canvas"], params["digit_size"],
                                       params["per_image"])
        file_name = f"{split}/{i:06d}.png"
        Image.fromarray(pixels).save(folder / file_name, optimize=False)
        coco["images"].append({"id": i + 1, "file_name": file_name, "width": pixels.shape[1],
                               "height": pixels.shape[0]})
        for (x1, y1, x2, y2), digit in objects:
            coco["annotations"].append({"id": ann_id, "image_id": i + 1, "category_id": digit + 1,
                                        "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                        "iscrowd": 0})
            ann_id += 1
    atomic_write_json(folder / f"instances_{split}.json", coco, indent=None)


def generate_digits(root, seed: int = 0, num_train: int = 1000, num_val: int = 200, canvas=(96, 128),
                    digit_size=(12, 40), per_image=(1, 4)) -> Path:
    """Generate (once) and return the dataset folder ``root/digits_s{seed}_...``.

    The folder is built under a temporary name and renamed into place, so concurrent processes (DDP ranks) and
    interrupted runs never see a half-written dataset.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from backbones.pretrain.datasets.digits import DIGITS_SPLIT_SEED, DIGITS_VAL_SIZE

    params = {"seed": int(seed), "num_train": int(num_train), "num_val": int(num_val), "canvas": list(canvas),
              "digit_size": list(digit_size), "per_image": list(per_image)}
    root = Path(root)
    folder = root / digits_folder_name(seed, num_train, num_val, canvas, digit_size, per_image)
    if (folder / "instances_val.json").is_file() and (folder / "instances_train.json").is_file():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=root))
    try:
        digits = load_digits()
        train_idx, val_idx = train_test_split(np.arange(len(digits.target)), test_size=DIGITS_VAL_SIZE,
                                              stratify=digits.target, random_state=DIGITS_SPLIT_SEED)
        pools = {"train": np.sort(train_idx), "val": np.sort(val_idx)}
        for split, count, offset in (("train", num_train, 1), ("val", num_val, 2)):
            rng = np.random.default_rng([seed, offset])
            pool = pools[split]
            _write_split(tmp, split, rng, digits.images[pool], digits.target[pool], count, params)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "instances_val.json").is_file():  # lost a race only if the winner finished
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
