"""The ImageNet family's digits recipes (issue 16): `tools/pretrain.py --arch A --dataset digits` and
`tools/train_det.py --dataset digits --backbone A` pick configs/*/digits_<A>.yaml for every stride-16 backbone, and
those carry the recipe values the docs/DETECTION.md ablation chose (written out here, not read from the configs)."""
import pytest
import torch

from test_cli_defaults import IMAGENET_ARCHS, config_file, empty_cwd, print_config  # noqa: F401  (fixture)


@pytest.mark.parametrize("arch", IMAGENET_ARCHS)
def test_pretrain_digits_resolves_the_family_recipe(arch, empty_cwd):
    code, cfg, header, err = print_config("pretrain.py", "--arch", arch, "--dataset", "digits")
    assert code == 0, err
    assert config_file(header) == f"digits_{arch}.yaml"
    assert cfg["model"]["arch"] == arch and cfg["data"]["dataset"] == "digits"
    # 32 px: a res4 map of 2x2 per digit, as for a mid-size digit on the 128-px detection canvases (16 px gives 1x1);
    # painted on the detection canvases (a white-on-black classifier reads canvas crops at chance).
    assert (cfg["data"]["digits_size"], cfg["data"]["digits_background"]) == (32, "canvas")
    assert (cfg["solver"]["max_iter"], cfg["solver"]["steps"]) == (600, [300, 450])


@pytest.mark.parametrize("arch", IMAGENET_ARCHS)
def test_detect_digits_resolves_the_family_recipe(arch, empty_cwd):
    code, cfg, header, err = print_config("train_det.py", "--dataset", "digits", "--backbone", arch)
    assert code == 0, err
    assert config_file(header) == f"digits_{arch}.yaml"
    m, i = cfg["model"], cfg["input"]
    assert m["backbone"] == arch and cfg["data"]["dataset"] == "digits"
    assert (i["min_size_train"], i["max_size_train"], i["min_size_test"]) == ([128], 128, 128)
    assert m["anchor_sizes"] == [16, 32, 64]
    if arch == "vgg16":  # the paper's VGG-16 detector: RoIPool 7x7 -> fc6/fc7
        assert (m["roi_heads"]["pooler"], m["roi_heads"]["pooler_resolution"]) == ("pool", 7)
    else:
        assert m["roi_heads"]["pooler"] == "align"


def test_canvas_digits_look_like_detection_crops():
    from backbones.pretrain.datasets.digits import DigitsDataset

    black, canvas = DigitsDataset("val", 32), DigitsDataset("val", 32, background="canvas")
    assert canvas.images.shape == black.images.shape == (360, 3, 32, 32) and canvas.labels == black.labels
    # Black background: the corners are ~0. Canvas: textured colour, mean near 0.5, channels differ.
    assert black.images[:, :, 0, 0].abs().max() < 0.05
    assert 0.3 < canvas.images.mean() < 0.7 and (canvas.images[:, 0] - canvas.images[:, 1]).abs().mean() > 0.02
    assert torch.equal(canvas.images, DigitsDataset("val", 32, background="canvas").images)  # fixed per split
    assert not torch.equal(canvas.images[:10], DigitsDataset("train", 32, background="canvas").images[:10])
    with pytest.raises(ValueError, match="background must be one of"):
        DigitsDataset("val", 32, background="white")


def test_bad_digits_background_is_a_config_error(empty_cwd):
    code, _, _, err = print_config("pretrain.py", "--arch", "resnet18", "--dataset", "digits",
                                   "data.digits_background=grey")
    assert code == 2 and "data.digits_background" in err and "black, canvas" in err
