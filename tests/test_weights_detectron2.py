"""detectron2 format: export layout detectron2's checkpointer reads, exact round trip, detectron2-named fixtures
(backbone files, detector checkpoints, detectron2's torchvision converter output) load with the source's outputs."""
import pickle

import numpy as np
import pytest
import torch
from test_weights_fixtures import convert_weights_main, images, randomize_norms

from backbones import build_backbone, build_c4
from backbones.weights.detectron2_format import UnknownKeysError
from backbones.weights.export import export_resdet

convert = convert_weights_main()
R50_BLOCKS = (3, 4, 6, 3)


def _source_resnet50():
    """A resdet ResNet-50 in the paper/MSRA layout (stride in the 1×1) with non-trivial BN statistics."""
    return randomize_norms(build_backbone("resnet50", stride_in_1x1=True)).eval()


def _detectron2_names_by_hand(state_dict):
    """detectron2 names written the way detectron2's own torchvision converter spells them (independent of resdet)."""
    out = {}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        name = key if key.startswith("layer") else "stem." + key
        for t in (1, 2, 3, 4):
            name = name.replace(f"layer{t}", f"res{t + 1}")
        for t in (1, 2, 3):
            name = name.replace(f"bn{t}", f"conv{t}.norm")
        name = name.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
        name = name.replace("stem.fc.", "linear.")
        out[name] = value.numpy()
    return out


def _expected_detectron2_r50_names():
    """Parameter names of detectron2's ResNet-50 (FrozenBN) with a ``linear`` classifier."""
    norm = ("weight", "bias", "running_mean", "running_var")
    names = {"stem.conv1.weight", "linear.weight", "linear.bias"} | {f"stem.conv1.norm.{f}" for f in norm}
    for stage, blocks in zip(range(2, 6), R50_BLOCKS):
        for block in range(blocks):
            convs = ["conv1", "conv2", "conv3"] + (["shortcut"] if block == 0 else [])
            for conv in convs:
                names.add(f"res{stage}.{block}.{conv}.weight")
                names |= {f"res{stage}.{block}.{conv}.norm.{f}" for f in norm}
    return names


def _write_pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    return path


def test_resdet_detectron2_resdet_round_trip_is_exact_and_detectron2_readable(tmp_path):
    source = _source_resnet50()
    export_resdet(source, tmp_path / "a.pth")
    common = ["--arch", "resnet50"]
    assert convert([str(tmp_path / "a.pth"), str(tmp_path / "b.pkl"), "--from", "resdet", "--to", "detectron2"]
                   + common) == 0
    with open(tmp_path / "b.pkl", "rb") as f:
        data = pickle.load(f, encoding="latin1")  # exactly how detectron2's checkpointer opens .pkl files
    assert data["__author__"] == "resdet" and data["matching_heuristics"] is True
    assert set(data["model"]) == _expected_detectron2_r50_names()
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in data["model"].values())
    np.testing.assert_array_equal(data["model"]["res3.0.conv1.weight"], source.layer2[0].conv1.weight.detach().numpy())

    assert convert([str(tmp_path / "b.pkl"), str(tmp_path / "c.pth"), "--from", "detectron2", "--to", "resdet"]
                   + common) == 0
    back = build_backbone("resnet50", weights=str(tmp_path / "c.pth"))
    original = source.state_dict()
    restored = back.state_dict()
    for key, value in original.items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(restored[key], value), key
    assert back.weights_meta.to_dict() == {**source.weights_meta.to_dict(), "extra": {"classifier_from_weights": True}}


def test_detectron2_backbone_file_and_detector_checkpoint_give_the_source_outputs(tmp_path):
    source = _source_resnet50()
    named = _detectron2_names_by_hand(source.state_dict())
    path = _write_pickle(tmp_path / "d2.pkl", {"model": named, "__author__": "Detectron2 Model Zoo"})
    model = build_backbone("resnet50", weights=f"detectron2:{path}").eval()
    x = images(32)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))
    meta = model.weights_meta
    assert (meta.stride_in_1x1, meta.pixel_format, meta.input_scale, meta.std) == (True, "BGR", 255.0, (1.0, 1.0, 1.0))
    assert meta.mean == pytest.approx((103.530, 116.280, 123.675))  # detectron2's default PIXEL_MEAN

    # A C4 detector checkpoint: trunk under "backbone.", res5 under "roi_heads.", heads to drop, no classifier.
    detector = {("roi_heads." if k.startswith("res5.") else "backbone.") + k: torch.from_numpy(v)
                for k, v in named.items() if not k.startswith("linear.")}
    detector["proposal_generator.rpn_head.conv.weight"] = torch.zeros(8, 8, 3, 3)
    detector["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(81, 8)
    path = tmp_path / "model_final.pth"
    torch.save({"model": detector, "iteration": 90000}, path)
    c4 = build_c4("resnet50", weights=f"detectron2:{path}").eval()
    with torch.no_grad():
        s = source
        expected = s.layer3(s.layer2(s.layer1(s.maxpool(s.relu(s.bn1(s.conv1(x)))))))
        torch.testing.assert_close(c4(x), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    assert torch.equal(c4.head.layer4[0].conv1.weight, s.layer4[0].conv1.weight)
    assert c4.weights_meta.extra["dropped_detector_keys"] == 2
    assert c4.weights_meta.extra["classifier_from_weights"] is False


def test_detectron2_torchvision_converter_output_keeps_the_torchvision_convention(tmp_path):
    import torchvision

    source = randomize_norms(torchvision.models.resnet50()).eval()
    # detectron2's converter files the classifier under "stem.fc"
    named = {k.replace("linear.", "stem.fc."): v for k, v in _detectron2_names_by_hand(source.state_dict()).items()}
    path = _write_pickle(tmp_path / "r50_tv.pkl", {"model": named, "__author__": "torchvision",
                                                    "matching_heuristics": True})
    model = build_backbone("resnet50", weights=f"detectron2:{path}").eval()
    x = images(32)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))
    assert (model.weights_meta.stride_in_1x1, model.weights_meta.pixel_format) == (False, "RGB")


def test_unknown_detectron2_key_is_listed_with_a_hint(tmp_path):
    named = _detectron2_names_by_hand(build_backbone("resnet18").state_dict())
    named["res2.0.conv1.bias"] = np.zeros(64, np.float32)
    path = _write_pickle(tmp_path / "odd.pkl", {"model": named, "__author__": "x"})
    with pytest.raises(UnknownKeysError, match=r"res2\.0\.conv1\.bias.*msra:"):
        build_backbone("resnet18", weights=f"detectron2:{path}")
