"""tools/rehearse.py: its checks on synthetic measurements, a planted quadratic index, and the --quick rehearsal
through the real tools, clean and with a planted leak and a planted rank-dependent evaluation."""
import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import detection.data.coco as coco_module
from detection.rehearsal import checks
from detection.rehearsal.coco_shaped import describe, generate_split
from detection.rehearsal.memory import tree_memory
from detection.rehearsal.run import QUICK, REPO, Rehearsal

# -- the checks on synthetic measurements -------------------------------------------------------------------------


def _samples(first, last, start_mb, mb_per_iter):
    return [{"tag": i, "bytes": (start_mb + mb_per_iter * (i - first)) * 2 ** 20} for i in range(first, last + 1)]


def test_memory_growth_flags_steady_growth_and_ignores_startup_and_evaluation():
    flat = [{"tag": None, "bytes": 10 * 2 ** 20}] + _samples(100, 300, 1000, 0.0)
    flat += [{"tag": 300, "bytes": 5000 * 2 ** 20}]  # the final evaluation may use more: not training
    assert checks.memory_growth(flat, 100, 300)["passed"]
    leaking = _samples(100, 300, 1000, 0.5)  # +100 MB over 200 iterations
    result = checks.memory_growth(leaking, 100, 300)
    assert not result["passed"] and result["growth_pct"] > 5
    assert not checks.memory_growth([{"tag": None, "bytes": 1}], 0, 10)["passed"]  # no evidence is no pass


def test_linear_in_size_tells_linear_from_quadratic():
    assert checks.linear_in_size({1000: 1.2, 4000: 4.0})["passed"]
    assert not checks.linear_in_size({1000: 1.0, 4000: 16.0})["passed"]


def _eval_dir(folder: Path, ap: float, results: list) -> Path:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"bbox": {"AP": ap, "num_detections": len(results),
                                                              "evaluator": "x"}}))
    (folder / "coco_instances_results.json").write_text(json.dumps(results))
    return folder


def test_same_evaluation_compares_metrics_and_detections(tmp_path):
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}]
    a = _eval_dir(tmp_path / "a", 0.0, dets)
    assert checks.same_evaluation({"a": a, "b": _eval_dir(tmp_path / "b", 0.0, dets)})["passed"]
    # AP 0 on both sides, but other detections: still a difference
    other = checks.same_evaluation({"a": a, "c": _eval_dir(tmp_path / "c", 0.0, [{**dets[0], "score": 0.25}])})
    assert not other["passed"] and not other["results_files_identical"]
    assert checks.same_evaluation({"a": a, "d": _eval_dir(tmp_path / "d", 1.0, dets)})["differing_metrics"] == ["AP"]


def test_resume_consistent_finds_duplicated_and_missing_log_lines():
    good = [{"iter": i, "loss": 1.0} for i in range(10, 101, 10)]
    assert checks.resume_consistent(good, 50, 50, 100, 10, 100)["passed"]
    assert not checks.resume_consistent(good + [{"iter": 60, "loss": 1.0}], 50, 50, 100, 10, 100)["passed"]
    assert not checks.resume_consistent(good[:-1], 50, 50, 100, 10, 100)["passed"]
    assert not checks.resume_consistent(good, 0, 50, 100, 10, 100)["passed"]  # started over instead of resuming


def test_run_folder_complete_names_what_is_missing(tmp_path):
    result = checks.run_folder_complete(tmp_path)
    assert not result["passed"] and "model_final.pth" in result["missing"]


def test_generated_split_has_coco_shape(tmp_path):
    data, folder = generate_split(tmp_path, 2000, seed=0, write_images=False)
    shape = describe(data)
    assert shape["categories"] == 80 and shape["images"] == 2000
    assert 6.0 < shape["objects_per_image_mean"] < 8.5  # COCO: 7.3
    assert 30 <= shape["objects_per_image_max"] <= 50 and 5 <= shape["empty_images"] <= 50
    assert 0.003 < shape["crowd_annotations"] / shape["annotations"] < 0.03
    ratios = {im["width"] / im["height"] for im in data["images"]}
    assert min(ratios) < 0.8 and max(ratios) > 1.7


def test_tree_memory_reads_this_process():
    m = tree_memory(os.getpid())
    assert m["processes"] >= 1 and m["bytes"] > 10 * 2 ** 20


# -- a planted quadratic index --------------------------------------------------------------------------------------


def test_planted_quadratic_index_trips_the_linearity_check(tmp_path, monkeypatch):
    plan = dataclasses.replace(QUICK, index_sizes=(500, 2000), index_repeats=1)
    rehearsal = Rehearsal(tmp_path, plan, log=lambda *_: None)
    made = []
    real_make_record = coco_module.make_record

    def make_record_with_linear_duplicate_scan(image_id, file, name, *args, **kwargs):
        # The classic bug: "is this file new?" answered by scanning (and normalising) everything made so far.
        if any(os.path.basename(r["file"]) == name and r["image_id"] != image_id for r in made):
            raise AssertionError("unreachable: names are unique")
        record = real_make_record(image_id, file, name, *args, **kwargs)
        made.append(record)
        return record

    monkeypatch.setattr(coco_module, "make_record", make_record_with_linear_duplicate_scan)
    result = checks.linear_in_size(rehearsal.index_scaling())
    assert not result["passed"], result


# -- the rehearsal through the real tools ---------------------------------------------------------------------------

INJECT = textwrap.dedent("""
    # Planted faults, active only in torchrun's workers: a leak of 16 MB per optimiser step, and rank 1 halving
    # its detection scores before they are gathered for evaluation.
    import os
    if os.environ.get("LOCAL_RANK") is not None:
        import torch
        import torch.distributed as dist
        from detection.evaluation import base

        _kept = []
        _step = torch.optim.SGD.step

        def _leaky_step(self, *args, **kwargs):
            _kept.append(b"\\x01" * (16 << 20))
            return _step(self, *args, **kwargs)

        torch.optim.SGD.step = _leaky_step
        _process = base.DatasetEvaluator.process

        def _rank_dependent_process(self, image_ids, outputs):
            if dist.is_initialized() and dist.get_rank() == 1:
                outputs = [{**o, "scores": o["scores"] * 0.5} for o in outputs]
            return _process(self, image_ids, outputs)

        base.DatasetEvaluator.process = _rank_dependent_process
""")


@pytest.mark.slow
def test_quick_rehearsal_passes_through_the_real_tools(tmp_path):
    out = tmp_path / "rehearsal"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "rehearse.py"), "--quick", "-o", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    for key in ("train_images", "val_images", "memory_growth_pct", "eval_equal_across_world_sizes",
                "index_seconds", "eval_seconds", "resume_ok", "checks_passed"):
        assert key in summary
    assert summary["checks_passed"] and summary["resume_ok"] and summary["eval_equal_across_world_sizes"]
    assert summary["train_images"] == QUICK.train_images and len(summary["eval_seconds"]) == 2
    assert "### Rehearsal" in (out / "summary.md").read_text()


@pytest.mark.slow
def test_planted_leak_and_rank_dependent_evaluation_trip_their_checks(tmp_path):
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(INJECT)
    env = {"PYTHONPATH": f"{inject}:{REPO}"}
    rehearsal = Rehearsal(tmp_path / "rehearsal", QUICK, env=env, log=lambda *_: None)
    rehearsal.generate()
    training = rehearsal.train_with_kill()
    eval_1proc = tmp_path / "eval_1proc"
    rehearsal.evaluate_one_process(output_dir=eval_1proc)
    memory = checks.memory_growth(training["second"]["samples"], training["resumed_at"], QUICK.iterations)
    same = checks.same_evaluation({"2 processes": rehearsal.run_dir / "eval", "1 process": eval_1proc})
    assert not memory["passed"] and memory["growth_pct"] > 5, memory
    assert not same["passed"] and not same["results_files_identical"], same
    # the faults do not break what they do not touch
    assert training["resumed_at"] == training["killed_after"]
