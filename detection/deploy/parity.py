"""Detection parity between the exported model and the plain model (``tools/infer.py --no-optimize``).

Detections are matched per image and class, greedily by IoU: a pair matches when IoU >= 0.99 and the scores differ
by at most 1e-3. The matched fraction is matched / max(reference, exported) over all images, so both missed and
extra detections count against it (an export without NMS has many extra ones, one without box decoding has boxes
at the proposals; tests/test_deploy.py checks that both are caught).
"""
from typing import Callable, Dict, List, Sequence

import numpy as np
import torch
from torchvision.ops import box_iou

IOU_THRESH = 0.99
SCORE_TOL = 1e-3
MIN_MATCHED = 0.99  # fraction; below it the export fails (one borderline detection among hundreds may flip)


def match_image(ref: Dict[str, torch.Tensor], out: Dict[str, torch.Tensor], iou_thresh: float = IOU_THRESH,
                score_tol: float = SCORE_TOL) -> dict:
    """Counts for one image: reference, exported, matched; the worst IoU and score difference among matches."""
    matched, worst_iou, worst_score = 0, 1.0, 0.0
    for label in torch.unique(torch.cat([ref["labels"], out["labels"]])).tolist():
        r, o = ref["labels"] == label, out["labels"] == label
        if not (bool(r.any()) and bool(o.any())):
            continue
        iou = box_iou(ref["boxes"][r].double(), out["boxes"][o].double())
        score_diff = (ref["scores"][r].double()[:, None] - out["scores"][o].double()[None, :]).abs()
        ok = (iou >= iou_thresh) & (score_diff <= score_tol)
        pairs = sorted(((float(iou[i, j]), i, j) for i, j in ok.nonzero().tolist()), reverse=True)
        used_r, used_o = set(), set()
        for value, i, j in pairs:
            if i in used_r or j in used_o:
                continue
            used_r.add(i), used_o.add(j)
            matched += 1
            worst_iou, worst_score = min(worst_iou, value), max(worst_score, float(score_diff[i, j]))
    return {"reference": int(len(ref["boxes"])), "exported": int(len(out["boxes"])), "matched": matched,
            "min_iou": worst_iou, "max_score_diff": worst_score}


def compare(reference: Callable, exported: Callable, images: Sequence[torch.Tensor],
            min_matched: float = MIN_MATCHED) -> dict:
    """Run both on every image (one at a time) and summarise: the parity figures written beside the export."""
    per_image = []
    for image in images:
        with torch.no_grad():
            ref = {k: v.cpu() for k, v in reference([image])[0].items()}
        per_image.append(match_image(ref, exported([image])[0]))
    n_ref = sum(p["reference"] for p in per_image)
    n_out = sum(p["exported"] for p in per_image)
    matched = sum(p["matched"] for p in per_image)
    fraction = matched / max(n_ref, n_out) if max(n_ref, n_out) else 1.0
    return {"images": len(per_image), "image_sizes": [list(image.shape[-2:]) for image in images],
            "reference_detections": n_ref, "exported_detections": n_out, "matched": matched,
            "matched_fraction": fraction, "passed": fraction >= min_matched,
            "min_iou": min((p["min_iou"] for p in per_image if p["matched"]), default=None),
            "max_score_diff": max((p["max_score_diff"] for p in per_image if p["matched"]), default=None),
            "criteria": {"iou": IOU_THRESH, "score_tol": SCORE_TOL, "min_matched_fraction": min_matched,
                         "reference": "tools/infer.py --no-optimize (the plain model)"},
            "per_image": per_image}


def summary_line(parity: dict) -> str:
    return (f"parity: {parity['matched']}/{max(parity['reference_detections'], parity['exported_detections'])} "
            f"detections matched ({100 * parity['matched_fraction']:.1f}%) on {parity['images']} images "
            f"(reference {parity['reference_detections']}, exported {parity['exported_detections']}; IoU >= "
            f"{IOU_THRESH}, |score diff| <= {SCORE_TOL})")


def generated_images(count: int = 4, seed: int = 0) -> List[torch.Tensor]:
    """``count`` digits canvases (detection/data/digits.py) of different sizes, 1-4 digits each: images with
    objects for a digits detector and textured scenes for others. Deterministic, made on the spot."""
    from sklearn.datasets import load_digits

    from ..data.digits import render_image
    from .contract import pixels_to_input

    digits = load_digits()
    rng = np.random.default_rng([seed, 29])
    return [pixels_to_input(render_image(rng, digits.images, digits.target, (80, 176), (12, 40), (1, 4))[0])
            for _ in range(count)]
