"""End-to-end pretraining runs on tiny data: outputs, read-back, exact resume, checkpoint fallback, NaN policy."""
import json

import pytest
import torch

from backbones import build_backbone
from backbones.pretrain import Trainer
from backbones.pretrain.datasets import DigitsDataset
from backbones.pretrain.sampler import EpochBatchSampler
from backbones.utils.checkpoint import load_checkpoint
from backbones.utils.metrics_log import read_metrics
from backbones.utils.numerics import NonFiniteError
from test_pretrain_fixtures import make_cifar, make_image_folder, run_cli, tiny_digits_config, single_thread  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = ["data.num_workers=0", "solver.max_iter=4", "solver.steps=[]", "train.log_period=2",
        "train.checkpoint_period=2", "train.progress=false", "train.device=cpu"]


def _final_weights(run_dir):
    return load_checkpoint(run_dir / "model_final.pth")["model"]


def _assert_same_weights(a, b):
    a, b = ({k: v for k, v in d.items() if not k.endswith("num_batches_tracked")} for d in (a, b))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_digits_run_outputs_and_eval_only(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli("--arch", "resnet20", "--dataset", "digits", "--output-dir", out, *TINY,
                   "solver.batch_size=32", "solver.reference_batch=64", "eval.max_images=100") == 0
    final = json.loads((out / "final.json").read_text())
    assert {"arch", "dataset", "iters", "train_err", "top1_err", "top5_err", "protocol", "checkpoint"} <= set(final)
    assert (final["arch"], final["dataset"], final["iters"], final["protocol"]) == ("resnet20", "digits", 4, "single")
    assert final["lr"] == pytest.approx(0.05)  # linear rule: 0.1 at batch 64 → 0.05 at batch 32
    assert final["checkpoint"] == str(out / "model_final.pth")
    records = read_metrics(out)
    train_lines = [r for r in records if "loss" in r]
    assert [r["iter"] for r in train_lines] == [2, 4] and all({"lr", "train_err"} <= set(r) for r in train_lines)
    assert records[-1]["iter"] == 4 and records[-1]["eval/top1_err"] == pytest.approx(final["top1_err"])
    assert (out / "config.yaml").is_file() and any((out / "tb").iterdir())
    assert sorted(p.name for p in out.glob("model_*.pth")) == ["model_0000002.pth", "model_0000004.pth",
                                                             "model_final.pth"]

    checkpoint = load_checkpoint(out / "model_final.pth")
    assert checkpoint["format"] == "resdet" and checkpoint["arch"] == "resnet20" and "optimizer" not in checkpoint
    meta = checkpoint["weights_meta"]
    assert meta["source"] == "resdet:pretrain:digits" and meta["pixel_format"] == "RGB"
    assert meta["mean"] == pytest.approx([0.3054] * 3) and meta["categories"] == [str(d) for d in range(10)]
    assert checkpoint["model_kwargs"]["shortcut"] == "A" and meta["num_classes"] == 10
    train_state = load_checkpoint(out / "model_0000004.pth")
    assert {"optimizer", "schedule", "scaler", "rng", "sampler", "train_window"} <= set(train_state)

    capsys.readouterr()
    assert run_cli("--eval-only", "--weights", out / "model_final.pth", "--dataset", "digits",
                   "--arch", "resnet20", "eval.max_images=100", "train.progress=false") == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["top1_err"] == pytest.approx(final["top1_err"]) and evaluated["images"] == 100


def test_checkpoint_loads_through_build_backbone(tmp_path):
    out = tmp_path / "run"
    assert run_cli("--arch", "resnet20", "--dataset", "digits", "--output-dir", out, *TINY,
                   "solver.max_iter=2", "solver.batch_size=16", "eval.max_images=16") == 0
    model = build_backbone("resnet20", weights=str(out / "model_final.pth"))
    _assert_same_weights(model.state_dict(), _final_weights(out))
    assert model.weights_meta.source == "resdet:pretrain:digits"


def test_image_folder_run_with_ten_crop_and_multiscale_eval(tmp_path, capsys):
    root = make_image_folder(tmp_path / "inet", per_class=4, val_per_class=2)
    out = tmp_path / "run"
    assert run_cli("--arch", "resnet18", "--dataset", "imagenet", "--data-root", root, "--output-dir", out, *TINY,
                   "solver.max_iter=2", "solver.batch_size=6", "augment.scale=[36,44]", "augment.crop=32",
                   "eval.protocol=10crop", "eval.resize=36", "eval.crop=32", "eval.batch_size=3") == 0
    final = json.loads((out / "final.json").read_text())
    assert final["protocol"] == "10crop" and final["eval_images"] == 6
    assert load_checkpoint(out / "model_final.pth")["weights_meta"]["categories"] == ["n01", "n02", "n03"]
    capsys.readouterr()
    assert run_cli("--eval-only", "--weights", out / "model_final.pth", "--dataset", "imagenet", "--data-root",
                   root, "--output-dir", out, "eval.protocol=multiscale", "eval.scales=[32,40]",
                   "train.progress=false", "data.num_workers=0") == 0
    result = json.loads((out / "eval_multiscale.json").read_text())
    assert result["images"] == 6 and 0 <= result["top1_err"] <= 100


def test_cifar_run_from_tarball(tmp_path):
    root = make_cifar(tmp_path / "cifar", per_batch=8, tarball=True)
    out = tmp_path / "run"
    assert run_cli("--arch", "plain20", "--dataset", "cifar10", "--data-root", root, "--output-dir", out, *TINY,
                   "solver.batch_size=8") == 0
    final = json.loads((out / "final.json").read_text())
    assert (final["dataset"], final["iters"], final["eval_images"], final["protocol"]) == ("cifar10", 4, 8, "single")


def test_stop_and_resume_is_bit_exact(tmp_path):
    cfg = tiny_digits_config()
    Trainer(cfg, tmp_path / "full").run()
    stopped = Trainer(cfg, tmp_path / "split", stop_after=4).run()
    assert stopped["stopped_at"] == 4 and stopped["checkpoint"].endswith("model_0000004.pth")
    Trainer(cfg, tmp_path / "split", resume=True).run()
    _assert_same_weights(_final_weights(tmp_path / "full"), _final_weights(tmp_path / "split"))
    full = [r for r in read_metrics(tmp_path / "full")]
    split = [r for r in read_metrics(tmp_path / "split")]
    assert full == split  # same log, line for line, with the same losses and errors
    a, b = (json.loads((tmp_path / d / "final.json").read_text()) for d in ("full", "split"))
    assert a["train_err"] == b["train_err"] and a["top1_err"] == b["top1_err"]


def test_corrupt_latest_checkpoint_falls_back(tmp_path, capsys):
    cfg = tiny_digits_config("train.checkpoint_period=2", "train.keep_last=3")
    Trainer(cfg, tmp_path / "full").run()
    Trainer(cfg, tmp_path / "split", stop_after=4).run()
    latest = tmp_path / "split" / "model_0000004.pth"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # torn write / disk trouble
    capsys.readouterr()
    Trainer(cfg, tmp_path / "split", resume=True).run()
    err = capsys.readouterr().err
    assert "model_0000004.pth is corrupt" in err and "falling back" in err
    assert "resumed from" in err and "model_0000002.pth at iteration 2" in err
    _assert_same_weights(_final_weights(tmp_path / "full"), _final_weights(tmp_path / "split"))


class _PoisonedDigits(DigitsDataset):
    """Digits with one NaN image: the batch that holds it has a NaN loss."""

    def __init__(self, poisoned_index):
        super().__init__("train", 16)
        self.images = self.images.clone()
        self.images[poisoned_index] = float("nan")


def _first_batch_with(index, cfg):
    sampler = iter(EpochBatchSampler(1437, cfg.solver.batch_size, seed=cfg.train.seed))
    for b in range(cfg.solver.max_iter):
        if index in [i for _, i in next(sampler)]:
            return b + 1
    raise AssertionError("index not sampled")


def test_nan_stop_names_iteration_and_last_checkpoint(tmp_path):
    cfg = tiny_digits_config("train.checkpoint_period=1")
    order = EpochBatchSampler(1437, 16, seed=0).epoch_order(0)
    poisoned = int(order[16 * 3 + 5])  # in the 4th batch
    assert _first_batch_with(poisoned, cfg) == 4
    with pytest.raises(NonFiniteError, match=r"non-finite loss at iteration 4 .*last good checkpoint: .*model_0000003"):
        Trainer(cfg, tmp_path, datasets=(_PoisonedDigits(poisoned), DigitsDataset("val", 16))).run()
    written = sorted(p.name for p in tmp_path.glob("model_*.pth"))
    assert written == ["model_0000002.pth", "model_0000003.pth"]  # keep_last=2; nothing after the NaN
    for path in tmp_path.glob("model_*.pth"):
        state = load_checkpoint(path)["model"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_nan_skip_policy_skips_the_step_and_finishes(tmp_path):
    cfg = tiny_digits_config("solver.nan_policy=skip")
    order = EpochBatchSampler(1437, 16, seed=0).epoch_order(0)
    poisoned = int(order[16 * 1 + 2])  # in the 2nd batch
    Trainer(cfg, tmp_path, datasets=(_PoisonedDigits(poisoned), DigitsDataset("val", 16))).run()
    final = json.loads((tmp_path / "final.json").read_text())
    assert final["skipped_steps"] == 1 and final["iters"] == 6
    state = load_checkpoint(tmp_path / "model_final.pth")["model"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_and_channels_last_paths_run(tmp_path, amp):
    """The GPU options also run on CPU (autocast + GradScaler), so their code paths are exercised in CI."""
    cfg = tiny_digits_config(f"train.amp={amp}", "train.channels_last=true", "solver.max_iter=2")
    summary = Trainer(cfg, tmp_path).run()
    assert summary["iters"] == 2 and summary["skipped_steps"] == 0
    checkpoint = load_checkpoint(tmp_path / "model_0000002.pth")
    assert checkpoint["scaler"] if amp == "fp16" else True  # fp16 keeps a loss scale to resume with
    state = load_checkpoint(tmp_path / "model_final.pth")["model"]
    assert all(v.dtype != torch.bfloat16 and v.dtype != torch.float16 for v in state.values())


def test_resuming_a_finished_run_repeats_only_the_final_report(tmp_path):
    cfg = tiny_digits_config("solver.max_iter=3")
    Trainer(cfg, tmp_path).run()
    before = read_metrics(tmp_path)
    final_before = json.loads((tmp_path / "final.json").read_text())
    Trainer(cfg, tmp_path, resume=True).run()  # e.g. killed between the last checkpoint and final.json
    assert read_metrics(tmp_path) == before  # one final evaluation line, not two
    final_after = json.loads((tmp_path / "final.json").read_text())
    assert final_after["top1_err"] == final_before["top1_err"] and final_after["iters"] == 3
