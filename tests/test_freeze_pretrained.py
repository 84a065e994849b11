"""solver.freeze_pretrained_iters: the trunk and box head hold still while the RPN and box predictor learn first."""
import pytest
import torch

from backbones.utils.config import ConfigError
from detection.config import load_det_config
from detection.engine.trainer import PRETRAINED_PREFIXES, DetectionTrainer, build_optimizer, pretrained_lr_scale
from detection.model.detector import build_detector
from detection.model.io import read_detector_file
from fault_helpers import one_thread  # noqa: F401  (shared one-thread fixture)
from test_det_train import tiny


def test_bad_values_are_config_errors():
    for value in ("-1", "2.5", "6", "7"):
        with pytest.raises(ConfigError, match=r"solver\.freeze_pretrained_iters"):
            load_det_config(overrides=["solver.max_iter=6", "solver.steps=[4]", f"solver.freeze_pretrained_iters={value}"])


def test_lr_scale_holds_then_warms_up_again():
    assert [pretrained_lr_scale(i, 3, 2, 0.1) for i in range(7)] == pytest.approx([0, 0, 0, 0.1, 0.55, 1, 1])
    assert [pretrained_lr_scale(i, 2, 0, 0.1) for i in range(4)] == [0, 0, 1, 1]
    assert [pretrained_lr_scale(i, 0, 0, 0.1) for i in range(2)] == [1, 1]


def _groups(optimizer, model):
    names = {id(p): n for n, p in model.named_parameters()}
    return {flag: {names[id(p)] for g in optimizer.param_groups if g["pretrained"] == flag for p in g["params"]}
            for flag in (False, True)}


def test_optimizer_marks_exactly_the_pretrained_layers(tmp_path):
    cfg = tiny(tmp_path, "solver.freeze_pretrained_iters=2")
    model = build_detector(cfg, 10)
    groups = _groups(build_optimizer(model, cfg, 0.01), model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert groups[True] == {n for n in trainable if n.startswith(PRETRAINED_PREFIXES)}
    assert groups[False] == trainable - groups[True]
    assert any(n.startswith("rpn.") for n in groups[False]) and any("box_predictor" in n for n in groups[False])
    # Off: the groups of earlier versions (weights, biases), so their checkpoints resume unchanged.
    plain = build_optimizer(model, tiny(tmp_path), 0.01)
    assert len(plain.param_groups) == 2 and not any(g["pretrained"] for g in plain.param_groups)


def _params(path):
    return read_detector_file(path)["model"]


def test_trainer_holds_pretrained_layers_then_releases_them(tmp_path):
    overrides = ["solver.freeze_pretrained_iters=3", "solver.warmup_iters=0", "solver.checkpoint_period=1",
                 "solver.keep_last=6", "test.max_images=1"]
    DetectionTrainer(tiny(tmp_path, *overrides), tmp_path / "run").run()
    states = {i: _params(tmp_path / "run" / "checkpoints" / f"model_{i:07d}.pth") for i in range(1, 7)}
    weights = [k for k in states[1] if k.endswith(".weight")]
    pretrained = [k for k in weights if k.startswith(PRETRAINED_PREFIXES)]
    new = [k for k in weights if not k.startswith(PRETRAINED_PREFIXES)]
    assert pretrained and new

    def same(a, b, keys):
        return all(torch.equal(states[a][k], states[b][k]) for k in keys)

    assert same(1, 3, pretrained) and not same(1, 3, new)      # held for iterations 0-2
    assert not same(3, 4, pretrained) and not same(4, 6, pretrained)  # released at iteration 3


def test_resume_inside_the_hold_matches_an_uninterrupted_run(tmp_path):
    overrides = ["solver.freeze_pretrained_iters=3", "test.max_images=1"]
    DetectionTrainer(tiny(tmp_path, *overrides), tmp_path / "whole").run()
    DetectionTrainer(tiny(tmp_path, *overrides), tmp_path / "split", stop_after=2).run()
    DetectionTrainer(tiny(tmp_path, *overrides), tmp_path / "split", resume=True).run()
    whole, split = _params(tmp_path / "whole" / "model_final.pth"), _params(tmp_path / "split" / "model_final.pth")
    assert all(torch.equal(whole[k], split[k]) for k in whole)


def test_resume_with_another_hold_setting_names_the_checkpoint(tmp_path):
    # Holding splits the optimizer's groups: a checkpoint from a run without it cannot continue with it.
    DetectionTrainer(tiny(tmp_path, "test.max_images=1"), tmp_path / "run", stop_after=2).run()
    with pytest.raises(ConfigError, match=r"model_0000002\.pth.*solver\.freeze_pretrained_iters"):
        DetectionTrainer(tiny(tmp_path, "solver.freeze_pretrained_iters=3"), tmp_path / "run", resume=True).run()
