"""Faster R-CNN C4 model: every ImageNet-style backbone trains and infers with both pooling types; parity of the
pooler and transform with torchvision; the cross-boundary rule; paper defaults; save/load."""
import pytest
import torch
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign, roi_align, roi_pool

from backbones.weights.meta import MSRA_MEAN_BGR, WeightsMeta
from detection.config import load_det_config
from detection.model import BoundaryAwareRPN, PixelConventionTransform, SingleLevelRoIPooler, build_detector
from detection.model.io import load_detector, save_detector

from fault_helpers import one_thread  # noqa: F401  (shared one-thread fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

LOSS_KEYS = {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
# Tiny proposal/RoI budgets keep the per-RoI head (res5 / fc6-fc7) cheap on CPU.
TINY = ["model.anchor_sizes=[16,32,64]", "input.min_size_test=64", "input.max_size_test=96",
        "model.rpn.pre_nms_top_n_train=100", "model.rpn.post_nms_top_n_train=8",
        "model.rpn.pre_nms_top_n_test=100", "model.rpn.post_nms_top_n_test=4",
        "model.roi_heads.batch_size_per_image=4"]


def tiny_cfg(*overrides):
    return load_det_config(overrides=[*TINY, *overrides])


def batch():
    images = [torch.rand(3, 64, 80), torch.rand(3, 72, 64)]
    targets = [{"boxes": torch.tensor([[5.0, 6.0, 40.0, 50.0], [30.0, 10.0, 60.0, 30.0]]),
                "labels": torch.tensor([1, 3])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    return images, targets


# ResNet-101 stands for the deep nets (152 differs only in block count); BN trains there because random weights
# under frozen identity BN blow up over 100 layers.
BACKBONES = [("resnet18", "frozen_bn"), ("resnet34", "frozen_bn"), ("resnet50", "frozen_bn"),
             ("plain18", "frozen_bn"), ("vgg16", "frozen_bn"), ("resnet101", "bn")]


@pytest.mark.parametrize("pooler", ["align", "pool"])
@pytest.mark.parametrize("backbone,norm", BACKBONES)
def test_train_and_inference_every_backbone(backbone, norm, pooler):
    model = build_detector(tiny_cfg(f"model.backbone={backbone}", f"model.norm={norm}",
                                    f"model.roi_heads.pooler={pooler}", "model.freeze_at=1"), num_classes=3)
    images, targets = batch()
    model.train()
    losses = model(images, targets)
    assert set(losses) == LOSS_KEYS
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.rpn.head.cls_logits.weight.grad.abs().sum() > 0
    assert model.roi_heads.box_predictor.cls_score.weight.grad.abs().sum() > 0
    head_grads = [p.grad for p in model.roi_heads.box_head.parameters() if p.requires_grad]
    assert head_grads and any(g is not None and g.abs().sum() > 0 for g in head_grads)
    model.eval()
    with torch.no_grad():
        outputs = model(images)
    assert len(outputs) == 2
    for out, image in zip(outputs, images):
        assert set(out) == {"boxes", "scores", "labels"}
        h, w = image.shape[-2:]
        if len(out["boxes"]):
            assert out["boxes"][:, 0::2].max() <= w and out["boxes"][:, 1::2].max() <= h
            assert out["labels"].min() >= 1 and out["labels"].max() <= 3


def test_c4_split_is_wired_as_the_paper_describes():
    cfg = tiny_cfg("model.backbone=resnet18")
    model = build_detector(cfg, 2)
    pooler = model.roi_heads.box_roi_pool
    assert isinstance(pooler, SingleLevelRoIPooler) and pooler.output_size == (14, 14)
    assert pooler.spatial_scale == 1 / 16
    assert hasattr(model.roi_heads.box_head, "layer4")  # res5 runs per RoI
    assert not hasattr(model.backbone, "layer4")
    vgg = build_detector(tiny_cfg("model.backbone=vgg16", "model.roi_heads.pooler=pool"), 2)
    assert vgg.roi_heads.box_roi_pool.output_size == (7, 7) and vgg.roi_heads.box_roi_pool.kind == "pool"
    assert hasattr(vgg.roi_heads.box_head, "fc6") and vgg.roi_heads.box_predictor.cls_score.in_features == 4096


def test_frozen_stages_and_frozen_bn():
    model = build_detector(tiny_cfg("model.backbone=resnet50", "model.freeze_at=2"), 2)
    assert not any(p.requires_grad for p in model.backbone.conv1.parameters())
    assert not any(p.requires_grad for p in model.backbone.layer1.parameters())
    assert all(p.requires_grad for p in model.backbone.layer2.parameters())
    assert isinstance(model.backbone.bn1, FrozenBatchNorm2d)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_paper_defaults_reach_the_torchvision_modules():
    model = build_detector(load_det_config(overrides=["model.backbone=resnet18"]), 20)
    rpn, heads = model.rpn, model.roi_heads
    assert rpn._pre_nms_top_n == {"training": 12000, "testing": 6000}
    assert rpn._post_nms_top_n == {"training": 2000, "testing": 300}
    assert (rpn.proposal_matcher.high_threshold, rpn.proposal_matcher.low_threshold) == (0.7, 0.3)
    assert (rpn.fg_bg_sampler.batch_size_per_image, rpn.fg_bg_sampler.positive_fraction) == (256, 0.5)
    assert rpn.nms_thresh == 0.7 and rpn.ignore_cross_boundary
    assert rpn.anchor_generator.sizes == ((128, 256, 512),)
    assert (heads.fg_bg_sampler.batch_size_per_image, heads.fg_bg_sampler.positive_fraction) == (128, 0.25)
    assert (heads.proposal_matcher.high_threshold, heads.proposal_matcher.low_threshold) == (0.5, 0.5)
    assert heads.nms_thresh == 0.3
    assert model.transform.min_size == (600,) and model.transform.max_size == 1000
    assert heads.box_predictor.cls_score.out_features == 21


def test_pooler_matches_torchvision_roi_ops():
    feats = torch.rand(2, 8, 10, 12)
    boxes = [torch.tensor([[0.0, 0.0, 64.0, 48.0], [20.5, 10.0, 150.0, 140.0]]), torch.tensor([[5.0, 7.0, 90.0, 60.0]])]
    align = SingleLevelRoIPooler(14, 16, "align", sampling_ratio=2, aligned=True)
    assert torch.equal(align({"0": feats}, boxes, []), roi_align(feats, boxes, 14, 1 / 16, 2, True))
    pool = SingleLevelRoIPooler(7, 16, "pool")
    assert torch.equal(pool({"0": feats}, boxes, []), roi_pool(feats, boxes, 7, 1 / 16))
    # With torchvision's settings it equals MultiScaleRoIAlign on a single map (which FasterRCNN insists on).
    legacy = SingleLevelRoIPooler(7, 16, "align", sampling_ratio=2, aligned=False)
    reference = MultiScaleRoIAlign(["0"], 7, 2)
    assert torch.allclose(legacy({"0": feats}, boxes, [(160, 192)] * 2),
                          reference({"0": feats}, boxes, [(160, 192)] * 2))


def test_transform_rgb_matches_torchvision_and_bgr255_is_exact():
    meta = WeightsMeta(arch="resnet50")
    ours = PixelConventionTransform(meta, [64], 96).eval()
    mean, std = meta.pixel_mean_std_01()
    reference = GeneralizedRCNNTransform(64, 96, mean, std).eval()
    images = [torch.rand(3, 50, 70), torch.rand(3, 80, 40)]
    a, b = ours(images)[0], reference(images)[0]
    assert a.image_sizes == b.image_sizes and torch.allclose(a.tensors, b.tensors, atol=1e-6)
    caffe = WeightsMeta(arch="resnet50", source="msra", pixel_format="BGR", input_scale=255.0, mean=MSRA_MEAN_BGR,
                        std=(1.0, 1.0, 1.0))
    image = torch.rand(3, 8, 9)
    expected = image[[2, 1, 0]] * 255.0 - torch.tensor(MSRA_MEAN_BGR).view(3, 1, 1)
    assert torch.equal(PixelConventionTransform(caffe, [8], 9).normalize(image), expected)


def test_cross_boundary_anchors_are_ignored_only_when_asked():
    torch.manual_seed(0)
    cfg = tiny_cfg("model.backbone=resnet18")
    rpn = build_detector(cfg, 2).rpn
    assert isinstance(rpn, BoundaryAwareRPN)
    anchors = torch.tensor([[-10.0, 0.0, 30.0, 30.0],   # crosses the left border
                            [0.0, 0.0, 32.0, 32.0],      # inside, best match
                            [30.0, 30.0, 60.0, 60.0],    # inside, background
                            [50.0, 50.0, 90.0, 90.0]])   # crosses the bottom-right border (image 64x64)
    target = [{"boxes": torch.tensor([[-5.0, 0.0, 31.0, 31.0]]).clamp(min=0), "labels": torch.tensor([1])}]
    rpn._image_sizes = [(64, 64)]
    labels, _ = rpn.assign_targets_to_anchors([anchors], target)
    assert labels[0].tolist() == [-1.0, 1.0, 0.0, -1.0]
    rpn.ignore_cross_boundary = False
    labels, _ = rpn.assign_targets_to_anchors([anchors], target)
    assert labels[0][0] != -1 and labels[0][3] == 0.0


def test_saved_detector_reloads_with_identical_outputs(tmp_path):
    cfg = tiny_cfg("model.backbone=resnet18")
    model = build_detector(cfg, 3).eval()
    categories = [{"id": 7, "name": "a"}, {"id": 9, "name": "b"}, {"id": 11, "name": "c"}]
    save_detector(tmp_path / "model_final.pth", model, cfg, categories)
    loaded, loaded_cfg, loaded_cats = load_detector(tmp_path / "model_final.pth")
    assert loaded_cats == categories and loaded_cfg == cfg
    images = batch()[0]
    with torch.no_grad():
        for a, b in zip(model(images), loaded(images)):
            assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])
