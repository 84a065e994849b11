"""Detection training: run-folder contract, bit-exact resume (also from behind a corrupt checkpoint), NaN policy,
config faults, 2-process DDP (gloo), and the train/infer/eval command-line tools, on a tiny generated digits set."""
import importlib.util
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from backbones.utils.checkpoint import load_checkpoint
from backbones.utils.config import ConfigError
from backbones.utils.numerics import NonFiniteError
from detection.config import load_det_config
from detection.engine.evaluate import evaluate_checkpoint
from detection.engine.trainer import DetectionTrainer, RunFolderError
from detection.model.io import load_detector

from fault_helpers import one_thread  # noqa: F401  (shared one-thread fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
LOSS_KEYS = ("loss", "loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")


def tiny(root, *overrides):
    """A digits run that takes about a second per few iterations on one CPU thread."""
    return load_det_config(overrides=[
        f"data.root={root}", "data.dataset=digits", "data.num_workers=0",
        "data.digits.num_train=12", "data.digits.num_val=4", "data.digits.canvas=[48,64]",
        "data.digits.digit_size=[12,24]", "data.digits.per_image=[1,2]",
        "model.backbone=resnet20", "model.freeze_at=0", "model.anchor_sizes=[16,32]",
        "model.rpn.pre_nms_top_n_train=200", "model.rpn.post_nms_top_n_train=32",
        "model.rpn.pre_nms_top_n_test=200", "model.rpn.post_nms_top_n_test=16",
        "model.roi_heads.batch_size_per_image=16", "model.roi_heads.pooler_resolution=8",
        "input.min_size_train=[56,64]", "input.max_size_train=64", "input.min_size_test=64",
        "input.max_size_test=64", "solver.ims_per_batch=2", "solver.base_lr=0.01", "solver.max_iter=6",
        "solver.steps=[4]", "solver.warmup_iters=2", "solver.checkpoint_period=2", "solver.log_period=2",
        "solver.keep_last=2", *overrides])


def test_run_folder_contract(tmp_path):
    out = tmp_path / "run"
    summary = DetectionTrainer(tiny(tmp_path), out).run()
    assert (out / "config.yaml").is_file() and (out / "tb").is_dir()
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_lines = [line for line in lines if "loss" in line]
    assert [line["iter"] for line in train_lines] == [2, 4, 6]
    assert all(set(LOSS_KEYS) | {"lr"} <= set(line) for line in train_lines)
    assert train_lines[0]["lr"] < train_lines[1]["lr"] and train_lines[2]["lr"] == pytest.approx(0.001)  # warm-up, step
    eval_line = lines[-1]
    assert eval_line["iter"] == 6 and "eval/bbox/AP" in eval_line and "eval/bbox/AP50" in eval_line
    final = json.loads((out / "final.json").read_text())
    for key in ("backbone", "dataset", "iters", "checkpoint", "weights_meta", "weights_source", "metrics"):
        assert key in final
    assert final["iters"] == 6 and final["backbone"] == "resnet20" and "AP50" in final["metrics"]["bbox"]
    assert json.loads((out / "eval" / "metrics.json").read_text())["bbox"]["num_images"] == 4
    samples = json.loads((out / "eval" / "samples.json").read_text())
    assert len(samples["images"]) == 4 and samples["class_names"][0] == "0"
    assert all((out / "eval" / entry["file"]).is_file() and entry["ground_truth"] for entry in samples["images"])
    state = load_checkpoint(out / "model_final.pth")
    assert state["format"] == "resdet-detector" and len(state["categories"]) == 10
    assert sorted(p.name for p in (out / "checkpoints").glob("model_*.pth")) == ["model_0000004.pth",
                                                                               "model_0000006.pth"]
    model, cfg, categories = load_detector(out / "model_final.pth")
    assert cfg.model.backbone == "resnet20" and categories[3]["name"] == "3"
    metrics = evaluate_checkpoint(out / "model_final.pth", output_dir=tmp_path / "re_eval", progress=False)
    assert metrics["bbox"]["AP"] == final["metrics"]["bbox"]["AP"]
    with pytest.raises(RunFolderError, match="--resume"):
        DetectionTrainer(tiny(tmp_path), out).run()
    assert summary["iters"] == 6


def _final_state(folder):
    return load_checkpoint(folder / "model_final.pth")["model"]


def test_resume_is_bit_exact_even_behind_a_corrupt_checkpoint(tmp_path, capfd):
    DetectionTrainer(tiny(tmp_path), tmp_path / "straight").run()
    interrupted = tmp_path / "interrupted"
    stopped = DetectionTrainer(tiny(tmp_path), interrupted, stop_after=4).run()
    assert stopped["stopped_at"] == 4
    newest = interrupted / "checkpoints" / "model_0000004.pth"
    newest.write_bytes(newest.read_bytes()[:1000])  # a crash mid-write / disk error
    DetectionTrainer(tiny(tmp_path), interrupted, resume=True).run()
    assert "falling back" in capfd.readouterr().err
    a, b = _final_state(tmp_path / "straight"), _final_state(interrupted)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    def logged(folder):  # everything but wall-clock timings
        return [{k: v for k, v in json.loads(x).items() if not k.startswith("time")}
                for x in (folder / "metrics.jsonl").read_text().splitlines()]

    assert logged(tmp_path / "straight") == logged(interrupted)


class _StepClock:
    """trainer.time with a controlled perf_counter/time: step ``n`` (1-based) takes n seconds, each evaluation
    100 s and each checkpoint 1000 s, so time_per_iter is known exactly."""

    def __init__(self, monkeypatch):
        import types
        from backbones.pretrain.schedule import LRSchedule
        from detection.engine import trainer
        self.now = 0.0
        monkeypatch.setattr(trainer, "time", types.SimpleNamespace(time=self.clock, perf_counter=self.clock))
        lr, evaluate, save = LRSchedule.lr, DetectionTrainer._evaluate, DetectionTrainer._save
        monkeypatch.setattr(LRSchedule, "lr", lambda sched, it: self.advance(it + 1) or lr(sched, it))
        monkeypatch.setattr(DetectionTrainer, "_evaluate", lambda *a, **k: self.advance(100) or evaluate(*a, **k))
        monkeypatch.setattr(DetectionTrainer, "_save", lambda *a, **k: self.advance(1000) or save(*a, **k))

    def clock(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


def _times(folder):
    lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    return {line["iter"]: line["time_per_iter"] for line in lines if "time_per_iter" in line}


def test_time_per_iter_is_the_mean_step_time_for_a_partial_last_window(tmp_path, monkeypatch):
    _StepClock(monkeypatch)
    out = tmp_path / "run"
    DetectionTrainer(tiny(tmp_path, "solver.max_iter=5", "test.eval_period=2", "test.max_images=2"), out).run()
    # windows {1,2}, {3,4} (after an evaluation and a checkpoint at 2), then {5} alone
    assert _times(out) == {2: 1.5, 4: 3.5, 5: 5.0}


def test_time_per_iter_after_a_resume_at_an_odd_iteration(tmp_path, monkeypatch):
    _StepClock(monkeypatch)
    out = tmp_path / "run"
    cfg = tiny(tmp_path, "solver.max_iter=5", "test.eval_period=2", "test.max_images=2")
    assert DetectionTrainer(cfg, out, stop_after=3).run()["stopped_at"] == 3
    DetectionTrainer(cfg, out, resume=True).run()
    assert _times(out) == {2: 1.5, 4: 4.0, 5: 5.0}  # the resumed run's first window holds step 4 only


def test_non_finite_loss_stops_with_iteration_and_last_checkpoint(tmp_path):
    out = tmp_path / "nan"
    with pytest.raises(NonFiniteError) as err:
        DetectionTrainer(tiny(tmp_path, "solver.base_lr=10000000000.0", "solver.max_iter=20",
                              "solver.steps=[20]"), out).run()
    message = str(err.value)
    assert f"iteration {err.value.iteration}" in message and "last good checkpoint" in message
    for path in (out / "checkpoints").glob("model_*.pth"):
        state = load_checkpoint(path)["model"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.parametrize("override,key", [("solver.base_lr=-0.1", "solver.base_lr"),
                                          ("model.freeze_at=7", "model.freeze_at"),
                                          ("data.on_error=ignore", "data.on_error"),
                                          ("model.roi_heads.pooler=max", "model.roi_heads.pooler"),
                                          ("solver.steps=[10,5]", "solver.steps")])
def test_config_faults_fail_before_any_work(tmp_path, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        tiny(tmp_path, override)
    assert not (tmp_path / "digits").exists()
    with pytest.raises(ConfigError, match="multiple of the world size"):
        load_det_config(overrides=["solver.ims_per_batch=3"], world_size=2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world_size, port, root, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    DetectionTrainer(tiny(root, "solver.max_iter=4", "solver.steps=[3]", "device=cpu"), out).run()


def test_two_process_ddp_gloo(tmp_path):
    tiny(tmp_path)  # the digits folder is generated once, before the workers start
    from detection.data.catalog import digits_folder

    digits_folder(tiny(tmp_path))
    out = tmp_path / "ddp"
    mp.start_processes(_ddp_worker, args=(2, _free_port(), str(tmp_path), str(out)), nprocs=2, join=True,
                       start_method="spawn")
    final = json.loads((out / "final.json").read_text())
    assert final["world_size"] == 2 and final["iters"] == 4 and final["global_batch"] == 2
    train_lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert [line["iter"] for line in train_lines] == [2, 4]
    state = load_checkpoint(out / "checkpoints" / "model_0000004.pth")
    assert len(state["rng"]) == 2 and state["world_size"] == 2


def _tool(name):
    """A tools/ script as a module, so its ``main`` runs in-process (no interpreter start-up per call)."""
    spec = importlib.util.spec_from_file_location(f"resdet_tool_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return lambda *argv: module.main(module.get_args_parser().parse_args([str(a) for a in argv]))


def test_command_line_tools(tmp_path, capsys):
    train_det, infer = _tool("train_det"), _tool("infer")
    out = tmp_path / "cli"
    assert train_det("--dataset", "digits", "--backbone", "resnet20", "solver.base_lr=-1", "--output-dir", out) == 2
    assert "solver.base_lr" in capsys.readouterr().err
    cfg = tiny(tmp_path, "solver.max_iter=2", "solver.steps=[2]")
    (tmp_path / "tiny.yaml").write_text(cfg.dump())
    assert train_det("--config", tmp_path / "tiny.yaml", "--output-dir", out) == 0
    image = next((tmp_path / "digits").glob("*/val/000000.png"))
    assert infer("--weights", out / "model_final.pth", "--image", image, image, "-o", tmp_path / "infer",
                 "--score-thresh", "0") == 0
    result = json.loads((tmp_path / "infer" / "000000.json").read_text())
    assert {"image", "width", "height", "detections"} <= set(result)
    assert (tmp_path / "infer" / "000000.png").is_file() and (tmp_path / "infer" / "000000_1.png").is_file()
    assert all(set(d) == {"box", "score", "label", "category_id", "category"} for d in result["detections"])
    assert infer("--weights", out / "model_final.pth", "--image", image, "--max-pixels", "100",
                 "-o", tmp_path / "infer2") == 1
    assert "exceeds" in capsys.readouterr().err and not (tmp_path / "infer2" / "000000.png").exists()


def test_voc_split_is_scored_with_coco_and_devkit_metrics(tmp_path):
    from test_det_data import voc_fixture

    from detection.data import DataIssues
    from detection.data.catalog import test_source
    from detection.engine.evaluate import evaluate_model
    from detection.model import build_detector

    root = voc_fixture(tmp_path, image_set="test")
    cfg = tiny(root, "data.dataset=voc07", "model.roi_heads.score_thresh=0.0")
    source = test_source(cfg, DataIssues("skip"))
    assert source.name == "voc_2007_test" and source.kind == "voc"
    model = build_detector(cfg, num_classes=20)
    metrics = evaluate_model(model, source, torch.device("cpu"), tmp_path / "eval", num_samples=2)
    assert metrics["voc"]["num_images"] == 3 and metrics["bbox"]["num_images"] == 3
    assert metrics["voc"]["num_positives"]["dog"] == 1 and metrics["voc"]["num_positives"]["cat"] == 0  # difficult
    assert (tmp_path / "eval" / "voc_results" / "comp4_det_test_dog.txt").is_file()
    assert len(json.loads((tmp_path / "eval" / "samples.json").read_text())["images"]) == 2


def test_results_do_not_depend_on_loader_workers(tmp_path):
    for workers in (0, 2):
        DetectionTrainer(tiny(tmp_path, f"data.num_workers={workers}", "solver.max_iter=3", "solver.steps=[3]",
                              "data.test=none"), tmp_path / f"workers{workers}").run()
    a, b = _final_state(tmp_path / "workers0"), _final_state(tmp_path / "workers2")
    assert all(torch.equal(a[k], b[k]) for k in a)
