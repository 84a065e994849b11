"""tools/convert_weights.py and the exporters: safetensors metadata, hub tags, no fake classifiers, clear errors."""
import json
import os
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
import torchvision
from safetensors import safe_open
from test_weights_fixtures import convert_weights_main, images, randomize_norms
from torchvision.models import get_model_weights

from backbones import build_backbone
from backbones.weights import load_pickle
from backbones.weights.export import export_detectron2, export_safetensors

convert = convert_weights_main()


def test_torchvision_tag_to_safetensors_and_back(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    reference = randomize_norms(torchvision.models.resnet18()).eval()
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    cache.mkdir(parents=True)
    url = get_model_weights("resnet18")["IMAGENET1K_V1"].url
    torch.save(reference.state_dict(), cache / os.path.basename(urlparse(url).path))
    dst = tmp_path / "r18.safetensors"
    assert convert(["IMAGENET1K_V1", str(dst), "--from", "torchvision", "--to", "safetensors", "--arch", "resnet18"]) == 0
    with safe_open(str(dst), framework="pt") as f:
        header = f.metadata()
    assert header["format"] == "resdet" and header["arch"] == "resnet18"
    meta = json.loads(header["weights_meta"])
    assert meta["source"] == "torchvision:IMAGENET1K_V1" and meta["pixel_format"] == "RGB"
    model = build_backbone("resnet18", weights=str(dst)).eval()
    x = images(32)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    assert len(model.weights_meta.categories) == 1000


def test_backbone_only_weights_are_exported_without_a_classifier(tmp_path):
    source = randomize_norms(build_backbone("resnet18")).eval()
    d2 = export_detectron2(source, tmp_path / "full.pkl")
    c4_like = tmp_path / "trunk.pth"  # a detectron2 file without the classifier, as backbone files are
    data = load_pickle(d2)
    del data["model"]["linear.weight"], data["model"]["linear.bias"], data["resdet_weights_meta"]
    torch.save({k: torch.from_numpy(v) for k, v in data["model"].items()}, c4_like)
    model = build_backbone("resnet18", weights=f"detectron2:{c4_like}")
    assert model.weights_meta.extra["classifier_from_weights"] is False
    out = export_safetensors(model, tmp_path / "trunk.safetensors")
    with safe_open(str(out), framework="pt") as f:
        assert "fc.weight" not in f.keys() and "layer4.1.bn2.running_var" in f.keys()
    again = build_backbone("resnet18", weights=str(out), num_classes=5)
    assert torch.equal(again.layer4[1].conv2.weight, source.layer4[1].conv2.weight)


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    assert convert([str(tmp_path / "missing.pkl"), str(tmp_path / "o.pth"), "--from", "msra", "--to", "resdet",
                    "--arch", "resnet50"]) == 1
    assert "missing.pkl does not exist" in capsys.readouterr().err
    with pytest.raises(ValueError, match="must end in .pkl"):
        export_detectron2(build_backbone("resnet18"), tmp_path / "r18.pth")
