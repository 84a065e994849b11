"""Training/validation error curves of several runs on one figure (the style of the paper's Figs. 1, 4 and 6:
thin dashed lines = training error, bold lines = validation error, one colour per run)."""
import json
import re
from pathlib import Path
from typing import List, Optional, Sequence

from ..utils.metrics_log import read_metrics


def run_label(run_dir: Path) -> str:
    final = run_dir / "final.json"
    if final.is_file():
        return json.loads(final.read_text())["arch"]
    return run_dir.name


def summary_table(run_dirs: Sequence) -> str:
    """A Markdown table of the runs' final.json figures (runs without one are listed as unfinished)."""
    rows = ["| run | arch | iters | train err (%) | val top-1 err (%) | protocol | CPU s | wall s |",
            "|---|---|---|---|---|---|---|---|"]
    for run in map(Path, run_dirs):
        final = run / "final.json"
        if not final.is_file():
            rows.append(f"| {run} | unfinished | | | | | | |")
            continue
        f = json.loads(final.read_text())
        rows.append(f"| {run} | {f['arch']} | {f['iters']} | {f['train_err']:.2f} | {f['top1_err']:.2f} | "
                    f"{f['protocol']} | {f.get('cpu_time_s', '')} | {f.get('wall_time_s', '')} |")
    return "\n".join(rows)


def _family(label: str) -> str:
    match = re.match(r"[A-Za-z_]+", label)
    return match.group(0).rstrip("_") if match else label


def plot_error_curves(run_dirs: Sequence, output, labels: Optional[List[str]] = None, title: str = "",
                      ymax: Optional[float] = None, panels: bool = False) -> Path:
    """Draw ``train_err`` and ``eval/top1_err`` against iterations for every run folder; save to ``output``.

    With ``panels``, runs are grouped by architecture family (the letters of the label: "plain", "resnet") into
    side-by-side panels with a shared error axis, like the paper's Fig. 6.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dirs = [Path(d) for d in run_dirs]
    if labels is not None and len(labels) != len(run_dirs):
        raise ValueError(f"{len(labels)} labels given for {len(run_dirs)} runs")
    labels = list(labels) if labels else [run_label(run) for run in run_dirs]
    families = list(dict.fromkeys(_family(label) for label in labels)) if panels else [""]
    fig, axes = plt.subplots(1, len(families), figsize=(6 * len(families) + 1, 4.5), sharey=True, squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (run, label) in enumerate(zip(run_dirs, labels)):
        records = read_metrics(run)
        train = [(r["iter"], r["train_err"]) for r in records if r.get("train_err") is not None]
        val = [(r["iter"], r["eval/top1_err"]) for r in records if r.get("eval/top1_err") is not None]
        if not train and not val:
            raise ValueError(f"{run} has no metrics.jsonl with train_err / eval/top1_err records")
        ax = axes[0][families.index(_family(label)) if panels else 0]
        colour = colours[i % len(colours)]
        if train:
            ax.plot(*zip(*train), linestyle="--", linewidth=0.8, color=colour, label=f"{label} train")
        if val:
            ax.plot(*zip(*val), linewidth=2.0, color=colour, label=f"{label} val")
    for ax, family in zip(axes[0], families):
        ax.set_xlabel("iterations")
        ax.set_ylim(0, ymax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        if family:
            ax.set_title(family)
    axes[0][0].set_ylabel("top-1 error (%)")
    if title:
        fig.suptitle(title)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return output
