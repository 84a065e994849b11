"""Weights sources: torchvision, timm and resdet checkpoints load with identical outputs and their metadata;
exact key accounting; offline errors name the file and folder. Fixtures are random models saved in tmp_path."""
import os
from pathlib import Path
from urllib.parse import urlparse

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file
from test_weights_fixtures import images, randomize_norms
from torchvision.models import get_model_weights

from backbones import build_backbone, build_c4
from backbones.weights import WeightsMismatchError, WeightsUnavailableError, parse_source
from backbones.weights.export import export_resdet
from backbones.weights.weight_files import WeightsFileError


def _tv_file_name(arch: str, tag: str) -> str:
    return os.path.basename(urlparse(get_model_weights(arch)[tag].url).path)


def _offline(monkeypatch):
    """Any download attempt fails as it would without a network (and never touches the network)."""
    def refuse(*args, **kwargs):
        raise OSError("network is unreachable")

    import huggingface_hub

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)


@pytest.fixture
def tv_resnet18(tmp_path):
    model = randomize_norms(torchvision.models.resnet18()).eval()
    path = tmp_path / "resnet18_tv.pth"
    torch.save(model.state_dict(), path)
    return model, path


def test_parse_source_grammar():
    assert parse_source("torchvision") == parse_source("torchvision:")
    assert parse_source("torchvision:IMAGENET1K_V2=/w/r50.pth").tag == "IMAGENET1K_V2"
    assert parse_source("torchvision=/w/r50.pth").path == "/w/r50.pth"
    assert parse_source("timm:resnet50.tv_in1k=/a/b=c.safetensors").path == "/a/b=c.safetensors"
    assert parse_source("msra:/w/R-50.pkl").kind == "msra"
    assert parse_source("runs/model_final.pth").kind == "resdet"
    assert parse_source(Path("x.pth")).path == "x.pth"
    with pytest.raises(ValueError, match="timm needs a tag"):
        parse_source("timm")


def test_torchvision_file_gives_identical_logits(tmp_path):
    reference = randomize_norms(torchvision.models.resnet50()).eval()
    path = tmp_path / "resnet50_tv.pth"
    torch.save(reference.state_dict(), path)
    model = build_backbone("resnet50", weights=f"torchvision={path}", stride_in_1x1=False).eval()
    x = images(64)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    meta = model.weights_meta
    assert (meta.pixel_format, meta.input_scale, meta.stride_in_1x1) == ("RGB", 1.0, False)
    assert meta.mean == pytest.approx((0.485, 0.456, 0.406)) and meta.std == pytest.approx((0.229, 0.224, 0.225))
    assert meta.num_classes == 1000 and meta.categories[0] == "tench"
    assert meta.source.startswith("torchvision:IMAGENET1K_V2=")
    with pytest.raises(ValueError, match="stride_in_1x1=True contradicts"):
        build_backbone("resnet50", weights=f"torchvision={path}", stride_in_1x1=True)


def test_torchvision_source_reads_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    _offline(monkeypatch)
    reference = randomize_norms(torchvision.models.resnet18()).eval()
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / _tv_file_name("resnet18", "IMAGENET1K_V1"))
    model = build_backbone("resnet18", weights="torchvision:IMAGENET1K_V1").eval()
    x = images(32)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    assert model.weights_meta.source == "torchvision:IMAGENET1K_V1"
    assert model.weights_meta.stride_in_1x1 is None  # basic blocks have no stride placement to choose


def test_missing_torchvision_cache_file_names_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    _offline(monkeypatch)
    with pytest.raises(WeightsUnavailableError) as info:
        build_backbone("resnet50", weights="torchvision")  # DEFAULT = IMAGENET1K_V2
    message = str(info.value)
    assert _tv_file_name("resnet50", "IMAGENET1K_V2") in message
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in message


def test_unknown_torchvision_tag_lists_choices():
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        build_backbone("resnet50", weights="torchvision:IMAGENET1K_V9")


def test_timm_state_dict_gives_identical_logits(tmp_path):
    reference = randomize_norms(timm.create_model("resnet50")).eval()
    path = tmp_path / "model.safetensors"
    save_file(reference.state_dict(), str(path))
    model = build_backbone("resnet50", weights=f"timm:resnet50.tv_in1k={path}", stride_in_1x1=False).eval()
    x = images(64)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    cfg = timm.models.get_pretrained_cfg("resnet50.tv_in1k")
    meta = model.weights_meta
    assert meta.mean == pytest.approx(cfg.mean) and meta.std == pytest.approx(cfg.std)
    assert (meta.pixel_format, meta.stride_in_1x1, meta.num_classes) == ("RGB", False, 1000)


def test_timm_reads_the_hugging_face_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    _offline(monkeypatch)
    reference = randomize_norms(timm.create_model("resnet18")).eval()
    repo = tmp_path / "hf" / "models--timm--resnet18.tv_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    save_file(reference.state_dict(), str(repo / "snapshots" / "0123abcd" / "model.safetensors"))
    model = build_backbone("resnet18", weights="timm:resnet18.tv_in1k").eval()
    x = images(32)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_timm_offline_error_names_files_and_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    _offline(monkeypatch)
    with pytest.raises(WeightsUnavailableError) as info:
        build_backbone("resnet18", weights="timm:resnet18.tv_in1k")
    message = str(info.value)
    assert "model.safetensors" in message and "timm/resnet18.tv_in1k" in message
    assert str(tmp_path / "hf") in message and str(tmp_path / "torch" / "hub" / "checkpoints") in message
    assert "timm:resnet18.tv_in1k=/path/to/file" in message


def test_timm_tag_for_another_arch_is_refused():
    with pytest.raises(ValueError, match="not 'resnet101'"):
        build_backbone("resnet101", weights="timm:resnet50.tv_in1k=/nonexistent")


def test_num_classes_change_replaces_exactly_the_classifier(tv_resnet18):
    source, path = tv_resnet18
    model = build_backbone("resnet18", weights=f"torchvision={path}", num_classes=7).eval()
    loaded = model.state_dict()
    for key, value in source.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(loaded[key], value), key
    assert model.fc.out_features == 7
    meta = model.weights_meta
    assert meta.num_classes == 7 and meta.categories is None and meta.extra["classifier_from_weights"] is False


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    state = torchvision.models.resnet18().state_dict()
    state.pop("layer2.1.conv2.weight")
    state["layer9.0.conv1.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(WeightsMismatchError) as info:
        build_backbone("resnet18", weights=f"torchvision={path}")
    assert "layer2.1.conv2.weight" in str(info.value) and "layer9.0.conv1.weight" in str(info.value)


def test_resdet_checkpoint_round_trip(tmp_path):
    source = randomize_norms(build_backbone("resnet20", shortcut="B", num_classes=10)).eval()
    path = export_resdet(source, tmp_path / "r20.pth")
    model = build_backbone("resnet20", weights=str(path)).eval()  # shortcut "B" and 10 classes read from the weights
    assert model.shortcut == "B" and model.fc.out_features == 10
    x = images(32)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))
    assert model.weights_meta.to_dict() == {**source.weights_meta.to_dict(), "extra": {"classifier_from_weights": True}}
    with pytest.raises(ValueError, match="holds 'resnet20' weights, not 'resnet32'"):
        build_backbone("resnet32", weights=str(path))


def test_foreign_file_as_resdet_checkpoint_points_to_the_other_sources(tv_resnet18):
    _, path = tv_resnet18
    with pytest.raises(WeightsFileError, match="torchvision:<TAG>=<file>"):
        build_backbone("resnet18", weights=str(path))


def test_build_c4_with_weights_matches_the_source_trunk(tv_resnet18):
    reference, path = tv_resnet18
    c4 = build_c4("resnet18", weights=f"torchvision={path}").eval()
    x = images(64)
    with torch.no_grad():
        expected = reference.layer3(reference.layer2(reference.layer1(
            reference.maxpool(reference.relu(reference.bn1(reference.conv1(x)))))))
        # FrozenBN folds scale and shift before multiplying, BN after: equal up to float rounding.
        torch.testing.assert_close(c4(x), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    assert c4.weights_meta.pixel_format == "RGB" and c4.weights_meta.source.startswith("torchvision:")
