"""Whole C4 detectors across the detectron2 boundary, without detectron2 itself (tests/test_detectron2_parity.py
runs the same files through real detectron2 where it is importable).

detectron2-format files are written from the key names and shapes of its real R50-C4/R101-C4 models
(tests/data/detectron2_keys, dumped from detectron2@02b5c4e)."""
import functools
import math
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

from backbones.utils.checkpoint import load_checkpoint, save_checkpoint
from backbones.weights.safe_pickle import UnsafePickleError
from detection.config import load_det_config
from detection.data.class_lists import class_list
from detection.model.detector import build_detector
from detection.model.detectron2_detector import (PRESET, DetectorFormatError, convert_detectron2_detector,
                                                 export_detectron2_detector)
from detection.model.detectron2_semantics import (Detectron2AnchorGenerator, Detectron2Transform,
                                                  detectron2_resized_shape)
from detection.model.init_detector import architecture_overrides, detector_for_finetuning
from detection.model.io import load_detector, save_detector

from fault_helpers import one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
KEYS = ROOT / "tests" / "data" / "detectron2_keys"
sys.path.insert(0, str(ROOT / "tools"))
import convert_weights  # noqa: E402

SMALL = ["input.min_size_test=96", "input.max_size_test=128", "model.rpn.pre_nms_top_n_test=300",
         "model.rpn.post_nms_top_n_test=50"]


def d2_keys(name):
    rows = [line.split("\t") for line in (KEYS / f"{name}.tsv").read_text().splitlines()]
    return [(k, tuple(int(d) for d in shape.strip("()").split(",") if d.strip())) for k, shape, _ in rows]


def fake_d2_state(name="faster_rcnn_R_50_C4", seed=0):
    """A fresh dict (shared, read-only arrays) in detectron2's names and shapes."""
    return dict(_fake_d2_state(name, seed))


@functools.lru_cache(maxsize=2)
def _fake_d2_state(name, seed):
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in d2_keys(name):
        if key.endswith("running_var"):
            state[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        else:
            state[key] = (rng.standard_normal(shape) * 0.02).astype(np.float32)
    state["roi_heads.box_predictor.cls_score.bias"][:3] += 4.0  # fire on three classes
    return state


def write_pkl(path, state, **top):
    path.write_bytes(pickle.dumps({"model": state, "__author__": "test", **top}, protocol=4))
    return path


@pytest.fixture(scope="module")
def r50_pkl(tmp_path_factory):
    return write_pkl(tmp_path_factory.mktemp("d2") / "r50.pkl", fake_d2_state())


def image(seed=0, h=96, w=128):
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))


def detect(model, img):
    with torch.no_grad():
        return model.eval()([img])[0]


@pytest.mark.parametrize("name,arch", [("faster_rcnn_R_50_C4", "resnet50"), ("faster_rcnn_R_101_C4", "resnet101")])
def test_real_key_lists_convert_with_every_key_consumed(tmp_path, name, arch):
    state = fake_d2_state(name)
    file, summary = convert_detectron2_detector(write_pkl(tmp_path / "m.pkl", state), arch, class_list("coco"))
    assert summary["source_keys"] == len(state) == len(file["model"])
    ours = file["model"]
    # background last in detectron2, first in resdet; class c of detectron2 is label c + 1
    cls = state["roi_heads.box_predictor.cls_score.weight"]
    assert torch.equal(ours["roi_heads.box_predictor.cls_score.weight"][0], torch.from_numpy(cls[80]))
    assert torch.equal(ours["roi_heads.box_predictor.cls_score.weight"][1:], torch.from_numpy(cls[:80]))
    box = state["roi_heads.box_predictor.bbox_pred.weight"]
    assert torch.equal(ours["roi_heads.box_predictor.bbox_pred.weight"][4:], torch.from_numpy(box))
    assert torch.equal(ours["backbone.layer3.0.downsample.1.running_var"],
                       torch.from_numpy(state["backbone.res4.0.shortcut.norm.running_var"]))
    assert torch.equal(ours["roi_heads.box_head.layer4.2.conv3.weight"],
                       torch.from_numpy(state["roi_heads.res5.2.conv3.weight"]))
    assert torch.equal(ours["rpn.head.conv.0.0.weight"],
                       torch.from_numpy(state["proposal_generator.rpn_head.conv.weight"]))
    cfg = file["config"]
    assert cfg["model"]["conventions"] == "detectron2" and cfg["data"]["dataset"] == "coco"
    assert file["weights_meta"]["pixel_format"] == "BGR" and file["weights_meta"]["stride_in_1x1"] is True


def test_converted_file_is_a_model_final_that_infer_loads(tmp_path, r50_pkl):
    dst = tmp_path / "r50_c4.pth"
    assert convert_weights.main([str(r50_pkl), str(dst), "--from", "detectron2", "--to", "resdet", "--arch",
                                 "resnet50", "--detector", "--classes", "coco", *SMALL]) == 0
    model, cfg, categories = load_detector(dst)
    assert categories[0] == {"id": 1, "name": "person"} and len(categories) == 80
    assert model.transform.weights_meta.pixel_format == "BGR"
    assert model.backbone.layer2[0].conv1.stride == (2, 2)  # MSRA: the stride sits in the 1x1
    out = detect(model, image())
    assert len(out["boxes"]) > 0 and set(out["labels"].tolist()) <= {1, 2, 3}
    assert float(out["scores"].min()) > 0.05 and len(out["boxes"]) <= 100


@pytest.mark.parametrize("conventions", ["detectron2", "torchvision"])
def test_resdet_to_detectron2_to_resdet_is_bit_exact(tmp_path, conventions):
    cfg = load_det_config(PRESET, ["model.backbone=resnet50", f"model.conventions={conventions}",
                                   "model.anchor_sizes=[64,128,256]", *SMALL])
    torch.manual_seed(0)
    model = build_detector(cfg, 3, weights=None)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias[1] += 4.0
        model.roi_heads.box_predictor.bbox_pred.weight.normal_(0, 5e-4)  # background rows too
        model.rpn.head.cls_logits.weight.normal_(0, 0.01)
        model.rpn.head.bbox_pred.weight.normal_(0, 5e-4)
    cats = [{"id": 7, "name": "a"}, {"id": 8, "name": "b"}, {"id": 9, "name": "c"}]
    src = save_detector(tmp_path / "model_final.pth", model, cfg, cats)
    pkl = tmp_path / "export.pkl"
    assert convert_weights.main([str(src), str(pkl), "--from", "resdet", "--to", "detectron2", "--arch",
                                 "resnet50", "--detector"]) == 0
    exported = pickle.loads(pkl.read_bytes())["model"]
    assert set(exported) == {k for k, _ in d2_keys("faster_rcnn_R_50_C4")
                             if not k.startswith(("proposal_generator.rpn_head.objectness",
                                                  "proposal_generator.rpn_head.anchor_deltas",
                                                  "roi_heads.box_predictor"))} | {
        "proposal_generator.rpn_head.objectness_logits.weight", "proposal_generator.rpn_head.objectness_logits.bias",
        "proposal_generator.rpn_head.anchor_deltas.weight", "proposal_generator.rpn_head.anchor_deltas.bias",
        "roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.cls_score.bias",
        "roi_heads.box_predictor.bbox_pred.weight", "roi_heads.box_predictor.bbox_pred.bias"}
    assert exported["roi_heads.box_predictor.bbox_pred.weight"].shape == (12, 2048)
    yaml_text = pkl.with_suffix(".yaml").read_text()
    assert "NUM_CLASSES: 3" in yaml_text and "SIZES: [[64.0, 128.0, 256.0]]" in yaml_text
    back = tmp_path / "back.pth"
    assert convert_weights.main([str(pkl), str(back), "--from", "detectron2", "--to", "resdet", "--arch",
                                 "resnet50", "--detector"]) == 0
    original, restored = load_checkpoint(src), load_checkpoint(back)
    assert restored["categories"] == cats and restored["config"] == original["config"]
    assert original["model"].keys() == restored["model"].keys()
    for key, value in original["model"].items():
        assert torch.equal(value, restored["model"][key]), key
    a, _, _ = load_detector(src)
    b, _, _ = load_detector(back)
    out_a, out_b = detect(a, image(1)), detect(b, image(1))
    assert len(out_a["boxes"]) > 0
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(out_a[key], out_b[key])


def test_torchvision_rpn_is_reordered_to_detectron2_anchor_order(tmp_path):
    cfg = load_det_config(PRESET, ["model.backbone=resnet50", "model.conventions=torchvision",
                                   "model.anchor_sizes=[64,128]", "model.aspect_ratios=[0.5,1.0,2.0]"])
    model = build_detector(cfg, 2, weights=None)
    with torch.no_grad():
        model.rpn.head.cls_logits.bias.copy_(torch.arange(6.0))  # torchvision index = ratio * 2 + size
    src = save_detector(tmp_path / "m.pth", model, cfg, [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}])
    export_detectron2_detector(src, tmp_path / "m.pkl", "resnet50")
    bias = pickle.loads((tmp_path / "m.pkl").read_bytes())["model"]["proposal_generator.rpn_head.objectness_logits.bias"]
    assert bias.tolist() == [0, 2, 4, 1, 3, 5]  # detectron2 index = size * 3 + ratio
    assert "Approximate" in (tmp_path / "m.yaml").read_text()


def d2_formula_anchors(sizes, ratios, stride, grid_h, grid_w):
    """detectron2's DefaultAnchorGenerator (generate_cell_anchors + _grid_anchors, offset 0), written out."""
    cell = []
    for size in sizes:
        for ratio in ratios:
            w = math.sqrt(size ** 2.0 / ratio)
            h = ratio * w
            cell.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    out = [[x + c[0], y + c[1], x + c[2], y + c[3]]
           for y in range(0, grid_h * stride, stride) for x in range(0, grid_w * stride, stride) for c in cell]
    return torch.tensor(out, dtype=torch.float32)


def test_anchors_equal_detectron2_formula_on_a_grid():
    sizes, ratios = (32, 64, 128, 256, 512), (0.5, 1.0, 2.0)
    gen = Detectron2AnchorGenerator(sizes, ratios, stride=16)
    feature = torch.zeros(1, 8, 5, 7)
    images = ImageList(torch.zeros(1, 3, 75, 107), [(75, 107)])  # not a multiple of 16: stride stays 16
    (anchors,) = gen(images, [feature])
    expected = d2_formula_anchors(sizes, ratios, 16, 5, 7)
    assert anchors.shape == (5 * 7 * 15, 4)
    assert torch.allclose(anchors, expected, atol=1e-4, rtol=0)
    # torchvision's generator differs: ratios outer, cell anchors rounded, stride from the image size (107 // 7)
    (tv,) = AnchorGenerator((sizes,), (ratios,))(images, [feature])
    assert not torch.allclose(tv, expected, atol=0.1)


def test_detectron2_resize_rounding_and_output_clipping():
    assert detectron2_resized_shape(480, 640, 800, 1333) == (800, 1067)  # torchvision floors to 1066
    assert detectron2_resized_shape(800, 1067, 800, 1333) == (800, 1067)
    cfg = load_det_config(PRESET, ["model.backbone=resnet50"])
    t = build_detector(cfg, 2, weights=None).transform
    assert isinstance(t, Detectron2Transform)
    t.eval()
    result = [{"boxes": torch.tensor([[-5.0, 0, 10, 10], [120, 5, 140, 9], [3, 3, 3, 8]]),
               "scores": torch.tensor([0.9, 0.8, 0.7]), "labels": torch.tensor([1, 2, 1])}]
    (out,) = t.postprocess(result, [(96, 128)], [(96, 128)])
    assert out["boxes"].tolist() == [[0.0, 0.0, 10.0, 10.0], [120.0, 5.0, 128.0, 9.0]]
    assert out["scores"].tolist() == pytest.approx([0.9, 0.8])


# ------------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("extra,what", [
    ({"backbone.fpn_lateral4.weight": (256, 1024, 1, 1)}, "FPN"),
    ({"backbone.res5.0.conv1.weight": (512, 1024, 1, 1), "roi_heads.box_head.fc1.weight": (1024, 2048)}, "DC5"),
    ({"roi_heads.mask_head.predictor.weight": (80, 256, 1, 1)}, "mask"),
    ({"roi_heads.keypoint_head.score_lowres.weight": (256, 17, 4, 4)}, "keypoint"),
])
def test_not_c4_files_are_refused_naming_the_keys(tmp_path, extra, what):
    state = fake_d2_state()
    state.update({k: np.zeros(s, np.float32) for k, s in extra.items()})
    with pytest.raises(DetectorFormatError) as e:
        convert_detectron2_detector(write_pkl(tmp_path / "x.pkl", state), "resnet50", class_list("coco"))
    assert "not a C4 Faster R-CNN" in str(e.value) and what in str(e.value)
    assert all(k in str(e.value) for k in extra)


def test_depth_mismatch_names_both_depths(tmp_path, r50_pkl, capsys):
    assert convert_weights.main([str(r50_pkl), str(tmp_path / "x.pth"), "--from", "detectron2", "--to", "resdet",
                                 "--arch", "resnet101", "--detector", "--classes", "coco"]) == 1
    err = capsys.readouterr().err
    assert "ResNet-50" in err and "ResNet-101" in err and not (tmp_path / "x.pth").exists()


def test_unknown_and_missing_keys_are_named(tmp_path):
    state = fake_d2_state()
    state["roi_heads.box_predictor.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(DetectorFormatError, match="roi_heads.box_predictor.extra.weight"):
        convert_detectron2_detector(write_pkl(tmp_path / "u.pkl", state), "resnet50", class_list("coco"))
    state = fake_d2_state()
    del state["proposal_generator.rpn_head.anchor_deltas.bias"]
    with pytest.raises(DetectorFormatError, match="rpn.head.bbox_pred.bias"):
        convert_detectron2_detector(write_pkl(tmp_path / "m.pkl", state), "resnet50", class_list("coco"))


def test_class_list_must_be_given_and_fit(tmp_path, r50_pkl):
    with pytest.raises(DetectorFormatError, match="--classes"):
        convert_detectron2_detector(r50_pkl, "resnet50", None)
    with pytest.raises(DetectorFormatError, match="80 classes but the class list has 20"):
        convert_detectron2_detector(r50_pkl, "resnet50", class_list("voc"))
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"n{i}" for i in range(80)))
    file, _ = convert_detectron2_detector(r50_pkl, "resnet50", class_list(str(names)))
    assert file["categories"][79] == {"id": 80, "name": "n79"}


class _Boom:
    def __reduce__(self):
        import os
        return (os.system, ("touch PWNED_D2_DETECTOR",))


def test_malicious_pickle_is_refused_with_nothing_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "evil.pkl"
    bad.write_bytes(pickle.dumps({"model": {"backbone.stem.conv1.weight": _Boom()}, "__author__": "x"}))
    with pytest.raises(UnsafePickleError, match="posix.system|os.system"):
        convert_detectron2_detector(bad, "resnet50", class_list("coco"))
    assert not (tmp_path / "PWNED_D2_DETECTOR").exists()


# ---------------------------------------------------------------------------------------------- --init-detector
def test_init_detector_takes_trunk_rpn_head_and_reinitialises_other_classes(tmp_path, r50_pkl):
    src = tmp_path / "coco.pth"
    file, _ = convert_detectron2_detector(r50_pkl, "resnet50", class_list("coco"), SMALL)
    save_checkpoint(file, src)
    overrides = architecture_overrides(src)
    assert "model.conventions=detectron2" in overrides and "model.anchor_sizes=[32, 64, 128, 256, 512]" in overrides
    cfg = load_det_config(None, ["data.dataset=voc07", *overrides, *SMALL])
    model, note = detector_for_finetuning(cfg, class_list("voc"))
    assert "re-initialised" in note
    state = model.state_dict()
    for key, value in file["model"].items():
        if key.startswith("roi_heads.box_predictor."):
            assert state[key].shape[0] in (21, 84)
        else:
            assert torch.equal(state[key], value), key
    assert model.transform.weights_meta.pixel_format == "BGR"
    same, note = detector_for_finetuning(load_det_config(None, ["data.dataset=coco", *overrides]), class_list("coco"))
    assert "kept" in note
    assert torch.equal(same.state_dict()["roi_heads.box_predictor.cls_score.weight"],
                       file["model"]["roi_heads.box_predictor.cls_score.weight"])
    with pytest.raises(ValueError, match="anchor|rpn.head"):
        detector_for_finetuning(load_det_config(None, [*overrides, "model.anchor_sizes=[64,128]"]), class_list("voc"))


def test_train_det_init_detector_runs_from_the_file(tmp_path):
    import train_det

    from detection.engine.trainer import DetectionTrainer
    from test_det_train import tiny

    base = tiny(tmp_path, "model.freeze_at=1", "model.conventions=detectron2", "input.size_divisible=1")
    torch.manual_seed(3)
    donor = build_detector(base, 3, weights=None)
    src = save_detector(tmp_path / "donor.pth", donor, base, [{"id": i, "name": f"x{i}"} for i in range(3)])
    # the command line: the file's architecture, then explicit flags and key=value
    args = train_det.get_args_parser().parse_args(["--dataset", "digits", "--init-detector", str(src),
                                                   "model.anchor_sizes=[16,32]"])
    cli, _ = train_det.setup(args)
    assert (cli.model.backbone, cli.model.conventions, cli.model.init_detector) == ("resnet20", "detectron2", str(src))
    cfg = tiny(tmp_path, "model.freeze_at=1", "input.size_divisible=1", *architecture_overrides(src),
               "solver.max_iter=2", "solver.steps=[2]", "solver.warmup_iters=0", "data.test=none")
    out = tmp_path / "run"
    DetectionTrainer(cfg, out).run()
    final = load_checkpoint(out / "model_final.pth")
    assert final["config"]["model"]["init_detector"] == str(src)
    assert torch.equal(final["model"]["backbone.conv1.weight"], donor.state_dict()["backbone.conv1.weight"])  # frozen
    assert final["model"]["roi_heads.box_predictor.cls_score.weight"].shape[0] == 11  # 10 digits + background


def test_detectron2_trainer_pth_converts(tmp_path):
    state = {k: torch.from_numpy(v) for k, v in fake_d2_state().items()}
    src = tmp_path / "model_final.pth"
    torch.save({"model": state, "iteration": 89999, "optimizer": {"state": {}, "param_groups": []}}, src)
    file, summary = convert_detectron2_detector(src, "resnet50", class_list("coco"))
    assert summary["source_keys"] == len(state) == len(file["model"])


def test_reloaded_detector_keeps_the_stride_placement_of_its_weights(tmp_path):
    from backbones.weights.meta import WeightsMeta

    cfg = load_det_config(None, ["model.backbone=resnet50"])
    tv = WeightsMeta(arch="resnet50", source="torchvision", stride_in_1x1=False)
    model = build_detector(cfg, 2, weights=None, weights_meta=tv)
    assert model.backbone.layer2[0].conv2.stride == (2, 2)
    save_detector(tmp_path / "m.pth", model, cfg, [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}])
    loaded, _, _ = load_detector(tmp_path / "m.pth")
    assert loaded.backbone.layer2[0].conv2.stride == (2, 2) and loaded.backbone.layer2[0].conv1.stride == (1, 1)
