"""Config and set-up faults: one clear error before any work starts."""
import glob
import re

import pytest

from backbones.pretrain import PRETRAIN_DEFAULTS, Trainer, default_config_path, validate
from backbones.pretrain.schedule import LRSchedule
from backbones.utils.config import ConfigError, load_config
from backbones.utils.run_dir import RunFolderError
from test_pretrain_fixtures import REPO, make_image_folder, run_cli, single_thread, tiny_digits_config  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("path", sorted(glob.glob(str(REPO / "configs/pretrain/*.yaml"))))
def test_shipped_configs_are_valid(path):
    cfg = load_config(PRETRAIN_DEFAULTS, path)
    if cfg.model.arch:  # the *_base.yaml files get their arch from --arch
        validate(cfg, world_size=8 if cfg.data.dataset == "imagenet" else 2)


def test_default_config_lookup():
    assert default_config_path("cifar10", "resnet110").name == "cifar10_resnet110.yaml"
    assert default_config_path("imagenet", "resnet1202").name == "imagenet_base.yaml"
    cfg = load_config(PRETRAIN_DEFAULTS, str(default_config_path("cifar10", "resnet110")))
    assert (cfg.solver.warmup_until_err, cfg.solver.warmup_factor, cfg.solver.steps) == (80.0, 0.1, [32000, 48000])
    inet = load_config(PRETRAIN_DEFAULTS, str(default_config_path("imagenet", "resnet101")))
    assert (inet.augment.scale, inet.augment.crop, inet.solver.batch_size, inet.solver.max_iter) == \
        ([256, 480], 224, 256, 600000)


@pytest.mark.parametrize("override, message", [
    ("solver.base_lrr=0.1", r"unknown config key 'solver.base_lrr'.*did you mean 'solver.base_lr'"),
    ("solver.max_iter=abc", r"'solver.max_iter' .*expects int.*got str 'abc'"),
    ("solver.base_lr=-0.1", r"'solver.base_lr' must be > 0, got -0.1"),
    ("solver.momentum=1.5", r"'solver.momentum' must be in \[0, 1\)"),
    ("solver.steps=[5,3]", r"'solver.steps' must be strictly increasing"),
    ("solver.nan_policy=ignore", r"'solver.nan_policy' must be one of stop, skip"),
    ("model.arch=resnet21", r"'model.arch' unknown backbone 'resnet21'; did you mean"),
    ("augment.std=[0.2,0,0.2]", r"'augment.std' values must be > 0"),
    ("eval.protocol=10crop", r"'eval.protocol' '10crop' resizes to 256 px, meant for ImageNet"),
    ("solver.warmup_until_err=80", r"'solver.warmup_iters' must be > 0 \(a cap\)"),
])
def test_config_faults_fail_before_work(tmp_path, capsys, override, message):
    code = run_cli("--config", REPO / "configs/pretrain/digits_resnet20.yaml", "--output-dir", tmp_path / "run",
                   override)
    assert code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "run").exists()  # nothing was started


def test_batch_must_divide_world_size():
    cfg = tiny_digits_config("solver.batch_size=10")
    validate(cfg, world_size=2)
    with pytest.raises(ConfigError, match=r"solver.batch_size' = 10 \(global batch\) is not divisible by the world "
                                          r"size 4"):
        validate(cfg, world_size=4)


def test_missing_data_names_layout_and_source(tmp_path, capsys):
    assert run_cli("--arch", "resnet50", "--dataset", "imagenet", "--data-root", tmp_path / "nope",
                   "--output-dir", tmp_path / "run") == 1
    err = capsys.readouterr().err
    assert "train/<wnid>/*.JPEG" in err and "https://image-net.org/download-images" in err
    assert run_cli("--arch", "resnet20", "--dataset", "cifar10", "--data-root", tmp_path / "nope",
                   "--output-dir", tmp_path / "run2") == 1
    err = capsys.readouterr().err
    assert "cifar-10-python.tar.gz" in err and "https://www.cs.toronto.edu/~kriz/cifar.html" in err


def test_unwritable_or_occupied_output_dir(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert run_cli("--config", REPO / "configs/pretrain/digits_resnet20.yaml", "--output-dir", blocker / "run") == 1
    assert "is not writable" in capsys.readouterr().err
    cfg = tiny_digits_config()
    Trainer(cfg, tmp_path / "run", stop_after=3).run()
    with pytest.raises(RunFolderError, match="already holds checkpoints.*--resume"):
        Trainer(cfg, tmp_path / "run").run()


def test_eval_only_needs_weights(capsys):
    assert run_cli("--eval-only", "--dataset", "digits") == 2
    assert "--eval-only needs --weights" in capsys.readouterr().err


def test_lr_schedule_rules():
    step = LRSchedule(0.1, "step", [4, 6])
    assert [round(step.lr(i), 6) for i in (0, 3, 4, 5, 6, 9)] == [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    warm = LRSchedule(0.1, "step", [], warmup_iters=100, warmup_factor=0.1, warmup_until_err=80.0)
    assert warm.lr(0) == pytest.approx(0.01)
    warm.observe_train(10, 85.0)
    assert warm.lr(11) == pytest.approx(0.01)
    warm.observe_train(11, 79.0)  # training error below 80%: back to 0.1
    assert warm.lr(12) == pytest.approx(0.1) and warm.state_dict()["warmup_done_at"] == 12
    linear = LRSchedule(0.1, "step", [], warmup_iters=10, warmup_factor=0.1, warmup_method="linear")
    assert linear.lr(0) == pytest.approx(0.01) and linear.lr(5) == pytest.approx(0.055) and linear.lr(10) == 0.1
    plateau = LRSchedule(0.1, "plateau", plateau_patience=2, plateau_threshold=0.5)
    drops = [plateau.observe_eval(e) for e in (50.0, 40.0, 39.8, 39.9, 39.0, 38.0)]
    assert drops == [False, False, False, True, False, False] and plateau.lr(0) == pytest.approx(0.01)


def test_image_folder_too_small_for_batch(tmp_path, capsys):
    root = make_image_folder(tmp_path / "inet", per_class=1)
    assert run_cli("--arch", "resnet18", "--dataset", "imagenet", "--data-root", root, "--output-dir",
                   tmp_path / "run", "data.num_workers=0", "train.progress=false") == 1
    assert "fewer than one global batch of 256" in capsys.readouterr().err
