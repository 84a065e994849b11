"""The ImageNet family's digits recipes (issue 16): `tools/pretrain.py --arch A --dataset digits` and
`tools/train_det.py --dataset digits --backbone A` pick configs/*/digits_<A>.yaml for every stride-16 backbone, and
those carry the recipe values the docs/DETECTION.md ablation chose (written out here, not read from the configs)."""
import pytest
import torch

from test_cli_defaults import IMAGENET_ARCHS, config_file, empty_cwd, print_config  # noqa: F401  (fixture)

# The nets of 50+ layers and VGG-16 run at quarter width on digits to fit a CPU session; pretraining and detection
# recipes must agree, or the detector cannot load its pretrained weights. The same nets ease in with a curriculum.
QUARTER_WIDTH = {"resnet50", "resnet101", "resnet152", "vgg16"}


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
    # resnet101/152 at the family's lr fall back to chance when the curriculum ends, and VGG-16 (no BN) can die in
    # its first 100 iterations; half the rate (VGG-16 warmed up) carries them.
    base_lr = 0.02 if arch in ("resnet101", "resnet152", "vgg16") else 0.04
    assert s["warmup_iters"] == (100 if arch == "vgg16" else 0)
    # The quarter-width bottleneck nets learn slower: resnet50 twice the iterations, resnet101/152 more than three
    # times (resnet101 val error 41 % after 1500, 16 % after 3000, 7 % after 5000).
    schedule = {"resnet50": (3000, [2000, 2600]), "resnet101": (5000, [3500, 4400]),
                "resnet152": (5000, [3500, 4400])}.get(arch, (1500, [1000, 1300]))
    assert (s["base_lr"], s["batch_size"], s["max_iter"], s["steps"]) == (base_lr, 64, *schedule)
    assert cfg["model"]["width_mult"] == (0.25 if arch in QUARTER_WIDTH else 1.0)
    # plain34 (no shortcuts) stays at chance without the curriculum, as the quarter-width deep nets do
    assert d["digits_curriculum_epochs"] == (15 if arch in QUARTER_WIDTH | {"plain34"} else 0)


@pytest.mark.parametrize("arch", IMAGENET_ARCHS)
def test_detect_digits_resolves_the_family_recipe(arch, empty_cwd):
    code, cfg, header, err = print_config("train_det.py", "--dataset", "digits", "--backbone", arch)
    assert code == 0, err
    assert config_file(header) == f"digits_{arch}.yaml"
    m, i = cfg["model"], cfg["input"]
    assert m["backbone"] == arch and cfg["data"]["dataset"] == "digits"
    assert (i["min_size_train"], i["max_size_train"], i["min_size_test"]) == ([128], 128, 128)
    assert m["anchor_sizes"] == [16, 32, 64]
    assert m["width_mult"] == (0.25 if arch in QUARTER_WIDTH else 1.0)
    if arch == "vgg16":  # RoIAlign 7x7 -> fc6/fc7 (RoIPool misplaces RoIs of 1-2 cells); conv5_3 rescaled for the RPN
        assert (m["roi_heads"]["pooler"], m["roi_heads"]["pooler_resolution"]) == ("align", 7)
    else:  # 4x4 -> res5 2x2, the res5 map of a 48-px pretraining image
        assert (m["roi_heads"]["pooler"], m["roi_heads"]["pooler_resolution"]) == ("align", 4)
    assert m["trunk_output_rms"] == (1.0 if arch == "vgg16" else 0.0)
    # resnet101 AP50 57.2 after 1200 iterations, 77.4 after 2000; VGG-16 shares the schedule (Table 7's two arms)
    # resnet34 AP50 26.2 after 600 iterations, 73.0 after 1200; plain18 63.4 and 84.4
    schedule = {"resnet50": (1200, [900]), "resnet34": (1200, [900]), "plain18": (1200, [900]),
                "plain34": (2400, [1800])}.get(
        arch, (2000, [1500]) if arch in QUARTER_WIDTH else (600, [450]))
    base_lr = 0.01 if arch == "vgg16" else 0.02  # VGG-16's box classifier (no normalisation) collapses at 0.02
    assert (cfg["solver"]["max_iter"], cfg["solver"]["steps"], cfg["solver"]["base_lr"]) == (*schedule, base_lr)
    # plain34 only: statistics measured at 128 px and trunk + box head held while the new layers learn
    plain34 = arch == "plain34"
    assert (m["bn_restats_images"], cfg["solver"]["freeze_pretrained_iters"]) == ((64, 300) if plain34 else (0, 0))


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


def test_curriculum_eases_in_and_then_draws_the_full_task():
    from backbones.pretrain.datasets.digits import DigitsDataset
    from backbones.utils.rng import generator_for

    plain = DigitsDataset("train", 48, background="context", heights=(12, 40))
    eased = DigitsDataset("train", 48, background="context", heights=(12, 40), curriculum_epochs=10)
    first, _ = eased.sample(3, generator_for(0, 0, 3), epoch=0)
    # Epoch 0: a 40-px digit on black, so most pixels are dark and the ink covers a large area.
    assert (first.amax(0) < 0.05).float().mean() > 0.3
    assert (first.amax(0) > 0.5).float().mean() > 0.15
    middle, _ = eased.sample(3, generator_for(0, 5, 3), epoch=5)
    assert 0.1 < middle.mean() < first.mean() + 0.4  # texture at half strength
    # From the last curriculum epoch on, the drawing is exactly the un-eased one.
    for epoch in (10, 11):
        a, _ = eased.sample(3, generator_for(0, epoch, 3), epoch=epoch)
        b, _ = plain.sample(3, generator_for(0, epoch, 3), epoch=epoch)
        assert torch.equal(a, b)
    assert torch.equal(DigitsDataset("val", 48, background="context", curriculum_epochs=10).images[:5],
                       DigitsDataset("val", 48, background="context").images[:5])


def test_train_sizes_cycle_by_epoch_and_validation_keeps_one_size():
    from backbones.pretrain.datasets.digits import DigitsDataset
    from backbones.pretrain.sampler import AugmentedDataset

    train = DigitsDataset("train", 48, background="context", heights=(12, 40), train_sizes=(48, 64))
    items = AugmentedDataset(train, lambda image, generator: image, seed=0)
    # Every item of an epoch has that epoch's size, so a batch never mixes sizes.
    assert {items[(0, i)][0].shape for i in range(8)} == {(3, 48, 48)}
    assert {items[(1, i)][0].shape for i in range(8)} == {(3, 64, 64)}
    assert items[(2, 3)][0].shape == (3, 48, 48) and torch.equal(items[(1, 3)][0], items[(1, 3)][0])
    val = DigitsDataset("val", 48, background="context", heights=(12, 40), train_sizes=(48, 64))
    assert val.images.shape == (360, 3, 48, 48)
    with pytest.raises(ValueError, match="smallest size"):
        DigitsDataset("train", 48, background="context", heights=(12, 40), train_sizes=(32, 48))


@pytest.mark.parametrize("value,expected", [("[32, 48]", "data.digits_heights"), ("[4, 48]", "integers >= 8"),
                                            ("64", "expects list")])
def test_bad_train_sizes_are_config_errors(value, expected, empty_cwd):
    code, _, _, err = print_config("pretrain.py", "--arch", "resnet18", "--dataset", "digits",
                                   f"data.digits_train_sizes={value}")
    assert code == 2 and expected in err, err
