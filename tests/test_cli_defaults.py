"""The two card commands and the tools' default rules, seen through ``--print-config`` (no data, no run folder).

Expected values come from the paper (reference: ImageNet §3.4, CIFAR-10 §4.2, COCO Appendix A, Tables 7/8), written
out here rather than read from the code under test.
"""
import io
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import yaml

from backbones.registry import list_backbones
from detection.paper_setups import DIGITS_BACKBONE
from fault_helpers import REPO, tool_module

# Paper: ImageNet for the Table 1/2 nets and VGG-16; CIFAR-10 for the 6n+2 nets of §4.2.
IMAGENET_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "plain18", "plain34", "vgg16")
CIFAR_ARCHS = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202",
               "plain20", "plain32", "plain44", "plain56", "plain110")
# Paper: ResNet-101 is the headline detector on VOC and COCO (Tables 7/8); digits is the CPU demo.
DETECTION_BACKBONES = {"voc07": "resnet101", "voc0712": "resnet101", "voc07++12": "resnet101", "coco": "resnet101",
                       "digits": DIGITS_BACKBONE}


def print_config(tool: str, *argv: str):
    """(exit code, parsed YAML from stdout, header line, stderr) of ``tool --print-config``."""
    module = tool_module(tool)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = module.main(module.get_args_parser().parse_args([*argv, "--print-config"]))
    text = out.getvalue()
    return code, (yaml.safe_load(text) if code == 0 else None), text.split("\n", 1)[0], err.getvalue()


def config_file(header: str) -> str:
    """The config file named in the ``# tool: defaults <- FILE <- ...`` header."""
    return Path(header.split(" <- ")[1]).name


@pytest.fixture
def empty_cwd(tmp_path, monkeypatch):
    """A working directory with no datasets; tests check that it stays empty (no run folder written)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RESDET_DATASETS", str(tmp_path / "nowhere"))
    yield tmp_path
    assert list(tmp_path.iterdir()) == []


def test_coco_card_command_is_the_papers_coco_setup(empty_cwd):
    code, cfg, header, err = print_config("train_det.py", "--dataset", "coco")
    assert code == 0, err
    assert config_file(header) == "coco_resnet101.yaml"
    m, s = cfg["model"], cfg["solver"]
    assert m["backbone"] == "resnet101"
    assert (m["freeze_at"], m["norm"], m["roi_heads"]["pooler"]) == (2, "frozen_bn", "align")  # C4, BN fixed
    assert m["anchor_sizes"] == [64, 128, 256, 512] and m["aspect_ratios"] == [0.5, 1.0, 2.0]
    assert s["ims_per_batch"] == 8
    assert s["max_iter"] == 240000 + 80000 and s["steps"] == [240000] and s["gamma"] == pytest.approx(0.1)
    assert s["base_lr"] == pytest.approx(0.001) and s["reference_batch"] == 8  # lr 0.001 at 8 images, not scaled
    assert cfg["data"]["train"] == ["coco_2014_train"] and cfg["data"]["test"] == "coco_2014_val"  # 80k / 40k
    assert cfg["input"]["min_size_train"] == [600] and cfg["input"]["min_size_test"] == 600


def test_imagenet_card_command_is_the_papers_recipe(empty_cwd):
    code, cfg, header, err = print_config("pretrain.py", "--arch", "resnet101")
    assert code == 0, err
    assert config_file(header) == "imagenet_resnet101.yaml"
    s = cfg["solver"]
    assert cfg["data"]["dataset"] == "imagenet" and cfg["model"]["arch"] == "resnet101"
    assert (s["batch_size"], s["reference_batch"]) == (256, 256)
    assert s["base_lr"] == pytest.approx(0.1) and s["momentum"] == pytest.approx(0.9)
    assert s["max_iter"] == 600000 and s["weight_decay"] == pytest.approx(1e-4) and s["gamma"] == pytest.approx(0.1)
    assert cfg["augment"]["scale"] == [256, 480] and cfg["augment"]["crop"] == 224
    assert cfg["eval"]["protocol"] == "10crop" and cfg["model"]["shortcut"] == "B"


def test_every_registered_arch_has_its_papers_dataset(empty_cwd):
    assert sorted(IMAGENET_ARCHS + CIFAR_ARCHS) == sorted(list_backbones()), "classify new backbones here"
    for arch in list_backbones():
        dataset = "imagenet" if arch in IMAGENET_ARCHS else "cifar10"
        code, cfg, header, err = print_config("pretrain.py", "--arch", arch)
        assert code == 0, (arch, err)
        assert cfg["data"]["dataset"] == dataset, arch
        own = REPO / "configs" / "pretrain" / f"{dataset}_{arch}.yaml"
        assert config_file(header) == (own.name if own.is_file() else f"{dataset}_base.yaml"), arch
        assert cfg["solver"]["batch_size"] == (256 if dataset == "imagenet" else 128), arch


def test_pretrain_explicit_dataset_and_overrides_win(empty_cwd):
    code, cfg, header, _ = print_config("pretrain.py", "--arch", "resnet20", "--dataset", "digits")
    assert code == 0 and cfg["data"]["dataset"] == "digits" and config_file(header) == "digits_resnet20.yaml"
    code, cfg, header, _ = print_config("pretrain.py", "model.arch=resnet56")  # an override picks the file too
    assert code == 0 and config_file(header) == "cifar10_resnet56.yaml" and cfg["data"]["dataset"] == "cifar10"
    code, cfg, _, _ = print_config("pretrain.py", "--arch", "resnet50", "--data-root", "/a", "data.root=/b",
                                   "solver.max_iter=7")
    assert code == 0 and cfg["data"]["root"] == "/b" and cfg["solver"]["max_iter"] == 7  # defaults<-file<-flags<-kv


def test_pretrain_print_config_rejects_bad_values(empty_cwd):
    code, _, _, err = print_config("pretrain.py", "--arch", "resnet101", "solver.momentum=1.5")
    assert code == 2 and "solver.momentum" in err
    code, _, _, err = print_config("pretrain.py", "--arch", "resnet1001")
    assert code == 2 and "resnet1001" in err


@pytest.mark.parametrize("dataset", sorted(DETECTION_BACKBONES))
def test_every_detection_dataset_has_its_headline_backbone(dataset, empty_cwd):
    backbone = DETECTION_BACKBONES[dataset]
    # Whatever other flags are present, the dataset's config is used (it once needed --backbone too).
    code, cfg, header, err = print_config("train_det.py", "--dataset", dataset, "--weights", "torchvision",
                                          "--data-root", "/data")
    assert code == 0, err
    assert cfg["model"]["backbone"] == backbone and cfg["data"]["dataset"] == dataset
    assert config_file(header) == f"{dataset}_{backbone}.yaml"
    assert cfg["model"]["weights"] == "torchvision" and cfg["data"]["root"] == "/data"


@pytest.mark.parametrize("dataset", sorted(DETECTION_BACKBONES))
def test_every_registered_backbone_resolves_its_detection_config(dataset, empty_cwd):
    for backbone in list_backbones():
        code, cfg, header, err = print_config("train_det.py", "--dataset", dataset, "--backbone", backbone)
        assert code == 0, (backbone, err)
        assert cfg["model"]["backbone"] == backbone and cfg["data"]["dataset"] == dataset
        own = REPO / "configs" / "detection" / f"{dataset}_{backbone}.yaml"
        assert config_file(header) == (own.name if own.is_file() else f"{dataset}_base.yaml"), backbone


@pytest.mark.parametrize("dataset", ["voc07", "voc0712", "coco"])
def test_vgg16_flag_gives_the_vgg_baseline(dataset, empty_cwd):
    code, cfg, header, _ = print_config("train_det.py", "--dataset", dataset, "--backbone", "vgg16")
    assert code == 0 and config_file(header) == f"{dataset}_vgg16.yaml"
    assert cfg["model"]["backbone"] == "vgg16" and cfg["model"]["roi_heads"]["pooler"] == "pool"  # RoIPool 7x7


def test_voc07_trains_on_2007_only_with_the_voc_schedule(empty_cwd):
    code, cfg, _, _ = print_config("train_det.py", "--dataset", "voc07")
    assert code == 0 and cfg["data"]["dataset"] == "voc07"
    s = cfg["solver"]
    assert (s["ims_per_batch"], s["max_iter"], s["steps"]) == (1, 80000, [60000])  # 60k at 0.001 + 20k at 0.0001


def test_det_defaults_and_overrides(empty_cwd):
    code, cfg, header, _ = print_config("train_det.py")  # no flags: the schema's dataset (digits) and its setup
    assert code == 0 and config_file(header) == f"digits_{DIGITS_BACKBONE}.yaml"
    code, cfg, header, _ = print_config("train_det.py", "data.dataset=coco")  # an override picks the file too
    assert code == 0 and config_file(header) == "coco_resnet101.yaml"
    code, cfg, header, _ = print_config("train_det.py", "--dataset", "voc0712", "model.backbone=vgg16",
                                        "solver.max_iter=10", "solver.steps=[5]")
    assert code == 0 and config_file(header) == "voc0712_vgg16.yaml" and cfg["solver"]["max_iter"] == 10
    code, cfg, header, _ = print_config("train_det.py", "--dataset", "coco_json", "--ann", "a.json", "--images", "i")
    assert code == 0 and "(no file)" in header and cfg["model"]["backbone"] == "resnet50"  # no paper setup
    code, _, _, err = print_config("train_det.py", "--dataset", "coco", "solver.base_lr=-1")
    assert code == 2 and "solver.base_lr" in err


@pytest.mark.parametrize("tool, argv, layout", [
    ("pretrain.py", ["--arch", "resnet101"], "datasets/imagenet/train/<wnid>/*.JPEG"),
    ("pretrain.py", ["--arch", "resnet110"], "datasets/cifar10/cifar-10-python.tar.gz"),
    ("train_det.py", ["--dataset", "coco"], "coco/annotations/instances_{train,val}2014.json"),
])
def test_card_commands_without_data_stop_with_the_expected_layout(tool, argv, layout, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RESDET_DATASETS", raising=False)
    module = tool_module(tool)
    err = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
        code = module.main(module.get_args_parser().parse_args([*argv, "train.device=cpu" if tool == "pretrain.py"
                                                                 else "device=cpu"]))
    assert code == 1 and layout in err.getvalue(), err.getvalue()


def _coco_annotations(root, *years):
    for year in years:
        ann = root / "coco" / "annotations" / f"instances_train{year}.json"
        ann.parent.mkdir(parents=True, exist_ok=True)
        ann.write_text("{}")


@pytest.mark.parametrize("on_disk,asked,year", [((), 0, 2014), ((2017,), 0, 2017), ((2014, 2017), 0, 2014),
                                                ((2014,), 2017, 2017), ((2017,), 2014, 2014)])
def test_coco_year_found_on_disk_or_asked_and_said_in_print_config(tmp_path, on_disk, asked, year):
    root = tmp_path / "data"
    _coco_annotations(root, *on_disk)
    code, cfg, _, err = print_config("train_det.py", "--dataset", "coco", "--data-root", str(root),
                                     f"data.coco_year={asked}")
    assert code == 0, err
    d = cfg["data"]
    assert (d["coco_year"], d["train"], d["test"]) == (year, [f"coco_{year}_train"], f"coco_{year}_val")


def test_explicit_coco_splits_win_over_the_year(tmp_path):
    from detection.config import load_det_config

    cfg = load_det_config(overrides=["data.dataset=coco", f"data.root={tmp_path}", "data.coco_year=2017",
                                     "data.train=[coco_2014_train,coco_2014_valminusminival]",
                                     "data.test=coco_2014_minival"])
    assert list(cfg.data.train) == ["coco_2014_train", "coco_2014_valminusminival"]
    assert cfg.data.test == "coco_2014_minival"
    with pytest.raises(Exception, match="data.coco_year"):
        load_det_config(overrides=["data.dataset=coco", "data.coco_year=2015"])
