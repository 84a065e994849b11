"""Draw detections on an image (used by tools/infer.py)."""
from typing import List, Sequence

import numpy as np
from PIL import Image, ImageDraw

# Distinct, readable colours; class ``label`` uses ``PALETTE[label % len(PALETTE)]``.
PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40)]


def draw_detections(pixels: np.ndarray, detections: List[dict], line_width: int = 2) -> Image.Image:
    """``pixels`` HxWx3 uint8 RGB; ``detections`` dicts with ``box`` (x1, y1, x2, y2), ``score``, ``label``,
    ``category``. Returns a new image with a box and a "category score" tag per detection."""
    image = Image.fromarray(pixels).convert("RGB")
    draw = ImageDraw.Draw(image)
    for det in sorted(detections, key=lambda d: d["score"]):  # best drawn last, on top
        colour = PALETTE[int(det["label"]) % len(PALETTE)]
        x1, y1, x2, y2 = det["box"]
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=line_width)
        text = f"{det['category']} {det['score']:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), text)
        ty = y1 - (bottom - top) - 2 if y1 - (bottom - top) - 2 >= 0 else y1
        draw.rectangle([x1, ty, x1 + (right - left) + 4, ty + (bottom - top) + 2], fill=colour)
        draw.text((x1 + 2, ty), text, fill=(0, 0, 0) if sum(colour) > 400 else (255, 255, 255))
    return image


def detections_to_list(output: dict, categories: Sequence[dict], score_thresh: float) -> List[dict]:
    """Model output (tensors; labels 1..K) → JSON-ready dicts, best score first, scores >= ``score_thresh``."""
    boxes = output["boxes"].tolist()
    scores = output["scores"].tolist()
    labels = output["labels"].tolist()
    dets = [{"box": [round(v, 2) for v in box], "score": round(score, 4), "label": int(label),
             "category_id": int(categories[label - 1]["id"]), "category": categories[label - 1]["name"]}
            for box, score, label in zip(boxes, scores, labels) if score >= score_thresh]
    return sorted(dets, key=lambda d: -d["score"])
