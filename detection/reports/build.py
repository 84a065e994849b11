"""Assemble the report of one run, or the backbone-swap study of several, as Markdown + self-contained HTML."""
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from backbones.utils.atomic_io import atomic_write_text

from ..evaluation.coco import COCO_STAT_NAMES
from .document import Block, Code, Figure, Heading, Paragraph, Table, render_html, render_markdown
from .figures import plot_pr_overall, plot_pr_per_class, plot_training
from .paper import PAPER_BENCHMARKS, PAPER_CITATION, metric_value
from .run_data import RunData, load_run
from .sample_grid import plot_sample_grid
from .study_report import load_manifest, study_blocks

SECTION_TITLES = {"bbox": "COCO-style", "voc": "PASCAL VOC devkit"}
PANEL_AP = {"bbox": "AP50", "voc": "VOC07 11-point AP"}
STUDY_METRICS = (
    (("voc", "mAP_07"), "VOC mAP (07 11-pt)"),
    (("voc", "mAP_area"), "VOC mAP (area)"),
    (("bbox", "AP"), "AP"),
    (("bbox", "AP50"), "AP50"),
    (("bbox", "AP75"), "AP75"),
)


def fmt(value, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "run"


def provenance_table(run: RunData) -> Table:
    final = run.final
    rows = [("run folder", str(run.path)), ("backbone", run.backbone), ("dataset", run.dataset)]
    for key in ("train_splits", "test_split", "iters", "global_batch", "world_size", "checkpoint", "weights_source",
                "wall_time_s"):
        if final.get(key) is not None:
            rows.append((key.replace("_", " "), str(final[key])))
    for key, value in (final.get("weights_meta") or {}).items():
        if value not in (None, {}, [], ""):
            shown = value if not isinstance(value, list) or len(value) <= 6 else f"{len(value)} entries"
            rows.append((f"weights meta: {key}", str(shown)))
    for key, value in (run.metrics.get("meta") or {}).items():
        if key != "results_files":
            rows.append((f"evaluation: {key}", str(value)))
    return Table(["item", "value"], rows, caption="Provenance")


def summary_tables(run: RunData) -> List[Block]:
    blocks: List[Block] = []
    bbox, voc = run.metrics.get("bbox"), run.metrics.get("voc")
    if bbox:
        blocks.append(Table(list(COCO_STAT_NAMES), [[fmt(bbox.get(k)) for k in COCO_STAT_NAMES]],
                            caption=f"COCO-style summary (%, {bbox.get('num_images', '?')} images, "
                                    f"{bbox.get('num_detections', '?')} detections)"))
    if voc:
        blocks.append(Table(["mAP (VOC07 11-point)", "mAP (area, VOC2010+)", "images", "detections"],
                            [[fmt(voc.get("mAP_07")), fmt(voc.get("mAP_area")), str(voc.get("num_images", "?")),
                              str(voc.get("num_detections", "?"))]], caption="PASCAL VOC summary (%)"))
    if not (bbox or voc):
        blocks.append(Paragraph("No evaluation results (eval/metrics.json) in this run."))
    return blocks


def per_class_table(run: RunData) -> Optional[Table]:
    bbox, voc = run.metrics.get("bbox") or {}, run.metrics.get("voc") or {}
    names = list(voc.get("per_class_07", {})) or list(bbox.get("per_class", {}))
    names += [n for n in bbox.get("per_class", {}) if n not in names]
    if not names:
        return None
    headers = ["class"]
    if voc:
        headers += ["positives", "AP (07 11-pt)", "AP (area)"]
    if bbox:
        headers += ["AP", "AP50"]
    rows = []
    for name in names:
        row = [name]
        if voc:
            row += [str(voc.get("num_positives", {}).get(name, "–")), fmt(voc.get("per_class_07", {}).get(name)),
                    fmt(voc.get("per_class_area", {}).get(name))]
        if bbox:
            ap = bbox.get("per_class", {}).get(name) or {}
            row += [fmt(ap.get("AP")), fmt(ap.get("AP50"))]
        rows.append(row)
    return Table(headers, rows, caption="Per-class AP (%)")


def _class_ap_for_plot(run: RunData, section: str) -> Dict[str, Optional[float]]:
    if section == "voc":
        return run.metrics.get("voc", {}).get("per_class_07", {})
    return {n: (v or {}).get("AP50") for n, v in run.metrics.get("bbox", {}).get("per_class", {}).items()}


def run_blocks(run: RunData, out_dir: Path, prefix: str, level: int, score_threshold: float) -> List[Block]:
    known = run.backbone != "?" or run.dataset != "?"
    blocks: List[Block] = [Heading(f"{run.name}: {run.backbone} on {run.dataset}" if known else run.name, level)]
    blocks += summary_tables(run)
    table = per_class_table(run)
    if table is not None:
        blocks.append(table)
    if run.pr_curves:
        overall = {SECTION_TITLES.get(s, s): c for s, c in run.pr_curves.items()}
        blocks.append(Figure(plot_pr_overall(overall, out_dir / f"{prefix}_pr_overall.png",
                                             f"{run.name}: precision-recall, mean over classes"),
                             "Precision-recall at IoU 0.5, mean over classes (area under it = AP50 / mAP)"))
        for section, curves in run.pr_curves.items():
            blocks.append(Figure(plot_pr_per_class(curves, _class_ap_for_plot(run, section),
                                                   out_dir / f"{prefix}_pr_{section}_per_class.png",
                                                   f"{run.name}: {SECTION_TITLES.get(section, section)} per class"),
                                 f"Precision-recall per class at IoU 0.5 ({SECTION_TITLES.get(section, section)}; "
                                 f"{PANEL_AP.get(section, 'AP')} in the panel titles)"))
    if run.train_log or run.eval_log:
        blocks.append(Figure(plot_training(run.train_log, run.eval_log, out_dir / f"{prefix}_training.png",
                                           f"{run.name}: training"), "Training loss terms, learning rate, evaluation"))
    if run.samples and run.samples.get("images"):
        blocks.append(Figure(plot_sample_grid(run.samples, run.eval_dir, out_dir / f"{prefix}_samples.png",
                                              score_threshold), "Sample detections"))
    blocks.append(provenance_table(run))
    if run.config_text:
        blocks.append(Code(run.config_text, "Resolved config (config.yaml)"))
    return blocks


def pick_baseline(runs: Sequence[RunData], baseline: Optional[str]) -> RunData:
    if baseline is not None:
        for run in runs:
            if baseline in (run.name, run.backbone, str(run.path)):
                return run
        raise ValueError(f"--baseline {baseline!r} matches no run (names: {[r.name for r in runs]}, "
                         f"backbones: {[r.backbone for r in runs]})")
    return next((r for r in runs if r.backbone == "vgg16"), runs[0])


def study_table(runs: Sequence[RunData], base: RunData) -> Table:
    metrics = [(m, label) for m, label in STUDY_METRICS if any(metric_value(r.metrics, m) is not None for r in runs)]
    rows = []
    for run in runs:
        row = [run.name, run.backbone, run.dataset, str(run.final.get("iters", "–"))]
        for metric, _ in metrics:
            value, ref = metric_value(run.metrics, metric), metric_value(base.metrics, metric)
            delta = "" if run is base or value is None or ref is None else f" ({fmt(value - ref, signed=True)})"
            row.append(fmt(value) + delta)
        rows.append(row)
    return Table(["run", "backbone", "dataset", "iters"] + [label for _, label in metrics], rows,
                 caption=f"Backbone-swap study (%; in brackets: change from {base.name}, {base.backbone})")


def paper_table(runs: Sequence[RunData]) -> Table:
    rows = []
    for bench in PAPER_BENCHMARKS:
        measured = {}
        for arch in ("vgg16", "resnet101"):
            run = next((r for r in runs if r.backbone == arch and r.dataset == bench.dataset
                        and metric_value(r.metrics, bench.metric) is not None), None)
            measured[arch] = metric_value(run.metrics, bench.metric) if run else None
        both = None not in measured.values()
        rows.append([bench.label, bench.source, fmt(bench.vgg16), fmt(bench.resnet101), fmt(bench.delta, True),
                     fmt(measured["vgg16"]), fmt(measured["resnet101"]),
                     fmt(measured["resnet101"] - measured["vgg16"], True) if both else "–"])
    return Table(["benchmark", "paper", "VGG-16", "ResNet-101", "Δ", "measured VGG-16", "measured ResNet-101",
                  "measured Δ"], rows, caption="Paper vs measured (%)")


def build_report(run_dirs: Sequence, out_dir, baseline: Optional[str] = None,
                 score_threshold: float = 0.5) -> Tuple[Path, Path]:
    """Write ``out_dir/report.md``, ``out_dir/report.html`` (self-contained) and the PNGs; returns both paths."""
    if not run_dirs:
        raise ValueError("build_report needs at least one run folder")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = [load_run(d) for d in run_dirs]
    blocks: List[Block] = []
    if len(runs) == 1:
        title = f"resdet report: {runs[0].name}"
        blocks += run_blocks(runs[0], out_dir, _slug(runs[0].name), 2, score_threshold)
        if any(b.dataset == runs[0].dataset for b in PAPER_BENCHMARKS):
            blocks += [Heading("The paper's numbers"), paper_table(runs), Paragraph(PAPER_CITATION)]
    else:
        title = "resdet backbone-swap study"
        base = pick_baseline(runs, baseline)
        blocks += [Heading("Backbone-swap study"), study_table(runs, base),
                   Heading("The paper's numbers (VGG-16 to ResNet-101)"), paper_table(runs),
                   Paragraph(PAPER_CITATION + " VOC 2007 test numbers are 11-point AP, VOC 2012 test the evaluation "
                                              "server's area AP, COCO the val-set COCO AP.")]
        for section in ("voc", "bbox"):
            curves = {f"{r.name} ({r.backbone})": r.pr_curves[section] for r in runs if section in r.pr_curves}
            if curves:
                path = plot_pr_overall(curves, out_dir / f"study_pr_{section}.png",
                                       f"{SECTION_TITLES[section]}: mean precision-recall")
                blocks.append(Figure(path, f"All runs, {SECTION_TITLES[section]}, mean over classes"))
        for i, run in enumerate(runs):
            blocks += run_blocks(run, out_dir, f"{i:02d}_{_slug(run.name)}", 2, score_threshold)
    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    atomic_write_text(md_path, render_markdown(title, blocks, out_dir))
    atomic_write_text(html_path, render_html(title, blocks))
    return md_path, html_path


def build_study_report(manifest_path, out_dir, score_threshold: float = 0.5) -> Tuple[Path, Path]:
    """The report of a tools/study.py study (its ``study.json``): arms as mean ± spread over seeds, comparisons,
    and the details of each arm's first seed."""
    manifest = load_manifest(manifest_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    blocks = study_blocks(manifest, out_dir, lambda run, out, prefix, arm: run_blocks(
        run, out, _slug(prefix), 2, score_threshold))
    title = f"resdet study: {manifest.get('name', 'study')}"
    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    atomic_write_text(md_path, render_markdown(title, blocks, out_dir))
    atomic_write_text(html_path, render_html(title, blocks))
    return md_path, html_path
