"""Markdown tables from a ``tools/benchmark.py`` JSON (what docs/BENCHMARKS.md shows)."""
from typing import List


def _table(header: List[str], rows: List[List[str]]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _gflops(value: float) -> str:
    return f"{value / 1e9:.1f}"


def markdown_tables(results: dict) -> str:
    env = results["environment"]
    out = [f"Measured {env['date']} on {env['cpu']} ({env['cpu_count']} cores, {env['torch_threads']} torch "
           f"thread(s)), torch {env['torch']}, torchvision {env.get('torchvision', '?')}, device {env['device']}"
           + (f" ({env['gpu']})" if env.get("gpu") else "") + f". Command: `{env['command']}`. "
           f"Load average (1/5/15 min) at start {results['load_average'].get('start')}.", ""]
    gemm = results["gemm"]
    rows = [[d, _gflops(g["peak_flops"]), g["best"],
             ", ".join(f"{k} {_gflops(v)}" for k, v in g["flops_by_library_and_size"].items())]
            for d, g in gemm.items()]
    out += ["**(1) Dense GEMM (GFLOP/s, median of the rounds)**", ""]
    out += _table(["dtype", "peak", "best", "all (library@n)"], rows) + [""]
    for name, r in results.get("inference", {}).items():
        probes = ", ".join(f"{d} {_gflops(v)}" for d, v in r.get("probe_gemm_flops_per_s", {}).items()) or "none"
        out += [f"**(2) {name}-C4 inference**, {r['input_hw'][0]}x{r['input_hw'][1]}, batch 1, "
                f"{r['multiply_adds'] / 1e9:.1f} G multiply-adds, RoIs/image {r['rois_per_image']}; GEMM probes "
                f"timed beside it (GFLOP/s): {probes}", ""]
        rows = [[k, f"{v['s_per_image']:.3f}", f"{v['timing']['min']:.3f}", _gflops(v["flops_per_s"]),
                 f"{100 * v['fraction_of_gemm_peak']:.0f}%",
                 f"{100 * v['fraction_of_probe_gemm']:.0f}%" if "fraction_of_probe_gemm" in v else "-",
                 f"{v['speedup_vs_baseline']:.2f}x"] for k, v in r["variants"].items()]
        out += _table(["variant", "s/image (median)", "min", "GFLOP/s", "of GEMM limit", "of probe", "speed-up"],
                      rows) + [""]
    if "training" in results:
        r = results["training"]
        out += [f"**(3) {r['backbone']}-C4 training**, {r['images_per_iter']} images of {r['input_hw'][0]}x"
                f"{r['input_hw'][1]}, {r['rois_per_image']} RoIs/image, forward + backward + SGD step", ""]
        rows = [[k, f"{v['s_per_iter']:.3f}", f"{v['timing']['min']:.3f}", f"{v['speedup_vs_baseline']:.2f}x"]
                for k, v in r["variants"].items()]
        out += _table(["variant", "s/iter (median)", "min", "speed-up"], rows) + [""]
    if "classification" in results:
        r = results["classification"]
        out += [f"**(4) {r['arch']} classification**, {r['input_size']}x{r['input_size']}, batch {r['batch']}, "
                f"{r['layout']}", ""]
        rows = [[kind, k, f"{v['img_per_s']:.1f}", f"{v['speedup_vs_baseline']:.2f}x"]
                for kind in ("train", "inference") for k, v in r[kind].items()]
        out += _table(["", "variant", "img/s", "speed-up"], rows) + [""]
    if "loading" in results:
        r = results["loading"]
        out += [f"**(5) Detection data loading**, {r['num_images']} generated JPEGs (COCO sizes), decode + resize "
                f"(600/1000) + flip + collate, batch {r['batch']}", ""]
        rows = [[n, k, f"{v['img_per_s']:.1f}", f"{v['img_per_s_per_core']:.1f}", f"{v['speedup_vs_reference']:.2f}x"]
                for n, pipes in r["by_workers"].items() for k, v in pipes.items()]
        out += _table(["workers", "pipeline", "img/s", "img/s per core", "vs reference"], rows) + [""]
    if "coco" in results:
        r = results["coco"]
        out += [f"**(6) COCO evaluation**, {r['num_images']} images, {r['num_annotations']} objects, "
                f"{r['num_detections']} detections; resdet fast path identical to pycocotools: "
                f"{r['resdet_fast_identical_to_pycocotools']}", ""]
        rows = [[k, f"{v['s']:.2f}", f"{v['speedup_vs_pycocotools']:.1f}x", f"{v['max_abs_stat_difference']:.1e}"]
                for k, v in r["evaluators"].items()]
        out += _table(["evaluator", "s (median)", "vs pycocotools", "max abs stat difference"], rows) + [""]
    if "accuracy" in results:
        r = results["accuracy"]
        out += [f"**(7) Accuracy of the inference options**: {r['backbone']} detector `{r['weights']}` on "
                f"{r['test_split']} ({r['num_images']} images)", ""]
        rows = [[k, f"{v['AP']:.2f}", f"{v['AP50']:.2f}", f"{v['AP_delta_vs_fp32']:+.2f}",
                 f"{v['AP50_delta_vs_fp32']:+.2f}"] for k, v in r["variants"].items()]
        out += _table(["variant", "AP", "AP50", "ΔAP", "ΔAP50"], rows) + [""]
    out += tools_tables(results)
    return "\n".join(out)


def tools_tables(results: dict) -> List[str]:
    out = []
    if "tools" in results:
        r = results["tools"]
        out += [f"**(8) What the tools run**: {r['backbone']}-C4, {r['input_hw'][0]}x{r['input_hw'][1]}, batch 1, "
                f"RoIs/image {r['rois_per_image']} (detectron2: {r['detectron2_rois_per_image'] or 'not run'})", ""]
        rows = [[k, f"{v['s_per_image']:.3f}", f"{v['timing']['min']:.3f}", f"{v['speedup_vs_plain']:.2f}x",
                 f"{v['time_vs_detectron2']:.2f}x" if "time_vs_detectron2" in v else "-"]
                for k, v in r["variants"].items()]
        out += _table(["path", "s/image (median)", "min", "speed-up vs plain", "time vs detectron2"], rows) + [""]
    if "loaded" in results:
        r = results["loaded"]
        out += [f"**(9) Loaded machine**: digits detector (`{r['config']}`) training s/iteration, median of "
                f"{r['steps']} steps, without and with one competing busy process", ""]
        rows = [[k, f"{v['quiet']['s_per_iter']:.3f}", f"{v['one_busy_process']['s_per_iter']:.3f}",
                 f"{v['slowdown']:.2f}x", str(v["quiet"]["threads"])] for k, v in r["cases"].items()]
        out += _table(["OpenMP settings", "quiet", "one busy process", "slowdown", "threads"], rows) + [""]
    if "infer_tool" in results:
        r = results["infer_tool"]
        out += [f"**(10) `tools/infer.py` end to end**: {r['backbone']}, {r['num_images']} JPEGs resized to "
                f"{r['test_size'][0]}/{r['test_size'][1]}, process start to exit", ""]
        rows = [[k, f"{v['images_per_s']:.3f}", f"{v['wall_s']:.1f}"] for k, v in r["runs"].items()]
        out += _table(["flags", "images/s", "wall s"], rows) + [""]
    if "train_tool" in results:
        r = results["train_tool"]
        out += [f"**(11) `tools/train_det.py` on a COCO-format folder**: {r['backbone']}, {r['num_images']} JPEGs, "
                f"2 images/iteration at {r['train_size'][0]}/{r['train_size'][1]}, median of iterations 2-{r['iters']}",
                ""]
        rows = [[k, f"{v['s_per_iter']:.3f}", f"{v['wall_s']:.1f}"] for k, v in r["runs"].items()]
        out += _table(["solver.amp", "s/iter", "run wall s"], rows) + [""]
    if "deploy" in results:
        r = results["deploy"]
        out += [f"**(12) Exported detector vs resdet's paths**: {r['source']}, {r['images']} image(s) "
                f"{r['image_sizes']}, test size {r['min_size_test']}/{r['max_size_test']}, {r['threads']} thread(s), "
                f"interleaved rounds", ""]
        rows = [[k, f"{v['images_per_s']:.2f}", f"{v['speedup_vs_plain']:.2f}x",
                 f"{100 * v['parity_matched_fraction']:.1f}% of {v['parity_detections']}"
                 if "parity_matched_fraction" in v else "(reference)" if k.startswith("plain") else "-"]
                for k, v in r["variants"].items()]
        out += _table(["path", "images/s (median)", "vs plain", "detections matched"], rows) + [""]
    return out
