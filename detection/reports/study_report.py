"""The report of a multi-seed study: each arm's mean ± spread over seeds, and the study's comparisons stated only
where the difference exceeds the spread (the arms' seed ranges do not overlap), else "not resolved at this scale".

Spread is half the range over seeds, so "mean ± spread" is exactly the interval [min, max] of the measured values.
"""
import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from .document import Block, Figure, Heading, Paragraph, Table
from .figures import plot_pr_overall
from .paper import PAPER_BENCHMARKS, PAPER_CITATION, metric_value
from .run_data import RunData, load_run

ARM_METRICS = ((("bbox", "AP50"), "AP50"), (("bbox", "AP"), "AP"), (("voc", "mAP_07"), "VOC mAP (07 11-pt)"))


@dataclass
class Spread:
    values: List[float]

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values)

    @property
    def spread(self) -> float:
        return (max(self.values) - min(self.values)) / 2

    def __str__(self) -> str:
        return f"{self.mean:.1f} ± {self.spread:.1f}"


@dataclass
class Arm:
    name: str
    backbone: str
    init: str
    runs: List[RunData]
    paper: Optional[dict] = None  # {"row", "AP50", "AP"}: the paper's result this arm stands for

    def metric(self, metric: Tuple[str, str]) -> Optional[Spread]:
        values = [metric_value(r.metrics, metric) for r in self.runs]
        return Spread([v for v in values if v is not None]) if all(v is not None for v in values) and values \
            else None


def compare(arm: Spread, baseline: Spread) -> Tuple[float, bool]:
    """(difference of means, resolved): resolved when it exceeds both spreads together, i.e. the ranges are apart."""
    diff = arm.mean - baseline.mean
    return diff, abs(diff) > arm.spread + baseline.spread


def load_manifest(path) -> dict:
    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"study manifest {path} not found (tools/study.py writes it)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or not manifest.get("arms"):
        raise ValueError(f"{path}: expected a JSON object with a non-empty 'arms' list")
    return manifest


def load_arms(manifest: dict) -> List[Arm]:
    arms = []
    for entry in manifest["arms"]:
        runs = [load_run(d) for d in entry["runs"]]
        arms.append(Arm(entry["name"], entry.get("backbone", runs[0].backbone), entry.get("init", "?"), runs,
                        entry.get("paper")))
    return arms


def arms_table(arms: Sequence[Arm]) -> Table:
    metrics = [(m, label) for m, label in ARM_METRICS if any(a.metric(m) for a in arms)]
    rows = []
    for arm in arms:
        row = [arm.name, arm.backbone, arm.init, str(len(arm.runs)), str(arm.runs[0].final.get("iters", "–"))]
        for metric, _ in metrics:
            s = arm.metric(metric)
            row.append("–" if s is None else f"{s} ({', '.join(f'{v:.1f}' for v in s.values)})")
        rows.append(row)
    return Table(["arm", "backbone", "init", "seeds", "iters"] + [f"{label}: mean ± spread (per seed)"
                                                                    for _, label in metrics],
                 rows, caption="Arms (%; spread = half the range over seeds, so mean ± spread spans every seed)")


def comparison_blocks(arms: Sequence[Arm], comparisons: Sequence[dict]) -> List[Block]:
    by_name = {a.name: a for a in arms}
    rows, sentences = [], []
    for comp in comparisons:
        arm, base = by_name[comp["arm"]], by_name[comp["baseline"]]
        for metric, label in ARM_METRICS[:2]:
            a, b = arm.metric(metric), base.metric(metric)
            if a is None or b is None:
                continue
            diff, resolved = compare(a, b)
            verdict = ("resolved" if resolved else "not resolved at this scale")
            rows.append([comp.get("claim") or f"{arm.name} vs {base.name}", f"{arm.name} − {base.name}", label,
                         f"{diff:+.1f}", f"± {a.spread + b.spread:.1f}", verdict])
            if label == "AP50":
                if resolved:
                    sentences.append(f"{arm.name} {'beats' if diff > 0 else 'falls behind'} {base.name} by "
                                     f"{abs(diff):.1f} AP50 points, more than the seeds' spread "
                                     f"(± {a.spread + b.spread:.1f}).")
                else:
                    sentences.append(f"{arm.name} vs {base.name}: {diff:+.1f} AP50 is within the seeds' spread "
                                     f"(± {a.spread + b.spread:.1f}): not resolved at this scale.")
    if not rows:
        return []
    return [Heading("Comparisons"),
            Table(["claim", "difference", "metric", "Δ of means", "spreads together", "verdict"], rows,
                  caption="A difference is stated only where it exceeds the two arms' spreads together"),
            Paragraph(" ".join(sentences))]


def paper_rows(arms: Sequence[Arm]) -> List[Block]:
    """The paper's VGG-16 → ResNet-101 rows beside the study's vgg16 and resnet101 arms (any dataset)."""
    vgg = next((a for a in arms if a.backbone == "vgg16"), None)
    res = next((a for a in arms if a.backbone == "resnet101"), None)
    if vgg is None or res is None:
        return []
    rows = [[b.label, b.source, f"{b.vgg16:.1f}", f"{b.resnet101:.1f}", f"{b.delta:+.1f}", ""] for b in
            PAPER_BENCHMARKS]
    for metric, label in ARM_METRICS[:2]:
        a, b = vgg.metric(metric), res.metric(metric)
        if a is None or b is None:
            continue
        diff, resolved = compare(b, a)
        rows.append([f"this study: {res.runs[0].dataset} {label}", f"{len(res.runs)} / {len(vgg.runs)} seeds", str(a),
                     str(b), f"{diff:+.1f}", "resolved" if resolved else "not resolved at this scale"])
    return [Heading("Beside the paper (VGG-16 → ResNet-101)"),
            Table(["benchmark", "source", "VGG-16", "ResNet-101", "Δ", "verdict"], rows,
                  caption="The paper's rows, then this study's arms (mean ± spread)"),
            Paragraph(PAPER_CITATION)]


def paper_row_blocks(arms: Sequence[Arm]) -> List[Block]:
    """Arms that name a paper row (e.g. Table 9's cumulative additions), beside the paper's AP50 / AP."""
    rows = []
    for arm in (a for a in arms if a.paper):
        ours = [arm.metric(m) for m, _ in ARM_METRICS[:2]]
        rows.append([arm.paper["row"], f"{arm.paper['AP50']:.1f}", f"{arm.paper['AP']:.1f}", arm.name,
                     *("–" if s is None else str(s) for s in ours)])
    if not rows:
        return []
    return [Heading("Beside the paper's rows"),
            Table(["paper's row", "paper AP50", "paper AP", "arm", "this study AP50", "this study AP"], rows,
                  caption="The paper's numbers (COCO val) and this study's (mean ± spread); the scales differ, "
                          "compare the steps, not the levels"),
            Paragraph(PAPER_CITATION.replace("Tables 7 and 8: Faster R-CNN baseline, VGG-16 vs ResNet-101.",
                                             "Tables 7-9."))]


def study_blocks(manifest: dict, out_dir: Path, run_blocks) -> List[Block]:
    arms = load_arms(manifest)
    blocks: List[Block] = []
    if manifest.get("description"):
        blocks.append(Paragraph(manifest["description"]))
    blocks += [Heading("Arms"), arms_table(arms)]
    blocks += comparison_blocks(arms, manifest.get("comparisons", []))
    blocks += paper_rows(arms)
    blocks += paper_row_blocks(arms)
    curves = {f"{a.name} seed {i}": r.pr_curves["bbox"] for a in arms for i, r in enumerate(a.runs[:1])
              if "bbox" in r.pr_curves}
    if curves:
        blocks.append(Figure(plot_pr_overall(curves, out_dir / "study_pr_bbox.png", "mean precision-recall"),
                             "First seed of each arm, COCO-style, mean over classes"))
    # Details for the first seed of every arm (sample grid included); the other seeds' folders hold the same files.
    for i, arm in enumerate(arms):
        blocks += run_blocks(arm.runs[0], out_dir, f"{i:02d}_{arm.name}", arm)
    return blocks
