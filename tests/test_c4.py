"""C4 split: stride, channels, head outputs, freeze_at, FrozenBN."""
import pytest
import torch
from torchvision.ops import FrozenBatchNorm2d

from backbones import build_c4

CASES = {  # name: (trunk channels, head channels, stride)
    "resnet18": (256, 512, 16), "resnet34": (256, 512, 16), "resnet50": (1024, 2048, 16),
    "resnet101": (1024, 2048, 16), "plain18": (256, 512, 16), "vgg16": (512, 4096, 16), "resnet20": (32, 64, 2),
}


@pytest.mark.parametrize("name", list(CASES))
def test_trunk_and_head_shapes(name):
    channels, head_channels, stride = CASES[name]
    c4 = build_c4(name).eval()
    x = torch.randn(1, 3, 64, 96)
    features = c4(x)
    assert features.shape == (1, channels, 64 // stride, 96 // stride)
    assert (c4.out_channels, c4.head_channels, c4.stride) == (channels, head_channels, stride)
    rois = torch.randn(3, channels, c4.roi_size, c4.roi_size)
    assert c4.head(rois).shape == (3, head_channels)


def test_resnet101_trunk_has_91_conv_layers():
    c4 = build_c4("resnet101")
    convs = [m for n, m in c4.trunk.named_modules() if isinstance(m, torch.nn.Conv2d) and ".downsample" not in n]
    assert len(convs) == 91  # paper Appendix A: conv1 + 3*(3+4+23) = 91


def _trainable_prefixes(c4):
    return {n.split(".")[0] + "." + n.split(".")[1] for n, p in c4.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("freeze_at,frozen", [
    (0, []), (1, ["trunk.conv1"]), (2, ["trunk.conv1", "trunk.layer1"]),
    (4, ["trunk.conv1", "trunk.layer1", "trunk.layer2", "trunk.layer3"]),
    (5, ["trunk.conv1", "trunk.layer1", "trunk.layer2", "trunk.layer3", "head.layer4"]),
])
def test_freeze_at_resnet(freeze_at, frozen):
    c4 = build_c4("resnet18", freeze_at=freeze_at, norm="bn")
    all_groups = ["trunk.conv1", "trunk.layer1", "trunk.layer2", "trunk.layer3", "head.layer4"]
    for group in all_groups:
        params = [p for n, p in c4.named_parameters() if n.startswith(group)]
        assert params, group
        assert all(not p.requires_grad for p in params) == (group in frozen), group
    # BNs inside frozen stages become FrozenBN; the others stay trainable BatchNorm2d.
    assert isinstance(c4.trunk.bn1, FrozenBatchNorm2d) == (freeze_at >= 1)
    assert isinstance(c4.trunk.layer1[0].bn1, FrozenBatchNorm2d) == (freeze_at >= 2)
    assert isinstance(c4.head.layer4[0].bn1, FrozenBatchNorm2d) == (freeze_at >= 5)


def test_freeze_at_vgg_matches_paper_conv3_and_up():
    c4 = build_c4("vgg16")  # default freeze_at=2: conv1_x and conv2_x fixed, conv3_1 and up fine-tuned
    frozen = [n for n, p in c4.named_parameters() if not p.requires_grad]
    assert frozen == [f"trunk.{i}.{w}" for i in (0, 2, 5, 7) for w in ("weight", "bias")]


def test_freeze_at_out_of_range():
    with pytest.raises(ValueError, match="freeze_at=6"):
        build_c4("resnet18", freeze_at=6)


def test_frozen_bn_has_no_trainable_params_and_no_stat_updates():
    c4 = build_c4("resnet50", freeze_at=0)  # norm defaults to frozen_bn
    bns = [m for m in c4.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert bns and not any(isinstance(m, torch.nn.BatchNorm2d) for m in c4.modules())
    assert all(len(list(m.parameters())) == 0 for m in bns)
    before = {k: v.clone() for k, v in c4.state_dict().items() if "running" in k}
    c4.train()
    c4(torch.randn(2, 3, 64, 64) * 5 + 3).sum().backward()
    after = c4.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
