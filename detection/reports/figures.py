"""Report figures (matplotlib, Agg backend, PNG): precision-recall curves and training curves."""
import math
from pathlib import Path
from typing import Dict, List, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DPI = 110


def save_figure(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_pr_overall(curves_by_label: Dict[str, dict], path: Path, title: str) -> Path:
    """Mean precision-recall curve (IoU .5) of each labelled section/run on one axis."""
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    for label, section in curves_by_label.items():
        ax.plot(section["recall"], section["overall"], label=label, linewidth=1.8)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return save_figure(fig, path)


def plot_pr_per_class(section: dict, ap_by_class: Dict[str, Optional[float]], path: Path, title: str) -> Path:
    """Small multiples: one precision-recall panel per class (classes without ground truth are skipped)."""
    classes = [c for c, curve in section["per_class"].items() if curve is not None]
    cols = min(5, max(1, len(classes)))
    rows = max(1, math.ceil(len(classes) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.0 * rows), squeeze=False, sharex=True, sharey=True)
    for ax in axes.flat[len(classes):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, classes):
        ax.plot(section["recall"], section["per_class"][name], linewidth=1.4)
        ap = ap_by_class.get(name)
        ax.set_title(f"{name}" + ("" if ap is None else f" ({ap:.1f})"), fontsize=8)
        ax.set(xlim=(0, 1), ylim=(0, 1.02))
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_training(train_log: List[dict], eval_log: List[dict], path: Path, title: str) -> Path:
    """Loss terms and learning rate against iteration, plus evaluation metrics when the run logged any."""
    panels = 3 if eval_log else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 3.6))
    iters = [e["iter"] for e in train_log]
    loss_keys = ["loss"] + sorted({k for e in train_log for k in e if k.startswith("loss_")})
    for key in loss_keys:
        points = [(e["iter"], e[key]) for e in train_log if isinstance(e.get(key), (int, float))]
        if points:
            axes[0].plot(*zip(*points), label=key, linewidth=2.0 if key == "loss" else 1.0)
    axes[0].set(xlabel="iteration", ylabel="loss", title="training loss")
    axes[0].legend(fontsize=7)
    lr = [(e["iter"], e["lr"]) for e in train_log if isinstance(e.get("lr"), (int, float))]
    if lr:
        axes[1].plot(*zip(*lr), color="tab:purple")
        if min(v for _, v in lr) > 0:
            axes[1].set_yscale("log")
    axes[1].set(xlabel="iteration", ylabel="learning rate", title="learning rate")
    if eval_log:
        keys = sorted({k for e in eval_log for k in e if k.startswith("eval/")})
        for key in keys:
            points = [(e["iter"], e[key]) for e in eval_log if isinstance(e.get(key), (int, float))]
            if points and key.split("/")[-1] in ("AP", "AP50", "mAP_07", "mAP_area"):
                axes[2].plot(*zip(*points), marker="o", markersize=3, label=key[len("eval/"):])
        axes[2].set(xlabel="iteration", ylabel="%", title="evaluation")
        axes[2].legend(fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3)
    if not iters:
        axes[0].text(0.5, 0.5, "no training lines", ha="center", transform=axes[0].transAxes)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
