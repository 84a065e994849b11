"""A few images with their predicted and ground-truth boxes, saved for the report's sample grid.

``eval_dir/samples.json``::

    {"class_names": ["cat", ...],                    # index i is label i + 1
     "images": [{"file": "samples/00_42.jpg",        # relative to eval_dir
                 "image_id": 42, "width": 500, "height": 375,
                 "predictions": [{"box": [x1, y1, x2, y2], "score": 0.97, "label": 3, "name": "cat"}, ...],
                 "ground_truth": [{"box": [...], "label": 3, "name": "cat", "difficult": false}, ...]}]}

Boxes are absolute pixels of the saved image (0-based continuous), predictions best score first.
"""
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from backbones.utils.atomic_io import atomic_open, atomic_write_json

SAMPLES_FILE = "samples.json"
SAMPLES_DIR = "samples"


def _to_pil(image) -> Image.Image:
    if isinstance(image, (str, Path)):
        with Image.open(image) as im:
            return im.convert("RGB")
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)  # CHW tensor layout
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype != np.uint8:
        # Float images are taken as [0, 1] (torchvision's convention for detection inputs).
        array = (np.clip(array.astype(np.float64), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(array).convert("RGB")


def _name(class_names: Union[Sequence[str], Dict[int, str]], label: int) -> str:
    if isinstance(class_names, dict):
        return str(class_names.get(label, label))
    return class_names[label - 1] if 1 <= label <= len(class_names) else str(label)


def _boxes(entry: dict, key: str) -> np.ndarray:
    value = entry.get(key, [])
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float64)


def write_samples(eval_dir, images: Sequence, outputs: Sequence[dict], targets: Sequence[dict],
                  class_names: Union[Sequence[str], Dict[int, str]], image_ids: Optional[Sequence[int]] = None,
                  min_score: float = 0.05, max_detections: int = 50) -> Path:
    """Save ``images`` (tensors CHW in [0, 1] or uint8, HWC arrays, PIL images or file paths) as JPEGs with their
    predictions (``outputs``: boxes/scores/labels) and ground truth (``targets``: boxes/labels[/difficult]) in the
    images' own pixel coordinates. Returns the path of samples.json."""
    if not (len(images) == len(outputs) == len(targets)):
        raise ValueError(f"write_samples: {len(images)} images, {len(outputs)} outputs and {len(targets)} targets; "
                         f"expected one of each per image")
    eval_dir = Path(eval_dir)
    entries: List[dict] = []
    for i, (image, output, target) in enumerate(zip(images, outputs, targets)):
        pil = _to_pil(image)
        image_id = int(image_ids[i]) if image_ids is not None else int(target.get("image_id", i))
        rel = f"{SAMPLES_DIR}/{i:02d}_{image_id}.jpg"
        with atomic_open(eval_dir / rel, "wb") as f:
            pil.save(f, format="JPEG", quality=90)
        scores = _boxes(output, "scores").reshape(-1)
        order = np.argsort(-scores, kind="mergesort")
        order = order[scores[order] >= min_score][:max_detections]
        pred_boxes = _boxes(output, "boxes").reshape(-1, 4)
        pred_labels = _boxes(output, "labels").reshape(-1).astype(int)
        gt_boxes = _boxes(target, "boxes").reshape(-1, 4)
        gt_labels = _boxes(target, "labels").reshape(-1).astype(int)
        difficult = _boxes(target, "difficult").reshape(-1).astype(bool) if "difficult" in target else \
            np.zeros(len(gt_labels), dtype=bool)
        entries.append({
            "file": rel, "image_id": image_id, "width": pil.width, "height": pil.height,
            "predictions": [{"box": [float(v) for v in pred_boxes[j]], "score": float(scores[j]),
                             "label": int(pred_labels[j]), "name": _name(class_names, int(pred_labels[j]))}
                            for j in order],
            "ground_truth": [{"box": [float(v) for v in gt_boxes[j]], "label": int(gt_labels[j]),
                              "name": _name(class_names, int(gt_labels[j])), "difficult": bool(difficult[j])}
                             for j in range(len(gt_labels))],
        })
    names = [class_names[k] for k in sorted(class_names)] if isinstance(class_names, dict) else list(class_names)
    path = eval_dir / SAMPLES_FILE
    atomic_write_json(path, {"class_names": names, "images": entries})
    return path
