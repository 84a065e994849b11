"""The loss keys (py-faster-rcnn by default, detectron2 in detectron2_c4.yaml), the solver keys detectron2 needs, and
the bad-input rules around them. detectron2 parity itself: tests/test_detectron2_golden.py."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import fastrcnn_loss

from backbones.utils.config import ConfigError
from detection.config import load_det_config
from detection.engine.trainer import build_optimizer
from detection.model.detector import build_detector
from detection.model.io import save_detector
from detection.model.losses import fast_rcnn_losses, rpn_losses

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "configs" / "detection" / "detectron2_c4.yaml"


def _rpn_inputs(seed=0, images=2, anchors=300):
    g = torch.Generator().manual_seed(seed)
    labels = [torch.randint(-1, 2, (anchors,), generator=g).float() for _ in range(images)]
    targets = [torch.randn(anchors, 4, generator=g) for _ in range(images)]
    pos = [(lab == 1).to(torch.uint8) for lab in labels]
    neg = [(lab == 0).to(torch.uint8) for lab in labels]
    return (torch.randn(images * anchors, 1, generator=g), torch.randn(images * anchors, 4, generator=g), labels,
            targets, pos, neg)


def test_rpn_losses_sampled_normaliser_is_torchvisions_bit_for_bit():
    objectness, deltas, labels, targets, pos, neg = _rpn_inputs()
    obj, box = rpn_losses(objectness, deltas, labels, targets, pos, neg, 1 / 9, "sampled", 256)
    # torchvision's RegionProposalNetwork.compute_loss, on the same sampled masks
    p, n = torch.where(torch.cat(pos))[0], torch.where(torch.cat(neg))[0]
    idx = torch.cat([p, n])
    lab, tgt = torch.cat(labels), torch.cat(targets)
    assert torch.equal(obj, F.binary_cross_entropy_with_logits(objectness.flatten()[idx], lab[idx]))
    assert torch.equal(box, F.smooth_l1_loss(deltas[p], tgt[p], beta=1 / 9, reduction="sum") / idx.numel())


def test_rpn_losses_detectron2_normaliser_and_l1():
    objectness, deltas, labels, targets, pos, neg = _rpn_inputs()
    obj, box = rpn_losses(objectness, deltas, labels, targets, pos, neg, 0.0, "batch_size", 256)
    lab, tgt = torch.cat(labels), torch.cat(targets)
    valid, fg = lab >= 0, lab == 1
    # detectron2's RPN.losses: sums divided by batch_size_per_image x images; SMOOTH_L1_BETA 0 is |x|
    expected_obj = F.binary_cross_entropy_with_logits(objectness.flatten()[valid], lab[valid], reduction="sum") / 512
    expected_box = (deltas[fg] - tgt[fg]).abs().sum() / 512
    torch.testing.assert_close(obj, expected_obj, rtol=1e-6, atol=0)
    torch.testing.assert_close(box, expected_box, rtol=1e-6, atol=0)
    sampled_obj, _ = rpn_losses(objectness, deltas, labels, targets, pos, neg, 0.0, "sampled", 256)
    assert float(sampled_obj) != pytest.approx(float(obj), rel=0.1)  # the normaliser matters (fewer than 256 x 2)


@pytest.mark.parametrize("beta", [1 / 9, 1.0, 0.0])
def test_fast_rcnn_losses(beta):
    g = torch.Generator().manual_seed(1)
    logits, deltas = torch.randn(40, 4, generator=g), torch.randn(40, 16, generator=g)
    labels = [torch.randint(0, 4, (20,), generator=g) for _ in range(2)]
    targets = [torch.randn(20, 4, generator=g) for _ in range(2)]
    cls, box = fast_rcnn_losses(logits, deltas, labels, targets, beta)
    if beta == 1 / 9:  # torchvision's fastrcnn_loss hard-codes 1/9
        ref_cls, ref_box = fastrcnn_loss(logits, deltas, labels, targets)
        assert torch.equal(cls, ref_cls) and torch.equal(box, ref_box)
    lab, tgt = torch.cat(labels), torch.cat(targets)
    pos = torch.where(lab > 0)[0]
    chosen = deltas.view(40, 4, 4)[pos, lab[pos]]
    expected = F.smooth_l1_loss(chosen, tgt[pos], beta=beta, reduction="sum") / 40
    torch.testing.assert_close(box, expected, rtol=1e-6, atol=0)
    if beta == 0.0:
        torch.testing.assert_close(box, (chosen - tgt[pos]).abs().sum() / 40, rtol=1e-6, atol=0)


def test_loss_keys_reach_the_model():
    paper = build_detector(load_det_config(None, ["model.backbone=resnet18"]), 3, weights=None)
    assert (paper.rpn.smooth_l1_beta, paper.rpn.loss_normalizer, paper.roi_heads.smooth_l1_beta) == (1 / 9, "sampled", 1.0)
    d2 = build_detector(load_det_config(str(PRESET), ["model.backbone=resnet18"]), 3, weights=None)
    assert (d2.rpn.smooth_l1_beta, d2.rpn.loss_normalizer, d2.roi_heads.smooth_l1_beta) == (0.0, "batch_size", 0.0)
    digits = load_det_config(str(ROOT / "configs/detection/digits_base.yaml"))
    assert digits.model.roi_heads.smooth_l1_beta == pytest.approx(1 / 9)  # the figures were measured with it


def test_detectron2_preset_solver_is_detectron2s():
    s = load_det_config(str(PRESET)).solver
    assert (s.base_lr, s.ims_per_batch, s.max_iter, s.steps) == (0.02, 16, 90000, [60000, 80000])
    assert (s.warmup_iters, s.warmup_factor, s.momentum) == (1000, 0.001, 0.9)
    assert (s.weight_decay, s.weight_decay_bias, s.weight_decay_norm, s.bias_lr_factor) == (1e-4, 1e-4, 0.0, 1.0)
    assert s.amp == "none"


@pytest.mark.parametrize("override, message", [
    ("model.rpn.box_loss_type=giou", "model.rpn.box_loss_type' = 'giou' is invalid: expected one of ('smooth_l1',) "
                                     "(detectron2's giou/diou/ciou are not implemented)"),
    ("model.roi_heads.box_loss_type=l2", "model.roi_heads.box_loss_type' = 'l2' is invalid"),
    ("model.rpn.loss_normalizer=images", "model.rpn.loss_normalizer' = 'images' is invalid"),
    ("model.roi_heads.smooth_l1_beta=-1", "model.roi_heads.smooth_l1_beta' = -1.0 is invalid: expected >= 0 (0 = L1)"),
    ("solver.weight_decay_norm=-0.1", "solver.weight_decay_norm' = -0.1 is invalid"),
])
def test_bad_loss_and_solver_keys(override, message):
    with pytest.raises(ConfigError, match=re.escape("config key '" + message)):
        load_det_config(None, [override])


def test_steps_beyond_max_iter_are_dropped_with_one_warning(capsys):
    cfg = load_det_config(str(PRESET), ["solver.max_iter=2"])
    assert cfg.solver.steps == []
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "solver.steps [60000, 80000] lie beyond solver.max_iter=2 and are ignored" in err
    assert load_det_config(None, ["solver.max_iter=100", "solver.steps=[50,150]"]).solver.steps == [50]
    with pytest.raises(ConfigError, match="solver.steps"):
        load_det_config(None, ["solver.steps=[8,4]"])


def test_weight_decay_norm_gives_norm_layers_their_group():
    cfg = load_det_config(None, ["model.backbone=resnet18", "model.norm=bn", "model.freeze_at=0",
                                 "solver.weight_decay_norm=0.0", "solver.weight_decay=0.01",
                                 "solver.weight_decay_bias=0.02"])
    model = build_detector(cfg, 3, weights=None)
    groups = build_optimizer(model, cfg, 0.1).param_groups
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert decay[id(model.backbone.bn1.weight)] == 0.0 and decay[id(model.backbone.bn1.bias)] == 0.0
    assert decay[id(model.backbone.conv1.weight)] == 0.01
    assert decay[id(model.rpn.head.cls_logits.bias)] == 0.02
    cfg.solver.weight_decay_norm = None  # the default: as before (biases as biases, weights as weights)
    decay = {id(p): g["weight_decay"] for g in build_optimizer(model, cfg, 0.1).param_groups for p in g["params"]}
    assert decay[id(model.backbone.bn1.weight)] == 0.01 and decay[id(model.backbone.bn1.bias)] == 0.02


def _train_det(*args):
    return subprocess.run([sys.executable, str(ROOT / "tools/train_det.py"), *args], capture_output=True, text=True,
                          cwd=ROOT)


@pytest.fixture(scope="module")
def torchvision_detector(tmp_path_factory):
    cfg = load_det_config(None, ["model.backbone=resnet18"])
    path = tmp_path_factory.mktemp("tv") / "tv.pth"
    save_detector(path, build_detector(cfg, 2, weights=None), cfg, [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}])
    return path


def test_init_detector_of_other_conventions_is_refused(torchvision_detector):
    run = _train_det("--config", str(PRESET), "--init-detector", str(torchvision_detector), "--print-config")
    assert run.returncode == 2, run.stderr
    assert (f"--init-detector {torchvision_detector} is a model.conventions=torchvision detector, but the config asks "
            f"for model.conventions=detectron2") in run.stderr


def test_detectron2_detector_without_detectron2_losses_warns(tmp_path):
    cfg = load_det_config(str(PRESET), ["model.backbone=resnet18"])
    path = tmp_path / "d2.pth"
    save_detector(path, build_detector(cfg, 2, weights=None), cfg, [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}])
    run = _train_det("--init-detector", str(path), "--print-config")
    assert run.returncode == 0, run.stderr
    assert "is a detectron2-convention detector, trained here with the losses of this config" in run.stderr
    assert "conventions: detectron2" in run.stdout
    quiet = _train_det("--config", str(PRESET), "--init-detector", str(path), "--print-config")
    assert quiet.returncode == 0 and "warning" not in quiet.stderr, quiet.stderr


def test_detectron2_training_resize_is_detectron2s():
    import numpy as np
    from PIL import Image

    from detection.data.transforms import TrainAugmentation

    img = (np.arange(90 * 121 * 3) % 251).astype(np.uint8).reshape(90, 121, 3)
    boxes, labels = np.array([[10.0, 10, 50, 60]], np.float32), np.array([1])
    out, out_boxes, _ = TrainAugmentation([45], 1333, 0.0, "detectron2")(img, boxes, labels, seed=0)
    assert out.shape[:2] == (45, 61)  # int(60.5 + 0.5); the Fast R-CNN rule rounds 60.5 to 60
    assert np.array_equal(out, np.asarray(Image.fromarray(img).resize((61, 45), Image.BILINEAR)))
    np.testing.assert_allclose(out_boxes, boxes * np.array([61 / 121, 0.5, 61 / 121, 0.5]), rtol=1e-5)
    plain, _, _ = TrainAugmentation([45], 1333, 0.0)(img, boxes, labels, seed=0)
    assert plain.shape[:2] == (45, 60)
