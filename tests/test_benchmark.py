"""tools/benchmark.py --quick produces every section's keys; the measuring helpers measure what they claim."""
import json
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch

from detection.benchmark.coco_speed import generate_coco_case
from detection.benchmark.gemm import gemm_callables
from detection.benchmark.loader_speed import build_pipelines, generate_jpegs
from detection.benchmark.timing import interleaved
from detection.data import DataIssues, DetectionDataset, TrainAugmentation
from detection.data.coco import load_coco_json
from detection.data.fast_loader import FastDetectionDataset, images_to_float, jpeg_header, read_image_fast
from detection.data.image_io import read_image

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    tool = runpy.run_path(str(REPO / "tools" / "benchmark.py"))
    threads = torch.get_num_threads()
    try:
        assert tool["main"](["--quick", "--json", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return json.loads(out.read_text())


def test_quick_run_has_every_section(quick_results):
    r = quick_results
    env = r["environment"]
    for key in ("date", "command", "torch", "cpu", "torch_threads", "device"):
        assert env[key] not in (None, "")
    assert r["gemm"]["fp32"]["peak_flops"] > 0
    if r["bf16_supported"]:
        assert r["gemm"]["bf16"]["peak_flops"] > 0
    for section in ("gemm", "inference", "training", "classification", "loading", "coco"):
        assert section in r["section_wall_s"]


def test_quick_inference_variants(quick_results):
    inference = quick_results["inference"]
    assert list(inference) == ["resnet18"]
    r = inference["resnet18"]
    assert r["multiply_adds"] > 0 and r["flops"] == 2 * r["multiply_adds"]
    assert r["rois_per_image"] and min(r["rois_per_image"]) > 0
    best = "fold_bn+channels_last+onednn+roi_align"
    expected = {"baseline", "inference_mode", "fold_bn", "fold_bn+channels_last", "fold_bn+channels_last+onednn",
                best, best + "+keep_freed_memory"}
    if quick_results["bf16_supported"]:
        expected.add(best + "+bf16")
    assert set(r["variants"]) == expected
    for v in r["variants"].values():
        assert v["s_per_image"] > 0
        assert v["flops_per_s"] == pytest.approx(r["flops"] / v["s_per_image"])
        assert 0 < v["fraction_of_gemm_peak"] <= v["fraction_of_probe_gemm"] and v["speedup_vs_baseline"] > 0
    assert r["variants"]["baseline"]["speedup_vs_baseline"] == 1.0


def test_quick_training_classification_loading_coco(quick_results):
    r = quick_results
    assert {"baseline", "fused_bn", "fused_bn+channels_last"} <= set(r["training"]["variants"])
    assert all(v["s_per_iter"] > 0 for v in r["training"]["variants"].values())
    for kind in ("train", "inference"):
        assert "baseline" in r["classification"][kind]
        assert all(v["img_per_s"] > 0 for v in r["classification"][kind].values())
    for pipelines in r["loading"]["by_workers"].values():
        assert set(pipelines) == {"reference", "resdet", "resdet_fast"}
        assert all(v["img_per_s"] > 0 and v["img_per_s_per_core"] > 0 for v in pipelines.values())
    coco = r["coco"]
    assert coco["resdet_fast_identical_to_pycocotools"] is True
    assert coco["evaluators"]["resdet_fast"]["max_abs_stat_difference"] == 0.0
    assert len(coco["stats_pycocotools"]) == 12


def test_quick_tools_section_times_the_tools_path(quick_results):
    r = quick_results["tools"]
    expected = {"plain (--no-optimize)", "tools default (fp32)"}
    if quick_results["bf16_supported"]:
        expected.add("tools --precision bf16")
    assert expected <= set(r["variants"])
    assert r["rois_per_image"] and min(r["rois_per_image"]) > 0
    assert r["variants"]["plain (--no-optimize)"]["speedup_vs_plain"] == 1.0
    assert all(v["s_per_image"] > 0 for v in r["variants"].values())


def test_thread_policy_sets_passive_waiting_but_keeps_the_users_choice():
    from tools._threads import OPENMP_DEFAULTS, configure_openmp

    assert OPENMP_DEFAULTS["OMP_WAIT_POLICY"] == "PASSIVE"
    env = {"KMP_BLOCKTIME": "200"}
    assert configure_openmp(env) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert env == {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "200"}


def test_markdown_from_json(quick_results, tmp_path, capsys):
    src, md = tmp_path / "r.json", tmp_path / "r.md"
    src.write_text(json.dumps(quick_results))
    tool = runpy.run_path(str(REPO / "tools" / "benchmark.py"))
    assert tool["main"](["--from-json", str(src), "--markdown", str(md)]) == 0
    text = md.read_text()
    for title in ("(1) Dense GEMM", "(2) resnet18-C4 inference", "(3) resnet18-C4 training", "(4) resnet18",
                  "(5) Detection data loading", "(6) COCO evaluation", "(8) What the tools run"):
        assert title in text
    assert "fold_bn+channels_last" in text and "(6) COCO evaluation" in capsys.readouterr().out


def test_interleaved_rotates_order_and_times_probe():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = interleaved(fns, repeats=3, warmup=0, probes={"g": lambda: calls.append("probe")})
    assert calls == ["probe", "a", "b", "c", "probe", "b", "c", "a", "probe", "c", "a", "b", "probe"]
    assert set(times) == {"a", "b", "c", "_probe_g"} and all(t["n"] == 3 for t in times.values())
    with pytest.raises(ValueError):
        interleaved(fns, repeats=0)


def test_gemm_callables_multiply_the_matrices():
    n = 128
    fns = gemm_callables("cpu", torch.float32, n)
    gen = torch.Generator().manual_seed(n)
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    torch.testing.assert_close(fns["blas"](), a @ b)
    if "onednn" in fns:
        torch.testing.assert_close(fns["onednn"]().to_dense(), a @ b, rtol=1e-4, atol=1e-3)


def test_generated_coco_case_looks_like_val2017():
    dataset, results = generate_coco_case(num_images=50, dets_per_image=100)
    assert len(dataset["images"]) == 50 and len(dataset["categories"]) == 80
    assert len(results) == 50 * 100
    areas = np.array([a["area"] for a in dataset["annotations"]])
    assert (areas < 32 ** 2).any() and ((areas > 32 ** 2) & (areas < 96 ** 2)).any() and (areas > 96 ** 2).any()


def test_fast_loader_gives_the_same_samples(tmp_path):
    ann = generate_jpegs(tmp_path, 6)
    source = load_coco_json(ann, tmp_path, DataIssues())
    aug = TrainAugmentation([60], 100, 0.5)
    plain, fast = DetectionDataset(source, True, aug), FastDetectionDataset(source, True, aug)
    for i in range(len(plain)):
        image, target = plain[(i, 11 + i)]
        fast_image, fast_target = fast[(i, 11 + i)]
        assert fast_image.dtype == torch.uint8
        torch.testing.assert_close(images_to_float([fast_image], "cpu")[0], image, rtol=0, atol=0)
        torch.testing.assert_close(fast_target["boxes"], target["boxes"])
        assert torch.equal(fast_target["labels"], target["labels"])


def test_fast_decoder_falls_back_to_pil_for_unusual_files(tmp_path):
    from PIL import Image

    rgb = (np.random.default_rng(0).random((24, 32, 3)) * 255).astype(np.uint8)
    plain = tmp_path / "plain.jpg"
    Image.fromarray(rgb).save(plain, quality=95)
    header = jpeg_header(plain.read_bytes())
    assert header is not None and (header.width, header.height, header.components) == (32, 24, 3)
    gray = tmp_path / "gray.jpg"
    Image.fromarray(rgb[..., 0]).save(gray)
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(rotated, exif=exif)
    assert jpeg_header(rotated.read_bytes()).orientation == 6
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(plain.read_bytes()[:-200])
    for path, expected in ((plain, None), (plain, (32, 24)), (gray, None), (rotated, None), (rotated, (32, 24)),
                           (truncated, None), (plain, (5, 5))):
        issues_ref, issues_fast = [], []
        ref = read_image(path, expected, 10 ** 8, issues_ref, "skip")
        out = read_image_fast(path, expected, 10 ** 8, issues_fast, "skip")
        assert issues_fast == issues_ref, path
        assert (ref is None and out is None) or np.array_equal(out, ref), path


def test_loader_pipelines_deliver_float_batches(tmp_path):
    ann = generate_jpegs(tmp_path, 4)
    pipelines = build_pipelines(ann, num_workers=0, batch=2, short_side=48, max_size=80)
    for name, epoch in pipelines.items():
        epoch()
        assert epoch.images == 4, name
        images, targets = next(iter(epoch.loader))
        batch = images_to_float(images, "cpu")
        assert all(im.dtype == torch.float32 and im.shape[0] == 3 and min(im.shape[1:]) == 48 for im in batch)
