"""Global context, multi-scale maxout testing and flip TTA (the paper's Appendix B system; box refinement:
tests/test_box_refinement.py)."""
import math

import pytest
import torch

from backbones.utils.config import ConfigError
from detection.config import load_det_config
from detection.model.detector import build_detector, merge_flipped
from detection.model.io import load_detector, save_detector
from detection.model.multiscale import maxout_pool, scale_pairs
from detection.model.pooler import SingleLevelRoIPooler

SMALL = ["model.backbone=resnet18", "input.min_size_test=128", "input.max_size_test=160", "model.anchor_sizes=[32,64]",
         "model.rpn.pre_nms_top_n_test=200", "model.rpn.post_nms_top_n_test=30", "model.roi_heads.score_thresh=0.0"]
CATEGORIES = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
PAPER_FACTORS = [200 / 600, 400 / 600, 1.0, 800 / 600, 1000 / 600]


def _detector(*overrides, seed=0):
    cfg = load_det_config(None, [*SMALL, *overrides])
    torch.manual_seed(seed)
    model = build_detector(cfg, len(CATEGORIES), weights=None).eval()
    with torch.no_grad():  # detect something with random weights
        for name, buf in model.named_buffers():
            if name.endswith("running_var"):
                buf.fill_(4.0)
        model.roi_heads.box_predictor.cls_score.bias[1:] += 2.0
        model.rpn.head.cls_logits.weight.normal_(0, 0.05)
    return model, cfg


def _image(seed=0):
    return torch.rand(3, 128, 160, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("side, pair", [(224, (1, 2)), (100, (4, 4)), (300, (1, 2)), (700, (0, 0)), (500, (0, 1))])
def test_scale_pairs_on_rois_of_known_sizes(side, pair):
    # scaled sides of the 224-px canonical RoI: side x (1/3, 2/3, 1, 4/3, 5/3); the nearest and its neighbour
    # towards 224 (100 px: nearest 167 at 5/3, the top of the pyramid; 500 px: 167 at 1/3, then 333 at 2/3)
    box = torch.tensor([[10.0, 20.0, 10.0 + side, 20.0 + side]])
    first, second = scale_pairs(box, PAPER_FACTORS, 224.0)
    assert (int(first), int(second)) == pair


def test_maxout_pool_is_the_elementwise_max_of_the_two_scales():
    g = torch.Generator().manual_seed(3)
    factors = [0.5, 1.0, 1.5]
    pyramid = [torch.randn(1, 4, math.ceil(20 * f), math.ceil(30 * f), generator=g) for f in factors]
    pooler = SingleLevelRoIPooler(7, 16, "align", 0, True)
    boxes = [torch.tensor([[0.0, 0, 60, 60], [100, 50, 300, 280], [10, 10, 470, 310]])]
    out = maxout_pool(pooler, pyramid, factors, boxes, [(320, 480)], 112.0)
    first, second = scale_pairs(boxes[0], factors, 112.0)
    for i in range(3):
        at = [pooler({"0": pyramid[k]}, [boxes[0][i:i + 1] * factors[k]], [(320, 480)])[0]
              for k in (int(first[i]), int(second[i]))]
        torch.testing.assert_close(out[i], torch.maximum(*at))
    assert len(set(zip(first.tolist(), second.tolist()))) > 1  # the boxes use different scales


def test_multiscale_with_the_test_scale_alone_is_the_baseline():
    model, _ = _detector("test.multiscale=maxout", "test.scales=[128]")
    baseline, _ = _detector()
    with torch.no_grad():
        ref, out = baseline([_image()])[0], model([_image()])[0]
    assert len(ref["boxes"]) > 0
    torch.testing.assert_close(out["boxes"], ref["boxes"])
    torch.testing.assert_close(out["scores"], ref["scores"])


def test_multiscale_pyramid_changes_detections_and_runs_optimised():
    from detection.model.inference import build_inference_model

    model, cfg = _detector("test.multiscale=maxout", "test.scales=[64,96,128,160,192]")
    assert model.roi_heads.multiscale_factors == [0.5, 0.75, 1.0, 1.25, 1.5]
    baseline, _ = _detector()
    with torch.no_grad():
        ms, ref = model([_image()])[0], baseline([_image()])[0]
    assert len(ms["boxes"]) > 0 and not torch.equal(ms["scores"], ref["scores"][: len(ms["scores"])])
    out = build_inference_model(model, cfg, "cpu")([_image()])[0]
    torch.testing.assert_close(out["boxes"], ms["boxes"], rtol=0, atol=0.05)
    torch.testing.assert_close(out["scores"], ms["scores"], rtol=0, atol=2e-4)


def test_global_context_trains_end_to_end():
    model, _ = _detector("model.roi_heads.global_context=true")
    channels = model.roi_heads.box_predictor.cls_score.in_features
    assert channels == 2 * 512  # resnet18's res5 vector, twice
    model.train()
    targets = [{"boxes": torch.tensor([[20.0, 30, 90, 100], [60, 10, 150, 70]]), "labels": torch.tensor([1, 2])}]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    before = model.roi_heads.box_predictor.cls_score.weight.detach().clone()
    for _ in range(3):
        losses = model([_image()], targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        grad = model.roi_heads.box_predictor.cls_score.weight.grad
        assert grad[:, channels // 2:].abs().sum() > 0  # the context half learns
        optimizer.step()
    assert not torch.equal(model.roi_heads.box_predictor.cls_score.weight[:, 512:], before[:, 512:])
    # the whole-image RoI reaches the head: its gradient changes when the context half's weights do
    model.zero_grad()
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight[:, 512:] = 0
        model.roi_heads.box_predictor.bbox_pred.weight[:, 512:] = 0
    sum(model([_image()], targets).values()).backward()
    without = model.roi_heads.box_head.layer4[0].conv1.weight.grad.clone()
    model.zero_grad()
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight[:, 512:] = 0.05
    sum(model([_image()], targets).values()).backward()
    assert not torch.allclose(model.roi_heads.box_head.layer4[0].conv1.weight.grad, without)


def test_context_cannot_be_switched_at_evaluation(tmp_path):
    model, cfg = _detector()
    path = save_detector(tmp_path / "plain.pth", model, cfg, CATEGORIES)
    with pytest.raises(ConfigError, match=r"'model.roi_heads.global_context' = True but .*plain.pth was trained "
                                          r"without global context, so it has no context weights"):
        load_detector(path, ["model.roi_heads.global_context=true"])


def test_fine_tuning_adds_context_with_zero_weights_and_the_same_predictions(tmp_path):
    from detection.model.init_detector import detector_for_finetuning

    model, cfg = _detector()
    path = save_detector(tmp_path / "plain.pth", model, cfg, CATEGORIES)
    run = load_det_config(None, [*SMALL, "model.roi_heads.global_context=true", f"model.init_detector={path}"])
    tuned, note = detector_for_finetuning(run, CATEGORIES)
    assert "global context added (model.roi_heads.global_context): its new predictor weights start at 0" in note
    with torch.no_grad():
        ref, out = model([_image()])[0], tuned.eval()([_image()])[0]
    torch.testing.assert_close(out["boxes"], ref["boxes"])
    torch.testing.assert_close(out["scores"], ref["scores"])


def test_merge_flipped_on_hand_made_boxes():
    straight = {"boxes": torch.tensor([[10.0, 10, 30, 30]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}
    # in the mirror image (width 100) the same object at x 70..90, and one more object
    mirror = {"boxes": torch.tensor([[71.0, 10, 91, 30], [0, 0, 20, 20]]), "scores": torch.tensor([0.8, 0.6]),
              "labels": torch.tensor([1, 2])}
    out = merge_flipped(straight, mirror, 100, 0.5, 100)
    assert out["labels"].tolist() == [1, 2]
    torch.testing.assert_close(out["boxes"], torch.tensor([[10.0, 10, 30, 30], [80, 0, 100, 20]]))
    assert merge_flipped(straight, mirror, 100, 0.5, 1)["scores"].tolist() == [pytest.approx(0.9)]


def test_flip_tta_in_a_detector():
    model, _ = _detector("test.flip=true")
    baseline, _ = _detector()
    image = _image()
    with torch.no_grad():
        out, ref, mirrored = model([image])[0], baseline([image])[0], baseline([image.flip(-1)])[0]
    expected = merge_flipped(ref, mirrored, image.shape[-1], baseline.roi_heads.nms_thresh, 100)
    torch.testing.assert_close(out["boxes"], expected["boxes"])


@pytest.mark.parametrize("override, key", [("test.scales=[]", "test.scales"), ("test.scales=[400,200]", "test.scales"),
                                           ("test.scales=[0,600]", "test.scales"), ("test.multiscale=mean", "test.multiscale")])
def test_bad_multiscale_keys(override, key):
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        load_det_config(None, [override])


def test_context_detector_is_not_exported_to_detectron2(tmp_path):
    from detection.model.detectron2_detector import DetectorFormatError, export_detectron2_detector

    cfg = load_det_config(None, ["model.backbone=resnet50", "model.roi_heads.global_context=true"])
    path = save_detector(tmp_path / "ctx.pth", build_detector(cfg, 2, weights=None), cfg, CATEGORIES)
    with pytest.raises(DetectorFormatError, match="global context"):
        export_detectron2_detector(path, tmp_path / "ctx.pkl", "resnet50")


@pytest.mark.parametrize("train, test", [(["model.roi_heads.global_context=true"], ["test.box_refinement=true"]),
                                         ([], ["test.flip=true"])], ids=["context+refinement", "flip"])
def test_appendix_b_detectors_export_with_parity(tmp_path, train, test):
    from detection.deploy.export import export_detector

    model, cfg = _detector(*train)
    path = save_detector(tmp_path / "det.pth", model, cfg, CATEGORIES)
    result = export_detector(path, "torchscript", tmp_path / "det.pt", overrides=test, log=lambda *_: None)
    assert result["parity"]["matched_fraction"] == 1.0 and result["parity"]["reference_detections"] > 0, result["parity"]


def test_multiscale_export_is_refused(tmp_path):
    from detection.deploy.graph import ExportError
    from detection.deploy.export import export_detector

    model, cfg = _detector()
    path = save_detector(tmp_path / "det.pth", model, cfg, CATEGORIES)
    with pytest.raises(ExportError, match="test.multiscale=maxout is not exportable"):
        export_detector(path, "onnx", tmp_path / "det.onnx", overrides=["test.multiscale=maxout"], log=lambda *_: None)
