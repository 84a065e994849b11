"""BN folding and the optimised detector paths give the plain model's results.

Tolerances (fp32): a folded conv equals conv + BN within 1e-5 relative; whole detectors give the same number of
detections with the same labels, boxes within 0.05 px and scores within 2e-4 (the res5 head's activations are large
after calibration, and reordering the BN arithmetic moves them by ~1e-6 relative). Training-time fusion gives the
same losses within 1e-5 relative and the same gradients within 1e-4 relative (per-tensor max-norm).
"""
import copy

import pytest
import torch
import torch.nn as nn
from torchvision.ops import FrozenBatchNorm2d

from backbones.blocks import Bottleneck
from backbones.fuse import (FoldedBatchNorm2d, FrozenBNConv2d, find_conv_bn_pairs, fold_conv_bn,
                            fold_frozen_batchnorm, fuse_frozen_batchnorm_for_training)
from backbones.fuse_onednn import OneDNNConv2d, OneDNNLinear, fuse_for_onednn, onednn_available
from backbones.norm import freeze_batchnorm
from detection.benchmark.detector_speed import build_benchmark_detector, random_boxes
from detection.config import load_det_config
from detection.model import build_detector
from detection.model.optimize import (OptimizedDetector, add_low_precision_guards, bf16_supported,
                                      optimize_detector, prepare_for_training)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _random_bn(channels: int, frozen: bool, gen: torch.Generator) -> nn.Module:
    bn = FrozenBatchNorm2d(channels) if frozen else nn.BatchNorm2d(channels).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.rand(channels, generator=gen) + 0.5)
        bn.bias.copy_(torch.randn(channels, generator=gen))
        bn.running_mean.copy_(torch.randn(channels, generator=gen))
        bn.running_var.copy_(torch.rand(channels, generator=gen) + 0.1)
    return bn


@pytest.mark.parametrize("frozen", [True, False])
@pytest.mark.parametrize("conv_bias", [False, True])
def test_fold_conv_bn_equals_conv_then_bn(frozen, conv_bias):
    gen = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=conv_bias)
    bn = _random_bn(16, frozen, gen)
    x = torch.randn(2, 8, 15, 17, generator=gen)
    folded = fold_conv_bn(conv, bn)
    with torch.no_grad():
        ref, out = bn(conv(x)), folded(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert folded.bias is not None and not torch.equal(folded.weight, conv.weight)


def test_fold_keeps_channels_last_weights():
    conv = nn.Conv2d(8, 16, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
    folded = fold_conv_bn(conv, _random_bn(16, True, torch.Generator().manual_seed(1)))
    assert folded.weight.is_contiguous(memory_format=torch.channels_last)


def _bottleneck_net(frozen: bool = True) -> nn.Module:
    norm = FrozenBatchNorm2d if frozen else nn.BatchNorm2d
    down = nn.Sequential(nn.Conv2d(16, 64, 1, bias=False), norm(64))
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), norm(16), nn.ReLU(),
                        Bottleneck(16, 16, 1, norm, downsample=down), Bottleneck(64, 16, 1, norm))
    gen = torch.Generator().manual_seed(2)
    for m in net.modules():
        if isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
    return net.eval()


def test_pairs_found_by_tracing_resnet_blocks():
    pairs = find_conv_bn_pairs(_bottleneck_net())
    assert ("0", "1") in pairs
    assert ("3.downsample.0", "3.downsample.1") in pairs
    for block in ("3", "4"):
        for i in (1, 2, 3):
            assert (f"{block}.conv{i}", f"{block}.bn{i}") in pairs
    assert len(pairs) == 1 + 1 + 2 * 3


class _SharedConvOutput(nn.Module):
    """The conv's output feeds the BN and the sum: folding would change the sum, so it must not be paired."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = FrozenBatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


def test_conv_with_other_readers_is_not_folded():
    net = _SharedConvOutput()
    with torch.no_grad():
        net.bn.running_var.fill_(4.0)
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        ref = net(x)
    assert find_conv_bn_pairs(net) == []
    assert fold_frozen_batchnorm(net) == 0
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref)


def test_fold_whole_network_and_training_bn_is_left_alone():
    net = _bottleneck_net(frozen=False)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = net(x)
    train_copy = copy.deepcopy(net).train()
    assert fold_frozen_batchnorm(train_copy) == 0  # batch statistics are not a fixed affine map
    assert fold_frozen_batchnorm(net) == 8
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref, rtol=1e-5, atol=1e-5)


def test_training_fusion_same_loss_gradients_and_state_dict():
    net = _bottleneck_net()
    for p in net.parameters():
        p.requires_grad_(True)
    fused = copy.deepcopy(net)
    params_before = {n: p for n, p in fused.named_parameters()}
    assert fuse_frozen_batchnorm_for_training(fused) == 8
    assert isinstance(fused[0], FrozenBNConv2d) and isinstance(fused[1], FoldedBatchNorm2d)
    assert fused[0].weight is params_before["0.weight"]  # optimizer state stays attached
    assert list(fused.state_dict()) == list(net.state_dict())
    for (k, a), b in zip(net.state_dict().items(), fused.state_dict().values()):
        assert torch.equal(a, b), k
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    losses = []
    for model in (net, fused):
        model.train()
        loss = model(x).square().mean()
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=0)
    for (name, p), q in zip(net.named_parameters(), fused.parameters()):
        scale = p.grad.abs().max()
        assert (q.grad - p.grad).abs().max() <= 1e-4 * scale, name
    fused.load_state_dict(net.state_dict())  # checkpoints load into the fused model unchanged


def _small_detector(backbone: str, overrides=()):
    image = torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(0))
    model = build_benchmark_detector(backbone, image, num_classes=3, rois=20,
                                     overrides=["model.roi_heads.score_thresh=0.0", *overrides])
    return model, image


def assert_same_detections(out, ref):
    assert len(ref["boxes"]) > 0
    assert len(out["boxes"]) == len(ref["boxes"])
    assert torch.equal(out["labels"], ref["labels"])
    assert out["boxes"].dtype == torch.float32 and out["scores"].dtype == torch.float32
    torch.testing.assert_close(out["boxes"], ref["boxes"], rtol=0, atol=0.05)
    torch.testing.assert_close(out["scores"], ref["scores"], rtol=0, atol=2e-4)


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50", "vgg16", "resnet20"])
def test_optimized_detector_same_detections(backbone):
    model, image = _small_detector(backbone)
    with torch.no_grad():
        ref = model([image])[0]
    for options in (dict(fold_bn=True, channels_last=False, onednn=False),
                    dict(fold_bn=False, channels_last=True, onednn=False),
                    dict(fold_bn=True, channels_last=True, onednn=False),
                    dict(fold_bn=True, channels_last=False, onednn=True),
                    dict(fold_bn=True, channels_last=True, onednn=True, cpu_roi_align=False),
                    dict(fold_bn=True, channels_last=True, onednn=True, cpu_roi_align=True)):
        optimized = optimize_detector(model, **options)
        assert_same_detections(optimized([image])[0], ref)
    if backbone != "vgg16":  # VGG has no BN; a ResNet's trunk and head must have lost all of theirs
        folded = optimize_detector(model).model
        assert not any(isinstance(m, FrozenBatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.modules()) or backbone == "vgg16"  # copy, not in place


def test_pooler_with_roi_pool_same_detections():
    model, image = _small_detector("resnet18", ["model.roi_heads.pooler=pool"])
    with torch.no_grad():
        ref = model([image])[0]
    assert_same_detections(optimize_detector(model)([image])[0], ref)


def test_optimized_detector_refuses_training():
    model, image = _small_detector("resnet18")
    optimized = optimize_detector(model)
    with pytest.raises(RuntimeError, match="inference-only"):
        optimized.train()
    with pytest.raises(ValueError, match="inference only"):
        optimized([image], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}])


class _DtypeSpy:
    """Records the dtype of the proposals and features the RoI pooler receives."""

    def __init__(self, model):
        self.proposals, self.features = [], []
        model.roi_heads.box_roi_pool.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        features, proposals = args[0], args[1]
        self.features.append(next(iter(features.values())).dtype)
        self.proposals.append(proposals[0].dtype)


@pytest.mark.skipif(not bf16_supported("cpu"), reason="no native bf16 on this CPU")
def test_bf16_keeps_box_arithmetic_in_float32():
    model, image = _small_detector("resnet18")
    # Plain autocast: torchvision decodes proposals in the head's dtype (4 px steps near 1000 px in bf16).
    plain = copy.deepcopy(model)
    spy = _DtypeSpy(plain)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        plain([image])
    assert spy.proposals[-1] == torch.bfloat16
    optimized = optimize_detector(model, bf16=True)
    spy = _DtypeSpy(optimized.model)
    out = optimized([image])[0]
    assert spy.proposals[-1] == torch.float32 and spy.features[-1] == torch.float32
    assert out["boxes"].dtype == torch.float32 and out["scores"].dtype == torch.float32
    with torch.no_grad():
        ref = model([image])[0]
    # bf16 convolutions move scores by ~1e-2; boxes still land where the fp32 ones do.
    iou = _best_iou(out["boxes"], ref["boxes"])
    assert (iou > 0.9).float().mean() >= 0.8


def _best_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    from torchvision.ops import box_iou

    return box_iou(a, b).max(dim=1).values if len(a) and len(b) else torch.zeros(len(a))


def test_low_precision_guards_keep_state_dict_keys():
    model, _ = _small_detector("resnet18")
    keys = list(model.state_dict())
    handles = add_low_precision_guards(model)
    assert len(handles) == 4 and add_low_precision_guards(model) == []  # idempotent (RPN head, predictor, pooler, anchors)
    assert list(model.state_dict()) == keys


def test_prepare_for_training_same_losses_and_gradients():
    torch.manual_seed(0)
    cfg = load_det_config(None, ["model.backbone=resnet18", "input.min_size_test=96", "input.max_size_test=128",
                                 "model.rpn.post_nms_top_n_train=64", "model.roi_heads.batch_size_per_image=16"])
    plain = build_detector(cfg, 3, weights=None)
    _randomize_frozen_bn(plain)
    fused = prepare_for_training(copy.deepcopy(plain))
    assert list(fused.state_dict()) == list(plain.state_dict())
    gen = torch.Generator().manual_seed(4)
    images = [torch.rand(3, 96, 128, generator=gen) for _ in range(2)]
    targets = [{"boxes": random_boxes(gen, 2, 96, 128, min_side=24), "labels": torch.tensor([1, 3])}
               for _ in range(2)]
    results = []
    for model in (plain, fused):
        model.train()
        torch.manual_seed(5)  # the same RPN / RoI sampling
        losses = model(images, targets)
        sum(losses.values()).backward()
        results.append(losses)
    for key in results[0]:
        torch.testing.assert_close(results[1][key], results[0][key], rtol=1e-5, atol=1e-7)
    for (name, p), q in zip(plain.named_parameters(), fused.parameters()):
        if p.grad is None:
            assert q.grad is None, name
            continue
        assert (q.grad - p.grad).abs().max() <= 1e-4 * p.grad.abs().max() + 1e-9, name


def _randomize_frozen_bn(model) -> None:
    gen = torch.Generator().manual_seed(6)
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.weight.copy_(torch.rand(m.weight.shape, generator=gen) * 0.5 + 0.25)
            m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)


def test_optimized_wrapper_type():
    model, image = _small_detector("resnet18")
    optimized = optimize_detector(model, fold_bn=False, channels_last=False, onednn=False, cpu_roi_align=False)
    assert isinstance(optimized, OptimizedDetector) and not optimized.training
    with torch.no_grad():
        ref = model([image])[0]
    out = optimized([image])[0]
    assert torch.equal(out["boxes"], ref["boxes"]) and torch.equal(out["scores"], ref["scores"])


def test_freeze_batchnorm_then_fold_is_exact_for_classifier():
    from backbones import build_backbone

    net = build_backbone("resnet18").eval()
    _randomize_bn_stats(net)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = net(x)
        frozen = freeze_batchnorm(copy.deepcopy(net))
        assert fold_frozen_batchnorm(frozen) == 20  # stem + 8 blocks x 2 + 3 downsamples
        torch.testing.assert_close(frozen(x), ref, rtol=1e-4, atol=1e-4)


def _randomize_bn_stats(net) -> None:
    gen = torch.Generator().manual_seed(8)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)


@pytest.mark.skipif(not onednn_available(), reason="PyTorch built without oneDNN")
@pytest.mark.parametrize("threads", [1, 2])  # one thread: the fused kernels; more: conv + in-place add/ReLU
def test_onednn_fusion_of_resnet_blocks(threads):
    torch.set_num_threads(threads)
    net = _bottleneck_net()
    fold_frozen_batchnorm(net)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        ref = net(x)
        fused = fuse_for_onednn(net)
        kinds = sorted((m.binary or "", m.unary) for m in fused.modules() if isinstance(m, OneDNNConv2d))
        # stem conv+relu; per block conv1/conv2 + relu, conv3 + add + relu; the downsample conv alone
        assert kinds == [("", "none")] + [("", "relu")] * 5 + [("add", "relu")] * 2
        assert not any(isinstance(m, (nn.ReLU, nn.Conv2d)) for m in fused.modules())
        torch.testing.assert_close(fused(x), ref, rtol=1e-5, atol=1e-5)
        cl = x.contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(fused.to(memory_format=torch.channels_last)(cl), ref, rtol=1e-5, atol=1e-5)


class _ConvAddBroadcast(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.shared = nn.Conv2d(4, 4, 1)

    def forward(self, x, bias):
        return torch.relu(self.conv(x) + bias) + self.shared(self.shared(x))


@pytest.mark.skipif(not onednn_available(), reason="PyTorch built without oneDNN")
@pytest.mark.parametrize("threads", [1, 2])
def test_onednn_fusion_broadcast_and_shared_layers(threads):
    torch.set_num_threads(threads)
    net = _ConvAddBroadcast().eval()
    x, bias = torch.randn(1, 4, 6, 6), torch.randn(4, 1, 1)
    with torch.no_grad():
        ref = net(x, bias)
        fused = fuse_for_onednn(net)
        assert isinstance(fused.get_submodule("conv"), OneDNNConv2d) and fused.get_submodule("conv").binary == "add"
        assert type(fused.get_submodule("shared")) is nn.Conv2d  # called twice: left as it was
        torch.testing.assert_close(fused(x, bias), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not onednn_available(), reason="PyTorch built without oneDNN")
def test_onednn_linear_relu_and_single_layers():
    head = nn.Sequential(nn.Flatten(1), nn.Linear(32, 16), nn.ReLU(inplace=True), nn.Dropout(), nn.Linear(16, 8))
    x = torch.randn(5, 2, 4, 4)
    with torch.no_grad():
        ref = head.eval()(x)
        fused = fuse_for_onednn(head)
        assert [m.unary for m in fused.modules() if isinstance(m, OneDNNLinear)] == ["relu", "none"]
        torch.testing.assert_close(fused(x), ref, rtol=1e-5, atol=1e-5)
        conv = nn.Conv2d(2, 3, 1)
        assert isinstance(fuse_for_onednn(conv), OneDNNConv2d)
        torch.testing.assert_close(fuse_for_onednn(conv)(x), conv(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_separable_roi_align_equals_torchvision(aligned, sampling_ratio):
    from torchvision.ops import roi_align

    from detection.model.roi_align_cpu import roi_align_nhwc

    gen = torch.Generator().manual_seed(10)
    features = torch.randn(2, 16, 9, 13, generator=gen).contiguous(memory_format=torch.channels_last)
    boxes = [random_boxes(gen, 12, 9 * 16, 13 * 16, min_side=4),
             torch.tensor([[-30.0, -20, 50, 40], [150, 100, 260, 190], [0, 0, 208, 144], [3, 3, 4, 4],
                           [100, 60, 100.5, 60.2], [-50, -50, -20, -20]])]
    ref = roi_align(features, boxes, 7, 1 / 16, sampling_ratio, aligned)
    out = roi_align_nhwc(features, boxes, 7, 1 / 16, sampling_ratio, aligned)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    half = roi_align_nhwc(features, boxes, 7, 1 / 16, sampling_ratio, aligned, out_dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), ref, rtol=1e-2, atol=1e-2)
    empty = roi_align_nhwc(features, [boxes[0][:0], boxes[1][:2]], 7, 1 / 16, sampling_ratio, aligned)
    torch.testing.assert_close(empty, ref[12:14], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("saturate", [False, True])
def test_one_level_proposal_filter_equals_torchvision(saturate):
    from detection.model.optimize import _filter_proposals_one_level

    model, _ = _small_detector("resnet18", ["model.rpn.pre_nms_top_n_test=1500", "model.rpn.post_nms_top_n_test=300"])
    rpn = model.rpn.eval()
    gen = torch.Generator().manual_seed(11)
    n = 2000  # > 1000 boxes: torchvision takes its torch.unique path on CPU
    xy = torch.rand(2, n, 2, generator=gen) * 300
    wh = torch.rand(2, n, 2, generator=gen) * 120
    proposals = torch.cat([xy, xy + wh], dim=2)
    proposals[:, :20, 2:] = proposals[:, :20, :2] + 1e-4  # tiny boxes, removed by min_size
    objectness = torch.randn(2, n, generator=gen) * (30 if saturate else 1)  # 30: sigmoid ties at 1.0
    shapes = [(320, 400), (300, 280)]
    ref = type(rpn).filter_proposals(rpn, proposals, objectness, shapes, [n])
    out = _filter_proposals_one_level(rpn, proposals, objectness, shapes, [n])
    for a, b in zip(out[0] + out[1], ref[0] + ref[1]):
        assert torch.equal(a, b)
    assert len(ref[0][0]) == 300


@pytest.mark.slow
def test_compiled_detector_same_detections():
    """torch.compile of the trunk and the head (inductor; minutes on a small CPU)."""
    import shutil

    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("inductor needs a C++ compiler")
    model, image = _small_detector("resnet18")
    with torch.no_grad():
        ref = model([image])[0]
    assert_same_detections(optimize_detector(model, compile=True)([image])[0], ref)


@pytest.mark.parametrize("backbone", ["resnet18", "resnet20"])
def test_tools_inference_model_matches_plain_model(backbone):
    """``build_inference_model`` (what infer.py, eval_det.py and evaluation during training run): optimised by
    default, also from a model prepared for training (the trainer's), the plain model with test.optimize=false."""
    from detection.model.inference import build_inference_model

    model, image = _small_detector(backbone)
    with torch.no_grad():
        ref = model([image])[0]
    cfg = load_det_config(None, [])
    net = build_inference_model(model, cfg, "cpu")
    assert isinstance(net, OptimizedDetector) and net.model is not model
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in net.model.backbone.modules())  # folded
    assert_same_detections(net([image])[0], ref)
    trained = prepare_for_training(copy.deepcopy(model))
    assert_same_detections(build_inference_model(trained, cfg, "cpu")([image])[0], ref)
    assert any(type(m).__name__ == "FrozenBNConv2d" for m in trained.modules())  # a copy was optimised
    plain = build_inference_model(model, load_det_config(None, ["test.optimize=false"]), "cpu")
    assert plain.model is model
    assert_same_detections(plain([image])[0], ref)
