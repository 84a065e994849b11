"""Numerical faults: a NaN/Inf loss or gradient stops the run (or skips the step) naming the iteration and the last
good checkpoint; no checkpoint holding NaN/Inf is ever written.

Faults are injected at the loss: ``torch.nn.functional.cross_entropy`` (the classification loss of both the
pretraining loop and Faster R-CNN's box head) is wrapped so that its N-th call returns NaN, or a finite value whose
gradient is NaN.
"""
import json

import pytest
import torch
import torch.nn.functional as F

from backbones.utils.checkpoint import load_checkpoint
from fault_helpers import TRAINING_TOOLS as TOOLS
from fault_helpers import checkpoint_folder, one_thread, run_main, shared_data_root, tool_args  # noqa: F401


def inject_at_call(monkeypatch, call: int, kind: str):
    """Make the ``call``-th cross_entropy (one per training iteration in both tools) non-finite."""
    real = F.cross_entropy
    calls = {"n": 0}

    def faulty(logits, *args, **kwargs):
        loss = real(logits, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] != call:
            return loss
        if kind == "loss":
            return loss * float("nan")
        # sqrt'(0) is inf and 0 * inf is NaN: the loss value stays finite, every gradient through logits is NaN.
        return loss + 0.0 * torch.sqrt(logits.sum() * 0.0)

    monkeypatch.setattr(F, "cross_entropy", faulty)
    return calls


def all_checkpoints_finite(folder):
    files = sorted(folder.rglob("*.pth"))
    for path in files:
        for name, tensor in load_checkpoint(path)["model"].items():
            if tensor.is_floating_point():
                assert torch.isfinite(tensor).all(), f"{path}: {name} holds NaN/Inf"
    return [p.name for p in files]


@pytest.mark.parametrize("kind", ["loss", "gradient"])
@pytest.mark.parametrize("tool", TOOLS)
def test_non_finite_stops_naming_iteration_and_last_checkpoint(tool, kind, tmp_path, tmp_path_factory, monkeypatch,
                                                               one_thread):
    run_dir = tmp_path / "run"
    inject_at_call(monkeypatch, 5, kind)

    code, out = run_main(tool, tool_args(tool, run_dir, data_root=shared_data_root(tmp_path_factory)))

    assert code == 1, out[-3000:]
    last_good = checkpoint_folder(tool, run_dir) / "model_0000004.pth"
    assert f"error: non-finite {kind} at iteration 5 (nan_policy=stop); last good checkpoint: {last_good}." in out
    assert all_checkpoints_finite(run_dir) == ["model_0000002.pth", "model_0000004.pth"]
    assert not (run_dir / "final.json").exists()


@pytest.mark.parametrize("tool,kind", [("pretrain.py", "gradient"), ("train_det.py", "loss")])
def test_skip_policy_drops_the_step_and_finishes(tool, kind, tmp_path, tmp_path_factory, monkeypatch, one_thread):
    run_dir = tmp_path / "run"
    calls = inject_at_call(monkeypatch, 5, kind)

    code, out = run_main(tool, tool_args(tool, run_dir, "solver.nan_policy=skip",
                                         data_root=shared_data_root(tmp_path_factory)))

    assert code == 0, out[-3000:]
    assert calls["n"] >= 12
    assert "iteration 5: non-finite loss/gradient, step skipped (1 so far)" in out
    assert json.loads((run_dir / "final.json").read_text())["skipped_steps"] == 1
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in logged if r["iter"] in (4, 5)] == [0, 1]
    all_checkpoints_finite(run_dir)


@pytest.mark.parametrize("tool", TOOLS)
def test_skip_policy_gives_up_after_consecutive_skips(tool, tmp_path, tmp_path_factory, monkeypatch, one_thread):
    # lr 1e30: the first step leaves the weights so large that every later loss overflows.
    run_dir = tmp_path / "run"
    # Detection has no max_consecutive_skips key: its guard stops after NanGuard's default of 10.
    limit = ["solver.max_consecutive_skips=3"] if tool == "pretrain.py" else ["solver.max_iter=20"]
    code, out = run_main(tool, tool_args(tool, run_dir, "solver.nan_policy=skip", "solver.base_lr=1e30", *limit,
                                         data_root=shared_data_root(tmp_path_factory)))
    assert code == 1, out[-3000:]
    assert "consecutive skipped steps before it (max_consecutive_skips=" in out and "last good checkpoint: " in out
    all_checkpoints_finite(run_dir)
    assert not (run_dir / "model_final.pth").exists()


@pytest.mark.parametrize("tool", TOOLS)
def test_non_finite_weights_are_never_checkpointed(tool, tmp_path, tmp_path_factory, monkeypatch, one_thread):
    """The 4th optimiser step leaves an Inf in the weights while its loss and gradients were finite (an overflowing
    update); the checkpoint due right after it is refused, the one before stays the last."""
    real_step = torch.optim.SGD.step
    steps = {"n": 0}

    def overflowing_step(self, *args, **kwargs):
        result = real_step(self, *args, **kwargs)
        steps["n"] += 1
        if steps["n"] == 4:
            with torch.no_grad():
                param = self.param_groups[0]["params"][0]
                param[(0,) * param.dim()] = float("inf")  # any memory layout (the detector's is channels_last)
        return result

    monkeypatch.setattr(torch.optim.SGD, "step", overflowing_step)
    run_dir = tmp_path / "run"
    code, out = run_main(tool, tool_args(tool, run_dir, data_root=shared_data_root(tmp_path_factory)))
    assert code == 1, out[-3000:]
    assert "holds NaN/Inf; refusing to write it to a checkpoint" in out
    assert all_checkpoints_finite(run_dir) == ["model_0000002.pth"]
    assert (checkpoint_folder(tool, run_dir) / "last_checkpoint").read_text().strip() == "model_0000002.pth"
