"""The ImageNet family's digits recipes (issue 16): `tools/pretrain.py --arch A --dataset digits` and
`tools/train_det.py --dataset digits --backbone A` pick configs/*/digits_<A>.yaml for every stride-16 backbone, and
those carry the recipe values the docs/DETECTION.md ablation chose (written out here, not read from the configs)."""
import pytest

from test_cli_defaults import IMAGENET_ARCHS, config_file, empty_cwd, print_config  # noqa: F401  (fixture)


@pytest.mark.parametrize("arch", IMAGENET_ARCHS)
def test_pretrain_digits_resolves_the_family_recipe(arch, empty_cwd):
    code, cfg, header, err = print_config("pretrain.py", "--arch", arch, "--dataset", "digits")
    assert code == 0, err
    assert config_file(header) == f"digits_{arch}.yaml"
    assert cfg["model"]["arch"] == arch and cfg["data"]["dataset"] == "digits"
    # 32 px: a res4 map of 2x2 per digit, as for a mid-size digit on the 128-px detection canvases (16 px gives 1x1).
    assert cfg["data"]["digits_size"] == 32
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
