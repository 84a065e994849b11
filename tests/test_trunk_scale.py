"""model.trunk_output_rms: VGG-16's conv5_3 × c and fc6 ÷ c leave the box features unchanged and set the RMS the RPN
reads; ResNet trunks are refused; the trainer applies it once, before training."""
import pytest
import torch
from torchvision.ops import roi_align, roi_pool

from backbones.utils.config import ConfigError
from detection.config import load_det_config
from detection.engine.trainer import DetectionTrainer, build_optimizer
from detection.model.detector import build_detector
from detection.model.io import read_detector_file
from detection.model.trunk_scale import rescale_trunk_output, trunk_output_rms
from fault_helpers import one_thread  # noqa: F401  (shared one-thread fixture)
from test_det_train import tiny

pytestmark = pytest.mark.usefixtures("one_thread")
VGG = ["model.backbone=vgg16", "model.width_mult=0.25", "model.roi_heads.pooler_resolution=0"]


def _vgg_detector(pooler):
    torch.manual_seed(0)
    cfg = load_det_config(overrides=[*VGG, f"model.roi_heads.pooler={pooler}", "input.min_size_test=96",
                                     "input.max_size_test=96"])
    return build_detector(cfg, 3, weights=None).eval()


def _box_features(model, images, boxes):
    batch, _ = model.transform(images)
    fmap = model.backbone(batch.tensors)
    pool = roi_align(fmap, [boxes], 7, 1 / 16, 0, True) if model.roi_heads.box_roi_pool.kind == "align" else \
        roi_pool(fmap, [boxes], 7, 1 / 16)
    return model.roi_heads.box_head(pool)


@pytest.mark.parametrize("pooler", ["align", "pool"])
@torch.no_grad()
def test_rescaling_sets_the_rms_and_keeps_the_box_features(pooler):
    model = _vgg_detector(pooler)
    images = [torch.rand(3, 96, 96, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    boxes = torch.tensor([[4.0, 8.0, 60.0, 50.0], [30.0, 30.0, 90.0, 94.0], [10.0, 40.0, 40.0, 70.0]])
    reference = _box_features(model, images, boxes)
    before, factor = rescale_trunk_output(model, images, 1.5)
    assert factor == pytest.approx(1.5 / before)
    assert factor > 1.5  # a randomly initialised VGG-16 ends far below RMS 1: the check below is not trivial
    assert trunk_output_rms(model, images) == pytest.approx(1.5, rel=1e-4)
    torch.testing.assert_close(_box_features(model, images, boxes), reference, rtol=1e-4, atol=1e-6)


def test_resnet_trunks_are_refused():
    with pytest.raises(ConfigError, match=r"model\.trunk_output_rms"):
        load_det_config(overrides=["model.backbone=resnet18", "model.trunk_output_rms=1.0"])
    with pytest.raises(ConfigError, match=r"model\.trunk_output_rms"):
        load_det_config(overrides=[*VGG, "model.trunk_output_rms=-1.0"])
    model = build_detector(load_det_config(overrides=["model.backbone=resnet18"]), 3, weights=None)
    with pytest.raises(ValueError, match="conv \\+ ReLU and an fc6 head"):
        rescale_trunk_output(model, [torch.rand(3, 64, 64)], 1.0)


def test_trainer_rescales_once_before_training(tmp_path, capfd):
    # lr ~0: the saved weights are the initial ones, so the two runs differ only by the rescaling.
    common = [*VGG, "solver.base_lr=1e-12", "solver.max_iter=1", "solver.steps=[1]", "solver.warmup_iters=0",
              "test.max_images=1"]
    DetectionTrainer(tiny(tmp_path, *common), tmp_path / "plain").run()
    DetectionTrainer(tiny(tmp_path, *common, "model.trunk_output_rms=2.0"), tmp_path / "scaled").run()
    log = capfd.readouterr().err
    assert "-> 2: conv5_3 x" in log
    plain = read_detector_file(tmp_path / "plain" / "model_final.pth")["model"]
    scaled = read_detector_file(tmp_path / "scaled" / "model_final.pth")["model"]
    conv, fc6 = "backbone.28.weight", "roi_heads.box_head.fc6.weight"
    factor = float(scaled[conv].norm() / plain[conv].norm())
    assert factor == pytest.approx(float(log.split("conv5_3 x ")[1].split(",")[0]), rel=1e-2)
    torch.testing.assert_close(scaled[conv], plain[conv] * factor, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(scaled[fc6], plain[fc6] / factor, rtol=1e-4, atol=1e-9)
    for key in plain.keys() - {conv, fc6, "backbone.28.bias"}:
        torch.testing.assert_close(scaled[key], plain[key], rtol=1e-5, atol=1e-9, msg=key)


def _fc6_steps(model, cfg, factor, images, boxes, steps=3):
    """A few SGD steps (momentum, weight decay) on fc6's weight alone; the box features after them."""
    fc6 = model.roi_heads.box_head.fc6.weight
    for p in model.parameters():
        p.requires_grad_(p is fc6)
    optimizer = build_optimizer(model, cfg, 0.05, factor)
    target = torch.randn(len(boxes), 1024, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for _ in range(steps):
        loss = (_box_features(model, images, boxes) - target).pow(2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return _box_features(model, images, boxes), optimizer


def test_rescaled_fc6_learns_as_before():
    # float64: a ReLU input within float32 rounding of 0 would otherwise flip between the two runs
    images = [torch.rand(3, 96, 96, generator=torch.Generator().manual_seed(i), dtype=torch.float64) for i in range(2)]
    boxes = torch.tensor([[4.0, 8.0, 60.0, 50.0], [30.0, 30.0, 90.0, 94.0]], dtype=torch.float64)
    settings = [*VGG, "solver.weight_decay=0.01"]
    plain_cfg = load_det_config(overrides=settings)
    scaled_cfg = load_det_config(overrides=[*settings, "model.trunk_output_rms=1.0"])
    reference, _ = _fc6_steps(_vgg_detector("align").double(), plain_cfg, 1.0, images, boxes)
    model = _vgg_detector("align").double()
    with torch.no_grad():
        _, factor = rescale_trunk_output(model, images, 1.0)
    assert factor > 3
    after, optimizer = _fc6_steps(model, scaled_cfg, factor, images, boxes)
    torch.testing.assert_close(after, reference, rtol=1e-7, atol=1e-9)
    # Without the group's options the same steps move the features c² times as far: the check above can fail.
    model = _vgg_detector("align").double()
    with torch.no_grad():
        rescale_trunk_output(model, images, 1.0)
    wrong, _ = _fc6_steps(model, scaled_cfg, 1.0, images, boxes)
    assert not torch.allclose(wrong, reference, rtol=1e-2, atol=1e-3)
    # On resume the optimizer is rebuilt without the factor; the saved groups bring it back.
    rebuilt = build_optimizer(model, scaled_cfg, 0.05)
    rebuilt.load_state_dict(optimizer.state_dict())
    assert rebuilt.param_groups[-1]["lr_factor"] == pytest.approx(1 / factor ** 2)
    assert rebuilt.param_groups[-1]["weight_decay"] == pytest.approx(0.01 * factor ** 2)
