"""Export to ONNX / TorchScript (detection/deploy, tools/export.py, tools/infer.py --runtime): round trips with
detection parity, the parity check catching a graph without NMS or box decoding, and the bad-input errors.

Detectors are random-weight C4 nets with BN calibrated on one image (``calibrate_batchnorm``, as the benchmark
does) and a box predictor scaled up so that it scores a few classes apart and moves boxes away from the proposals.
"""
import functools
import json

import numpy as np
import pytest
import torch
from PIL import Image

from backbones.utils.checkpoint import save_checkpoint
from detection.benchmark.detector_speed import calibrate_batchnorm
from detection.config import load_det_config
from detection.deploy import graph, parity
from detection.deploy.contract import check_image
from detection.deploy.export import export_detector
from detection.deploy.graph import ExportError
from detection.deploy.runtime import OnnxRuntimeDetector, TorchScriptDetector, load_exported
from detection.model import build_detector
from detection.model.inference import build_inference_model
from detection.model.io import load_detector, save_detector

from fault_helpers import one_thread, tool_module  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
export_tool = tool_module("export.py")
infer = tool_module("infer.py")

CATEGORIES = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}]
SMALL = ["input.min_size_test=96", "input.max_size_test=128", "model.rpn.pre_nms_top_n_test=200",
         "model.rpn.post_nms_top_n_test=24", "model.anchor_sizes=[16,32,64]"]
DETECTORS = {"resnet18": ["model.backbone=resnet18", "model.width_mult=0.25"],
             "vgg16_roipool": ["model.backbone=vgg16", "model.width_mult=0.25", "model.roi_heads.pooler=pool"],
             "resnet18_detectron2": ["model.backbone=resnet18", "model.width_mult=0.25",
                                     "model.conventions=detectron2"]}
RUNNERS = {"onnx": OnnxRuntimeDetector, "torchscript": TorchScriptDetector}


def images(seed=0, sizes=((96, 128), (120, 90), (77, 141))):
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=gen) for h, w in sizes]


@functools.lru_cache(maxsize=None)
def calibrated_detector(name):
    """(model, cfg): BN statistics from one image, then frozen; predictor weights that make detections."""
    overrides = [*SMALL, *DETECTORS[name]]
    torch.manual_seed(0)
    model = build_detector(load_det_config(None, [*overrides, "model.norm=bn"]), len(CATEGORIES), weights=None)
    calibrate_batchnorm(model, images()[0])
    predictor = model.roi_heads.box_predictor
    with torch.no_grad():
        predictor.cls_score.weight.mul_(20.0)
        predictor.cls_score.bias.copy_(torch.tensor([0.0, 2.0, 1.5, 1.0]))
        predictor.bbox_pred.weight.normal_(std=0.05)
    return model.eval(), load_det_config(None, overrides)


@pytest.fixture(scope="module", params=list(DETECTORS))
def detector_file(request, tmp_path_factory):
    model, cfg = calibrated_detector(request.param)
    return save_detector(tmp_path_factory.mktemp(request.param) / "model_final.pth", model, cfg, CATEGORIES)


@pytest.mark.parametrize("fmt,runtime", [("onnx", "onnxruntime"), ("torchscript", "torchscript")])
def test_round_trip_matches_the_plain_model(detector_file, tmp_path, fmt, runtime):
    out = tmp_path / f"model.{fmt}"
    meta = export_detector(detector_file, fmt, out, images(), log=lambda _: None)
    p = meta["parity"]
    assert p["passed"] and p["matched_fraction"] == 1.0 and p["reference_detections"] >= 5, p
    written = json.loads((tmp_path / f"model.{fmt}.json").read_text())
    assert written["categories"] == CATEGORIES and written["parity"]["matched"] == p["matched"]
    assert written["input"]["layout"] == "CHW" and written["pixel_convention"]["pixel_format"] == "RGB"
    # the file as a user loads it, on sizes the trace never saw
    net, _ = load_exported(out, runtime)
    model, cfg, _ = load_detector(detector_file, ["test.optimize=false"])
    again = parity.compare(build_inference_model(model, cfg, "cpu"), net, images(5, ((64, 200), (150, 110))))
    assert again["matched_fraction"] == 1.0 and again["reference_detections"] > 0, again


def _broken_graph_parity(fmt, monkeypatch, what):
    model, cfg = calibrated_detector("resnet18")
    reference = build_inference_model(model, cfg, "cpu")
    truth = parity.compare(reference, reference, images())
    with monkeypatch.context() as m:
        if what == "nms":
            import torchvision.models.detection.roi_heads as roi_heads

            m.setattr(roi_heads.box_ops, "batched_nms", lambda boxes, scores, idxs, thresh: scores.argsort(
                descending=True))
        else:
            m.setattr(model.roi_heads.box_coder, "decode", lambda codes, boxes: torch.cat(boxes)[:, None].expand(
                -1, codes.shape[1] // 4, -1))
        data = graph.onnx_bytes(model, images()[0]) if fmt == "onnx" else graph.torchscript_bytes(model, images()[0])
    return truth, parity.compare(reference, RUNNERS[fmt](data), images())


@pytest.mark.parametrize("fmt", list(RUNNERS))
@pytest.mark.parametrize("what", ["nms", "box_decoding"])
def test_parity_fails_without_nms_or_box_decoding(fmt, what, monkeypatch):
    truth, broken = _broken_graph_parity(fmt, monkeypatch, what)
    assert truth["matched_fraction"] == 1.0
    assert not broken["passed"] and broken["matched_fraction"] < 0.8, broken
    if what == "nms":
        assert broken["exported_detections"] > broken["reference_detections"]


def _onnx_ops(g) -> list:
    """Op types of a graph and its subgraphs (NMS sits in the non-empty branch of an ``If``)."""
    return [op for n in g.node for op in [n.op_type, *(o for a in n.attribute if a.g.node for o in _onnx_ops(a.g))]]


def test_graphs_hold_nms_roi_pooling_and_resize():
    import onnx

    model, _ = calibrated_detector("resnet18")
    ops = _onnx_ops(onnx.load_from_string(graph.onnx_bytes(model, images()[0])).graph)
    assert ops.count("NonMaxSuppression") == 2  # RPN proposals and per-class detections
    assert ops.count("RoiAlign") == 1 and ops.count("Resize") == 1


@pytest.fixture(scope="module")
def exported_onnx(tmp_path_factory):
    model, cfg = calibrated_detector("resnet18")
    folder = tmp_path_factory.mktemp("onnx")
    weights = save_detector(folder / "model_final.pth", model, cfg, CATEGORIES)
    export_detector(weights, "onnx", folder / "model.onnx", images(), log=lambda _: None)
    return weights, folder / "model.onnx"


def test_cli_export_and_infer_with_onnxruntime(exported_onnx, tmp_path, capsys):
    weights, _ = exported_onnx
    out = tmp_path / "m.onnx"
    pixels = (images(7, ((90, 120),))[0] * 255).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(pixels).save(tmp_path / "a.png")
    assert export_tool.main(export_tool.parse_args(
        [str(weights), "--format", "onnx", "-o", str(out), "--check", str(tmp_path / "a.png")])) == 0
    assert "100.0% of" in capsys.readouterr().out
    results = {}
    for runtime, model_args in (("onnxruntime", [str(out)]), ("torch", ["--weights", str(weights), "--no-optimize"])):
        args = infer.get_args_parser().parse_args(["--runtime", runtime, *model_args, "--image",
                                                   str(tmp_path / "a.png"), "-o", str(tmp_path / runtime),
                                                   "--score-thresh", "0.05"])
        assert infer.main(args) == 0
        results[runtime] = json.loads((tmp_path / runtime / "detections.json").read_text())[0]["detections"]
    assert len(results["onnxruntime"]) == len(results["torch"]) > 0
    for a, b in zip(results["onnxruntime"], results["torch"]):
        assert a["category_id"] == b["category_id"] and abs(a["score"] - b["score"]) < 1e-3


def test_infer_refuses_inputs_off_the_contract(exported_onnx, tmp_path, capsys):
    _, onnx_file = exported_onnx
    good = images()[0].numpy()
    for name, array in (("hwc", np.ascontiguousarray(good.transpose(1, 2, 0))),
                        ("uint8", (good * 255).astype(np.uint8)), ("float64", good.astype(np.float64)),
                        ("0-255", good * 255)):
        np.save(tmp_path / f"{name}.npy", array)
        args = infer.get_args_parser().parse_args(["--runtime", "onnxruntime", str(onnx_file), "--image",
                                                   str(tmp_path / f"{name}.npy"), "-o", str(tmp_path / "out")])
        assert infer.main(args) == 1
        assert "expected one image as a float32 [3, H, W] tensor (channels first, RGB, values in [0, 1])" in \
            capsys.readouterr().err, name
    np.save(tmp_path / "good.npy", good)
    args = infer.get_args_parser().parse_args(["--runtime", "onnxruntime", str(onnx_file), "--image",
                                               str(tmp_path / "good.npy"), "-o", str(tmp_path / "out")])
    assert infer.main(args) == 0
    with pytest.raises(ValueError, match="channels last"):
        check_image(torch.rand(20, 30, 3))
    args = infer.get_args_parser().parse_args(["--runtime", "onnxruntime", str(onnx_file),
                                               "model.roi_heads.score_thresh=0.2", "--image",
                                               str(tmp_path / "good.npy")])
    assert infer.main(args) == 1 and "fixed by tools/export.py" in capsys.readouterr().err


def test_bad_inputs_one_clear_error_each(exported_onnx, tmp_path, capsys):
    weights, _ = exported_onnx
    classifier = save_checkpoint({"conv1.weight": torch.zeros(2, 3, 1, 1), "fc.bias": torch.zeros(2)},
                                 tmp_path / "classifier.pth")
    pretrain = save_checkpoint({"format": "resdet", "arch": "resnet20", "model": {}, "model_kwargs": {}},
                               tmp_path / "pretrain.pth")
    cases = [
        ([str(classifier), "--format", "onnx", "-o", str(tmp_path / "a.onnx")], "a bare state dict"),
        ([str(pretrain), "--format", "onnx", "-o", str(tmp_path / "a.onnx")],
         "classification (pretraining) checkpoint"),
        ([str(weights), "--format", "onnx", "-o", str(tmp_path / "a.onnx"), "test.precision=bf16"],
         "test.precision=bf16 is not exportable"),
        ([str(weights), "--format", "onnx", "-o", str(tmp_path / "a.onnx"), "--opset", "11"],
         "--opset 11 is not exportable"),
        ([str(weights), "--format", "onnx", "-o", str(tmp_path / "missing" / "a.onnx")],
         f"output folder {tmp_path / 'missing'} does not exist"),
    ]
    for argv, message in cases:
        assert export_tool.main(export_tool.parse_args(argv)) == 1, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not list(tmp_path.glob("*.onnx"))
    with pytest.raises(ExportError, match="--format"):
        export_detector(weights, "tflite", tmp_path / "a.tflite")
    _, onnx_file = exported_onnx
    (tmp_path / "b.onnx").write_bytes(onnx_file.read_bytes() + b"\0")
    (tmp_path / "b.onnx.json").write_text(onnx_file.with_name("model.onnx.json").read_text())
    with pytest.raises(ValueError, match="does not match b.onnx.json"):
        load_exported(tmp_path / "b.onnx", "onnxruntime")


def test_benchmark_deploy_section_runs(exported_onnx):
    from detection.benchmark.deploy_speed import measure_deploy
    from detection.benchmark.report import tools_tables

    weights, _ = exported_onnx
    r = measure_deploy("cpu", 1, str(weights), log=lambda _: None)
    assert set(r["variants"]) == {"plain (--no-optimize)", "tools default (fp32)", "ONNX Runtime (CPU)",
                                  "TorchScript (torch.jit.load)"}
    assert r["variants"]["ONNX Runtime (CPU)"]["parity_matched_fraction"] == 1.0
    assert all(v["images_per_s"] > 0 for v in r["variants"].values())
    assert any("(12) Exported detector" in line for line in tools_tables({"deploy": r}))
