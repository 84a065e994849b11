"""Grid of sample images with ground truth (dashed) and predictions above a score threshold (solid, with score)."""
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from PIL import Image  # noqa: E402

from .figures import save_figure  # noqa: E402


def plot_sample_grid(samples: dict, eval_dir: Path, path: Path, score_threshold: float = 0.5,
                     max_images: int = 12) -> Path:
    entries = samples.get("images", [])[:max_images]
    cols = min(4, max(1, len(entries)))
    rows = max(1, math.ceil(len(entries) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    palette = plt.get_cmap("tab20")
    names = samples.get("class_names", [])
    for ax, entry in zip(axes.flat, entries):
        image_file = Path(eval_dir) / entry["file"]
        if not image_file.is_file():
            raise FileNotFoundError(f"{image_file} (listed in {Path(eval_dir) / 'samples.json'}) not found")
        with Image.open(image_file) as im:
            ax.imshow(im.convert("RGB"))
        for gt in entry.get("ground_truth", []):
            x1, y1, x2, y2 = gt["box"]
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, linestyle="--", linewidth=1.0,
                                   edgecolor="white" if not gt.get("difficult") else "grey"))
        for pred in entry.get("predictions", []):
            if pred["score"] < score_threshold:
                continue
            x1, y1, x2, y2 = pred["box"]
            color = palette((pred["label"] - 1) % 20)
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, linewidth=1.6, edgecolor=color))
            ax.text(x1, y1, f"{pred.get('name') or names[pred['label'] - 1]} {pred['score']:.2f}", fontsize=6,
                    color="black", va="bottom", bbox=dict(facecolor=color, alpha=0.8, pad=1, linewidth=0))
        ax.set_title(f"image {entry.get('image_id')}", fontsize=8)
    fig.suptitle(f"predictions with score >= {score_threshold} (solid), ground truth (dashed)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
