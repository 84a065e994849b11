"""The digits recipes `tools/pretrain.py --arch A --dataset digits` resolves without --config."""
import torch

from backbones.pretrain import PRETRAIN_DEFAULTS, default_config_path, validate
from backbones.registry import build_backbone
from backbones.utils.config import load_config


def test_vgg16_digits_pretraining_uses_inputs_its_pools_can_take():
    path = default_config_path("digits", "vgg16")
    assert path is not None and path.name == "digits_vgg16.yaml"
    cfg = load_config(PRETRAIN_DEFAULTS, str(path), ["data.dataset=digits"])
    validate(cfg)
    assert cfg.model.arch == "vgg16" and cfg.data.digits_size == 48
    model = build_backbone("vgg16", num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, cfg.data.digits_size, cfg.data.digits_size)).shape == (1, 10)
