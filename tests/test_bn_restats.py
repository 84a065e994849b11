"""model.bn_restats_images: the trunk's and the box head's BatchNorm statistics are measured again on training images
and the RoIs sampled from them, matching torch's own BatchNorm on the same inputs; the trainer does it once, before
training, and not again on resume."""
import pytest
import torch
from torchvision.ops import FrozenBatchNorm2d

from backbones.utils.config import ConfigError
from detection.config import load_det_config
from detection.engine.trainer import DetectionTrainer
from detection.model.bn_restats import NORMS, restat_batchnorm
from detection.model.detector import build_detector
from detection.model.io import read_detector_file
from fault_helpers import one_thread  # noqa: F401  (shared one-thread fixture)
from test_det_train import tiny

pytestmark = pytest.mark.usefixtures("one_thread")
R18 = ["model.backbone=resnet18", "model.width_mult=0.25", "model.anchor_sizes=[16,32,64]",
       "model.roi_heads.pooler_resolution=4", "model.roi_heads.batch_size_per_image=16", "model.freeze_at=0"]


def _detector(norm: str):
    torch.manual_seed(0)
    return build_detector(load_det_config(overrides=[*R18, f"model.norm={norm}"]), 3, weights=None)


def _data(count: int):
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 64 + 16 * (i % 2), 96, generator=g) for i in range(count)]
    targets = [{"boxes": torch.tensor([[8.0, 10.0, 40.0, 50.0], [50.0, 20.0, 90.0, 60.0]]),
                "labels": torch.tensor([1, 3])} for _ in range(count)]
    return images, targets


def _norms(module):
    return [m for m in module.modules() if isinstance(m, NORMS)]


@torch.no_grad()
def _torch_batchnorm_statistics(images):
    """torch's BatchNorm2d in training mode on one batch of all the images: its running statistics, made biased."""
    model = _detector("bn")
    norms = _norms(model.backbone)
    sizes = {}
    handles = [bn.register_forward_pre_hook(lambda m, x: sizes.__setitem__(m, x[0].numel() // x[0].shape[1]))
               for bn in norms]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    batch, _ = model.transform(images)
    model.backbone(batch.tensors)
    for handle in handles:
        handle.remove()
    return [(bn.running_mean.clone(), bn.running_var * (sizes[bn] - 1) / sizes[bn]) for bn in norms]


def test_trunk_statistics_match_torch_batchnorm_on_the_same_images():
    images, targets = _data(3)
    model = _detector("frozen_bn")
    norms = _norms(model.backbone)
    before = [bn.running_var.clone() for bn in norms]
    counts = restat_batchnorm(model, images, targets, batch_size=len(images))
    assert counts == {"trunk": len(norms), "head": len(_norms(model.roi_heads.box_head))}
    assert counts["trunk"] > 10 and counts["head"] > 2
    assert all(isinstance(bn, FrozenBatchNorm2d) for bn in norms) and model.training
    reference = _torch_batchnorm_statistics(images)
    for bn, (mean, var) in zip(norms, reference):
        torch.testing.assert_close(bn.running_mean, mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(bn.running_var, var, rtol=1e-4, atol=1e-5)
    assert sum(not torch.allclose(bn.running_var, old, rtol=0.1) for bn, old in zip(norms, before)) > len(norms) // 2


def _normalised_moments(model, images, targets):
    """Per norm layer of the head: channel means and variances of (x - running mean) / sqrt(running var + eps) over
    the RoIs of one training-mode pass (RoI sampling re-seeded)."""
    head = model.roi_heads.box_head
    moments = []

    def record(module, inputs):
        x = (inputs[0] - module.running_mean[None, :, None, None]) / (module.running_var + module.eps).sqrt()[
            None, :, None, None]
        moments.append((x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)))
    handles = [bn.register_forward_pre_hook(record) for bn in _norms(head)]
    torch.manual_seed(5)
    with torch.no_grad():
        model.train()
        batch, batch_targets = model.transform(images, [dict(t) for t in targets])
        features = {"0": model.backbone(batch.tensors)}
        proposals, _ = model.rpn(batch, features, batch_targets)
        proposals, _, _, _ = model.roi_heads.select_training_samples(proposals, batch_targets)
        head(model.roi_heads.box_roi_pool(features, proposals, batch.image_sizes))
    for handle in handles:
        handle.remove()
    return moments


@pytest.mark.parametrize("norm", ["frozen_bn", "bn"])
def test_head_statistics_normalise_the_sampled_rois(norm):
    # One batch: after re-estimation, every layer's statistics are exactly those of its inputs in the same pass,
    # so each norm maps its RoI features to mean 0, variance 1.
    images, targets = _data(2)
    model = _detector(norm)
    off = _normalised_moments(model, images, targets)
    assert max(float(v.sub(1).abs().max()) for _, v in off) > 0.5  # the initial statistics do not normalise
    torch.manual_seed(5)
    restat_batchnorm(model, images, targets, batch_size=2)
    on = _normalised_moments(model, images, targets)
    assert len(on) == len(_norms(model.roi_heads.box_head))
    for mean, var in on:
        torch.testing.assert_close(mean, torch.zeros_like(mean), rtol=0, atol=1e-3)
        torch.testing.assert_close(var, torch.ones_like(var), rtol=0, atol=1e-2)


def test_bad_counts_are_config_errors():
    for value in ("-1", "2.5"):
        with pytest.raises(ConfigError, match=r"model\.bn_restats_images"):
            load_det_config(overrides=[f"model.bn_restats_images={value}"])
    with pytest.raises(ValueError, match="at least one training image"):
        restat_batchnorm(_detector("frozen_bn"), [], [], batch_size=2)


def test_trainer_restats_once_before_training_and_not_on_resume(tmp_path, capfd):
    # lr ~0: the saved statistics are those set before training (frozen BN has no other way to change).
    common = ["model.norm=frozen_bn", "solver.base_lr=1e-12", "solver.warmup_iters=0", "test.max_images=1"]
    DetectionTrainer(tiny(tmp_path, *common), tmp_path / "plain").run()
    DetectionTrainer(tiny(tmp_path, *common, "model.bn_restats_images=4", "solver.max_iter=6"),
                     tmp_path / "restat", stop_after=2).run()
    log = capfd.readouterr().err
    assert log.count("BatchNorm statistics measured again on 4 training images") == 1
    DetectionTrainer(tiny(tmp_path, *common, "model.bn_restats_images=4"), tmp_path / "restat", resume=True).run()
    log = capfd.readouterr().err
    assert "measured again" not in log and "resumed from" in log
    plain = read_detector_file(tmp_path / "plain" / "model_final.pth")["model"]
    restat = read_detector_file(tmp_path / "restat" / "model_final.pth")["model"]
    changed = [k for k in plain if k.endswith("running_var") and not torch.allclose(plain[k], restat[k])]
    assert any(k.startswith("backbone.") for k in changed) and any(k.startswith("roi_heads.box_head.") for k in changed)
    weights = [k for k in plain if k.endswith(".weight")]
    assert all(torch.allclose(plain[k], restat[k], rtol=1e-5, atol=1e-9) for k in weights)
