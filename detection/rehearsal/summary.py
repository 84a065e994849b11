"""The rehearsal's summary as a Markdown section (for docs/BENCHMARKS.md)."""
import os
import platform


def _fmt(value, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def markdown_section(summary: dict) -> str:
    s, c, ips = summary, summary["checks"], summary["images_per_s"]
    plan = s["plan"]
    lines = [
        "### Rehearsal of a COCO-scale run (tools/rehearse.py)",
        "",
        f"COCO-shaped data: {s['train_images']:,} training and {s['val_images']:,} validation JPEGs "
        f"({s['datasets']['train']['annotations']:,} / {s['datasets']['val']['annotations']:,} boxes, "
        f"{s['datasets']['train']['categories']} categories, up to {s['datasets']['train']['objects_per_image_max']} "
        f"boxes per image, {s['datasets']['train']['crowd_annotations']} crowd boxes in training); "
        f"`tools/train_det.py` with {s['nproc']} processes (torchrun, gloo), {plan['iterations']} iterations, "
        f"killed (SIGKILL) after the checkpoint at {plan['kill_after_checkpoint']} and resumed. "
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared), OMP_NUM_THREADS=1. Wall time "
        f"{s['wall_s'] / 60:.1f} min.",
        "",
        "| phase | seconds | images/s |",
        "|---|---:|---:|",
    ]
    rates = {"generate": ips["generate"], "train_resumed": ips["train"], "eval_2proc": ips["eval_2proc"],
             "eval_1proc": ips["eval_1proc"]}
    for phase, seconds in s["phases_s"].items():
        lines.append(f"| {phase} | {_fmt(seconds)} | {_fmt(rates.get(phase), 2) if phase in rates else ''} |")
    mem = c["memory"]
    lines += [
        "",
        "| check | result | figures |",
        "|---|---|---|",
        f"| memory growth over training after warm-up (< {mem['limit_pct']:g}%) | {_ok(mem)} | "
        f"{_fmt(mem.get('growth_pct'), 2)}% ({_fmt(mem.get('after_warmup_mb'))} → {_fmt(mem.get('end_mb'))} MB "
        f"{s['memory_kind'] or ''} of the process tree; peak over the whole rehearsal "
        f"{_fmt(s['peak_memory_mb'])} MB) |",
        f"| evaluation identical with 1 and {s['nproc']} processes | {_ok(c['eval_equal_across_world_sizes'])} | "
        f"AP {c['eval_equal_across_world_sizes']['AP']}; results files identical: "
        f"{c['eval_equal_across_world_sizes']['results_files_identical']} |",
        f"| indexing linear in images | {_ok(c['index_linear'])} | {_seconds(c['index_linear'])} |",
        f"| evaluation linear in images | {_ok(c['eval_linear'])} | {_seconds(c['eval_linear'])} |",
        f"| kill + `--resume` | {_ok(c['resume'])} | resumed at {c['resume']['resumed_at']} "
        f"{'; '.join(c['resume']['problems'])} |",
        f"| complete run folder | {_ok(c['run_folder'])} | {len(c['run_folder']['checkpoints'])} checkpoints"
        f"{'; missing ' + ', '.join(c['run_folder']['missing']) if c['run_folder']['missing'] else ''} |",
        "",
        f"All checks passed: **{s['checks_passed']}**.",
        "",
    ]
    return "\n".join(lines)


def _ok(check: dict) -> str:
    return "pass" if check["passed"] else "**FAIL**"


def _seconds(check: dict) -> str:
    parts = [f"{int(n):,} images: {t:.2f} s" for n, t in check["seconds"].items()]
    return ", ".join(parts) + f" (per-image time ratio {check['per_item_time_ratio']:.2f}, limit {check['limit']:g})"
