"""Config faults: unknown keys, wrong types and impossible values give one clear error before any work starts.

Each case runs the real CLI entry point (``main``) and checks: exit code 2, a single ``config error:`` line naming
the key (and the file, for YAML), no traceback, and nothing created — neither the run folder nor the dataset root.
"""
import pytest

from backbones.pretrain.defaults import PRETRAIN_DEFAULTS, validate as validate_pretrain
from backbones.utils.config import ConfigError, load_config
from detection.config import load_det_config, validate as validate_det
from fault_helpers import det_args, pretrain_args, run_main

PRETRAIN_CASES = {
    "unknown_override": (["solver.base_lrr=0.1"],
                         "unknown config key 'solver.base_lrr' (command-line override); did you mean 'solver.base_lr'?"),
    "wrong_type_text": (["solver.max_iter=ten"], "config key 'solver.max_iter' (command-line override) expects int"),
    "wrong_type_float": (["solver.max_iter=2.5"], "config key 'solver.max_iter' (command-line override) expects int"),
    "negative_lr": (["solver.base_lr=-0.1"], "config key 'solver.base_lr' must be > 0, got -0.1"),
    "nan_lr": (["solver.base_lr=.nan"], "config key 'solver.base_lr' must be > 0, got nan"),
    "keep_last_zero": (["train.keep_last=0"], "config key 'train.keep_last' must be > 0, got 0"),
    "momentum_above_one": (["solver.momentum=1.5"], "config key 'solver.momentum' must be in [0, 1), got 1.5"),
    "steps_decreasing": (["solver.steps=[8,4]"], "config key 'solver.steps' must be strictly increasing"),
    "unknown_arch": (["model.arch=resnet21"], "config key 'model.arch'"),
}

DET_CASES = {
    "unknown_override": (["model.roi_heads.pooler_resolutoin=7"],
                         "unknown config key 'model.roi_heads.pooler_resolutoin' (command-line override); did you "
                         "mean 'model.roi_heads.pooler_resolution'?"),
    "unknown_section": (["modle.freeze_at=2"], "unknown config key 'modle.freeze_at'"),
    "wrong_type": (["solver.ims_per_batch=two"], "config key 'solver.ims_per_batch' (command-line override) "
                                                 "expects int"),
    "list_for_scalar": (["solver.base_lr=[0.1]"], "config key 'solver.base_lr' (command-line override) expects "
                                                  "float"),
    "negative_lr": (["solver.base_lr=-0.001"], "config key 'solver.base_lr' = -0.001 is invalid: expected > 0"),
    "freeze_at_negative": (["model.freeze_at=-1"], "config key 'model.freeze_at' = -1 is invalid"),
    "freeze_at_beyond_stages": (["model.freeze_at=5"], "config key 'model.freeze_at' = 5 is invalid: expected 0..4 "
                                                       "for resnet20"),
    "unknown_backbone": (["model.backbone=resnet21"], "config key 'model.backbone'"),
    "iou_above_one": (["model.rpn.fg_iou_thresh=1.5"], "config key 'model.rpn.bg_iou_thresh'"),
    "bad_on_error": (["data.on_error=ignore"], "config key 'data.on_error' = 'ignore' is invalid"),
}


def assert_one_clear_error(code, out, expected):
    assert code == 2, out[-2000:]
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("config error: "), out[-2000:]
    assert expected in lines[0], lines[0]


@pytest.mark.parametrize("case", sorted(PRETRAIN_CASES))
def test_pretrain_config_fault_is_one_error_before_work(case, tmp_path):
    overrides, expected = PRETRAIN_CASES[case]
    run_dir = tmp_path / "run"
    code, out = run_main("pretrain.py", pretrain_args(run_dir, *overrides))
    assert_one_clear_error(code, out, expected)
    assert not run_dir.exists()


@pytest.mark.parametrize("case", sorted(DET_CASES))
def test_train_det_config_fault_is_one_error_before_work(case, tmp_path):
    overrides, expected = DET_CASES[case]
    run_dir, data_root = tmp_path / "run", tmp_path / "datasets"
    code, out = run_main("train_det.py", det_args(run_dir, *overrides, data_root=data_root))
    assert_one_clear_error(code, out, expected)
    assert not run_dir.exists() and not data_root.exists()


@pytest.mark.parametrize("tool", ["pretrain.py", "train_det.py"])
def test_unknown_key_in_yaml_names_file_and_key(tool, tmp_path):
    config = tmp_path / "my.yaml"
    if tool == "pretrain.py":
        config.write_text("_base_: digits_base.yaml\ntrain:\n  chekpoint_period: 5\n")
        (tmp_path / "digits_base.yaml").write_text("model:\n  arch: resnet20\ndata:\n  dataset: digits\n")
        args = ["--config", str(config), "--output-dir", str(tmp_path / "run")]
        expected = f"unknown config key 'train.chekpoint_period' in {config}; did you mean 'train.checkpoint_period'?"
    else:
        config.write_text("solver:\n  max_iters: 5\n")
        args = ["--config", str(config), "--output-dir", str(tmp_path / "run"), "--data-root", str(tmp_path / "d")]
        expected = f"unknown config key 'solver.max_iters' in {config}; did you mean 'solver.max_iter'?"
    code, out = run_main(tool, args)
    assert_one_clear_error(code, out, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["my.yaml"] + (["digits_base.yaml"]
                                                                               if tool == "pretrain.py" else []))


@pytest.mark.parametrize("tool", ["pretrain.py", "train_det.py"])
def test_malformed_yaml_names_the_line(tool, tmp_path):
    config = tmp_path / "broken.yaml"
    config.write_text("solver:\n  base_lr: 0.1\n   max_iter: 10\n")
    code, out = run_main(tool, ["--config", str(config), "--output-dir", str(tmp_path / "run")])
    assert_one_clear_error(code, out, f"config file {config} line 3 is not valid YAML")
    assert not (tmp_path / "run").exists()


def test_global_batch_must_divide_by_world_size():
    """The per-process batch rule (global batch / world size) is checked for both tools (two-process runs through
    torchrun: tests/test_faults_distributed.py)."""
    digits = ["model.arch=resnet20", "data.dataset=digits", "eval.protocol=single"]
    validate_pretrain(load_config(PRETRAIN_DEFAULTS, None, [*digits, "solver.batch_size=64"]), world_size=2)
    cfg = load_config(PRETRAIN_DEFAULTS, None, [*digits, "solver.batch_size=63"])
    validate_pretrain(cfg, world_size=1)
    with pytest.raises(ConfigError, match=r"'solver.batch_size' = 63 \(global batch\) is not divisible by the world "
                                          r"size 2"):
        validate_pretrain(cfg, world_size=2)
    det = load_det_config(overrides=["solver.ims_per_batch=3"])
    with pytest.raises(ConfigError, match=r"'solver.ims_per_batch' = 3 is invalid: expected a positive multiple of "
                                          r"the world size \(2\)"):
        validate_det(det, world_size=2)


def test_exponent_floats_are_numbers():
    """PyYAML reads ``1e-4`` as text; a float key takes it as the number the user meant, text stays an error."""
    assert load_det_config(overrides=["solver.base_lr=1e-4"]).solver.base_lr == 1e-4
    with pytest.raises(ConfigError, match="expects float"):
        load_det_config(overrides=["solver.base_lr=1e-4x"])
