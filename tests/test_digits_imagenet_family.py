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
    # A 12-40 px digit anywhere on a 48-px patch of canvas texture: classifiers of digits that fill the image read
    # a digit surrounded by texture at chance, so their features cannot transfer to detection RoIs.
    d, s = cfg["data"], cfg["solver"]
    assert (d["digits_size"], d["digits_background"], d["digits_heights"]) == (48, "context", [12, 40])
    assert (s["base_lr"], s["batch_size"], s["max_iter"], s["steps"]) == (0.04, 64, 1500, [1000, 1300])


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
    else:  # 4x4 -> res5 2x2, the res5 map of a 48-px pretraining image
        assert (m["roi_heads"]["pooler"], m["roi_heads"]["pooler_resolution"]) == ("align", 4)
    assert (cfg["solver"]["max_iter"], cfg["solver"]["steps"], cfg["solver"]["base_lr"]) == (600, [450], 0.02)


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
    assert code == 2 and "data.digits_background" in err and "black, canvas, context" in err


def test_context_digits_are_redrawn_for_every_training_draw():
    from backbones.pretrain.datasets.digits import DigitsDataset
    from backbones.pretrain.sampler import AugmentedDataset

    train = DigitsDataset("train", 48, background="context", heights=(12, 40))
    identity = lambda image, generator: image  # noqa: E731
    items = AugmentedDataset(train, identity, seed=0)
    a, label = items[(0, 5)]
    assert a.shape == (3, 48, 48) and label == train.labels[5]
    assert torch.equal(a, items[(0, 5)][0])  # the same (epoch, index) draws the same image (resume is exact)
    assert not torch.equal(a, items[(1, 5)][0])  # a new epoch draws a new texture, size and place
    # Validation is drawn once, the same in every construction; ink anywhere, not only at the centre.
    val = DigitsDataset("val", 48, background="context", heights=(12, 40))
    assert val.images.shape == (360, 3, 48, 48)
    assert torch.equal(val.images, DigitsDataset("val", 48, background="context", heights=(12, 40)).images)
    with pytest.raises(ValueError, match="heights"):
        DigitsDataset("val", 32, background="context", heights=(12, 40))


def test_context_digits_heights_must_fit_the_image(empty_cwd):
    code, _, _, err = print_config("pretrain.py", "--arch", "resnet18", "--dataset", "digits",
                                   "data.digits_background=context", "data.digits_size=32",
                                   "data.digits_heights=[12, 40]")
    assert code == 2 and "data.digits_heights" in err and "<= data.digits_size (32)" in err
