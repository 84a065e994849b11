"""Backbone registry: shapes, torchvision parity, shortcut options, paper complexity (Table 1)."""
import pytest
import torch
import torchvision

from backbones import build_backbone, list_backbones
from backbones.complexity import count_multiply_adds, count_params
from backbones.registry import get_spec

IMAGENET = list_backbones("imagenet_resnet") + list_backbones("vgg")
CIFAR = list_backbones("cifar_resnet")


def test_registered_names_are_the_papers():
    expected = {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "plain18", "plain34", "vgg16",
                "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202",
                "plain20", "plain32", "plain44", "plain56", "plain110"}
    assert set(list_backbones()) == expected


@pytest.mark.parametrize("name", list_backbones())
def test_forward_backward_shapes(name):
    model = build_backbone(name, num_classes=7)
    size = 32
    x = torch.randn(2, 3, size, size)
    logits = model(x)
    assert logits.shape == (2, 7)
    logits.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "vgg16"])
def test_torchvision_parity(name):
    reference = getattr(torchvision.models, name)().eval()
    kwargs = {} if name == "vgg16" else {"stride_in_1x1": False}
    model = build_backbone(name, **kwargs).eval()
    model.load_state_dict(reference.state_dict())  # strict: identical names and shapes
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_stride_in_1x1_moves_the_stride():
    paper = build_backbone("resnet50")
    v15 = build_backbone("resnet50", stride_in_1x1=False)
    assert paper.layer2[0].conv1.stride == (2, 2) and paper.layer2[0].conv2.stride == (1, 1)
    assert v15.layer2[0].conv1.stride == (1, 1) and v15.layer2[0].conv2.stride == (2, 2)


def _projection_params(model):
    return sum(p.numel() for n, p in model.named_parameters() if ".downsample." in n)


@pytest.mark.parametrize("name,plain", [("resnet34", "plain34"), ("resnet18", "plain18"), ("resnet56", "plain56")])
def test_option_a_is_parameter_free_and_equals_plain(name, plain):
    a = build_backbone(name, shortcut="A")
    assert _projection_params(a) == 0
    assert count_params(a) == count_params(build_backbone(plain))


def test_option_b_and_c_projections():
    a, b, c = (build_backbone("resnet34", shortcut=s) for s in "ABC")
    # B projects only where the shape changes: first block of layer2..4 (34-layer: 64→128, 128→256, 256→512).
    assert _projection_params(b) == 64 * 128 + 128 * 2 + 128 * 256 + 256 * 2 + 256 * 512 + 512 * 2
    blocks = [blk for layer in (c.layer1, c.layer2, c.layer3, c.layer4) for blk in layer]
    expected_c = sum(blk.conv1.in_channels * blk.conv2.out_channels + 2 * blk.conv2.out_channels for blk in blocks)
    assert _projection_params(c) == expected_c
    assert count_params(c) == count_params(a) + expected_c


def test_option_a_zero_pads_channels():
    model = build_backbone("resnet20", shortcut="A").eval()
    shortcut = model.layer2[0].downsample
    x = torch.randn(1, 16, 8, 8)
    y = shortcut(x)
    assert y.shape == (1, 32, 4, 4)
    assert torch.equal(y[:, :16], x[:, :, ::2, ::2]) and not y[:, 16:].any()


def test_zero_init_residual():
    model = build_backbone("resnet50", zero_init_residual=True)
    assert all(not blk.bn3.weight.any() for layer in (model.layer1, model.layer4) for blk in layer)
    assert model.bn1.weight.all()


def test_he_initialisation_std():
    conv = build_backbone("resnet18").layer3[0].conv2  # 3x3, 256 → 256, fan_out = 9 * 256
    expected = (2.0 / (9 * 256)) ** 0.5
    assert abs(conv.weight.std().item() - expected) / expected < 0.05


@pytest.mark.parametrize("norm,cls", [("bn", torch.nn.BatchNorm2d), ("sync_bn", torch.nn.SyncBatchNorm),
                                      ("frozen_bn", torchvision.ops.FrozenBatchNorm2d)])
def test_norm_choice(norm, cls):
    model = build_backbone("resnet18", norm=norm)
    assert isinstance(model.bn1, cls) and isinstance(model.layer3[1].bn2, cls)


def test_bad_arguments_are_named():
    with pytest.raises(KeyError, match="resnet50"):
        build_backbone("resnet5O")
    with pytest.raises(TypeError, match="widht"):
        build_backbone("resnet18", widht=2)
    with pytest.raises(ValueError, match="shortcut"):
        build_backbone("resnet18", shortcut="D")
    with pytest.raises(ValueError, match="norm"):
        build_backbone("resnet18", norm="gn")


PAPER_GMACS = {"resnet18": 1.8, "resnet34": 3.6, "resnet50": 3.8, "resnet101": 7.6, "resnet152": 11.3, "vgg16": 15.3}


@pytest.mark.parametrize("name", list(PAPER_GMACS))
def test_multiply_adds_match_paper_table1(name):
    macs = count_multiply_adds(build_backbone(name), (1, 3, 224, 224)) / 1e9
    assert abs(macs - PAPER_GMACS[name]) / PAPER_GMACS[name] < 0.03, macs


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnet152", "vgg16"])
def test_params_equal_torchvision(name):
    assert count_params(build_backbone(name)) == count_params(getattr(torchvision.models, name)())


def test_families():
    assert get_spec("resnet56").family == "cifar_resnet"
    assert get_spec("vgg16").family == "vgg"
    assert len(CIFAR) == 11 and len(IMAGENET) == 8
