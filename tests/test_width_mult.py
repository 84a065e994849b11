"""Reduced-width ImageNet-family nets (``width_mult``): the digits recipes of resnet50/101/152 and vgg16 run at
quarter width. The width travels with the weights: a checkpoint rebuilds at its own width, and a config that
contradicts it is one error naming model.width_mult."""
import pytest
import torch

from backbones import build_backbone, build_c4
from backbones.pretrain.model_io import build_classifier, checkpoint_dict, load_classifier, weights_meta
from backbones.utils.checkpoint import save_checkpoint
from backbones.utils.config import ConfigError
from backbones.weights.sources import LayoutMismatch
from detection.config import load_det_config
from detection.model.detector import build_detector
from test_cli_defaults import empty_cwd, print_config  # noqa: F401  (fixture)


def test_quarter_width_scales_every_layer_and_keeps_the_depth():
    full, quarter = build_backbone("resnet50", num_classes=10), build_backbone("resnet50", num_classes=10, width_mult=0.25)
    assert quarter.conv1.out_channels == 16 and quarter.layer1[0].conv1.out_channels == 16
    assert quarter.layer4[-1].conv3.out_channels == 512 == full.layer4[-1].conv3.out_channels // 4
    assert len(list(quarter.modules())) == len(list(full.modules()))
    assert quarter(torch.zeros(2, 3, 48, 48)).shape == (2, 10)
    vgg = build_backbone("vgg16", num_classes=10, width_mult=0.25)
    convs = [m.out_channels for m in vgg.features if isinstance(m, torch.nn.Conv2d)]
    assert convs == [16, 16, 32, 32, 64, 64, 64, 128, 128, 128, 128, 128, 128]
    assert [m.out_features for m in vgg.classifier if isinstance(m, torch.nn.Linear)] == [1024, 1024, 10]
    assert vgg(torch.zeros(1, 3, 48, 48)).shape == (1, 10)


@pytest.mark.parametrize("name, trunk, head", [("resnet101", 256, 512), ("vgg16", 128, 1024), ("resnet18", 64, 128)])
def test_c4_split_reports_the_reduced_channels(name, trunk, head):
    c4 = build_c4(name, width_mult=0.25)
    assert (c4.out_channels, c4.head_channels) == (trunk, head)
    features = c4(torch.zeros(1, 3, 64, 64))
    assert features.shape == (1, trunk, 4, 4)
    pooled = torch.zeros(3, trunk, 7, 7)  # VGG's fc6 needs 7×7; res5 + average pool takes any size
    assert c4.head(pooled).shape == (3, head)


def test_cifar_nets_have_no_width_option():
    with pytest.raises(ValueError, match="width_mult=0.5 is for the ImageNet family"):
        build_backbone("resnet20", width_mult=0.5)


def _quarter_checkpoint(tmp_path, arch="resnet18"):
    model, kwargs = build_classifier(arch, 10, width_mult=0.25)
    meta = weights_meta(arch, "digits", model, [0.5] * 3, [0.25] * 3, [str(i) for i in range(10)])
    path = tmp_path / "model_final.pth"
    save_checkpoint(checkpoint_dict(arch, model.state_dict(), meta, kwargs), path)
    return path, model


def test_checkpoints_rebuild_at_their_own_width(tmp_path):
    path, model = _quarter_checkpoint(tmp_path)
    rebuilt, _, _ = load_classifier(path)
    assert rebuilt.width_mult == 0.25 and torch.equal(rebuilt.conv1.weight, model.conv1.weight)
    loaded = build_backbone("resnet18", weights=str(path))  # no width given: the weights decide
    assert loaded.width_mult == 0.25 and torch.equal(loaded.fc.weight, model.fc.weight)
    with pytest.raises(LayoutMismatch, match="width_mult=1.0 contradicts weights"):
        build_backbone("resnet18", weights=str(path), width_mult=1.0)


def test_detector_width_must_match_its_weights(tmp_path):
    path, _ = _quarter_checkpoint(tmp_path)
    cfg = load_det_config(overrides=["model.backbone=resnet18", f"model.weights={path}"])
    with pytest.raises(ConfigError, match=r"model.width_mult' = 1.0 does not match weights .* set model.width_mult=0.25"):
        build_detector(cfg, 3)
    cfg = load_det_config(overrides=["model.backbone=resnet18", f"model.weights={path}", "model.width_mult=0.25"])
    model = build_detector(cfg, 3)
    assert model.backbone.out_channels == 64 and model.roi_heads.box_predictor.cls_score.in_features == 128


def test_width_mult_is_validated_in_both_configs(empty_cwd):  # noqa: F811
    code, _, _, err = print_config("pretrain.py", "--arch", "resnet20", "--dataset", "digits", "model.width_mult=0.5")
    assert code == 2 and "model.width_mult" in err and "must be 1.0 for resnet20" in err
    code, _, _, err = print_config("train_det.py", "--dataset", "digits", "--backbone", "resnet50",
                                   "model.width_mult=0")
    assert code == 2 and "model.width_mult" in err

