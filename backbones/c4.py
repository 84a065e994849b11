"""C4 split for Faster R-CNN: a stride-16 trunk (conv1..res4) and a per-RoI head (res5 + pool, or VGG fc6/fc7)."""
from collections import OrderedDict
from typing import Optional

import torch
import torch.nn as nn

from .norm import freeze_batchnorm
from .registry import build_backbone, get_spec


class C4Backbone(nn.Module):
    """Trunk + per-RoI head of one classifier.

    Attributes:
        trunk: image → feature map with ``out_channels`` channels at ``stride``.
        head: pooled RoI features [R, out_channels, P, P] → [R, head_channels] vectors.
        out_channels: trunk channels (torchvision's backbone contract).
        head_channels: size of the head's output vector.
        stride: trunk output stride (16 for ImageNet nets; 2 for the CIFAR family, whose stem does not downsample).
        roi_size: pooled size the head is built for (7 for VGG's fc6; 14 for res5, which halves it).
        stages: the freezable groups in order (index 0 = stem), used by ``freeze_at``.
        weights_meta: the source weights' pixel convention (see ``WeightsMeta``).
    """

    def __init__(self, name, trunk, head, out_channels, head_channels, stride, roi_size, stages, weights_meta):
        super().__init__()
        self.name = name
        self.trunk = trunk
        self.head = head
        self.out_channels = out_channels
        self.head_channels = head_channels
        self.stride = stride
        self.roi_size = roi_size
        self._stages = stages
        self.weights_meta = weights_meta
        self.freeze_at = 0

    @property
    def num_stages(self) -> int:
        return len(self._stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def freeze(self, freeze_at: int) -> "C4Backbone":
        """Freeze the first ``freeze_at`` stages (0 = nothing, 1 = stem, 2 = stem + res2, ...), as detectron2 does.

        Frozen stages get no gradients and their BatchNorms become FrozenBatchNorm2d.
        """
        if not 0 <= freeze_at <= self.num_stages:
            raise ValueError(f"freeze_at={freeze_at} out of range [0, {self.num_stages}] for {self.name}")
        for paths in self._stages[:freeze_at]:
            for path in paths:
                module = self.get_submodule(path)
                for p in module.parameters():
                    p.requires_grad_(False)
                frozen = freeze_batchnorm(module)
                if frozen is not module:
                    parent, _, attr = path.rpartition(".")
                    setattr(self.get_submodule(parent), attr, frozen)
        self.freeze_at = freeze_at
        return self


def _channels(stage: nn.Sequential) -> int:
    last = stage[-1]
    return (last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels


def _resnet_split(model):
    names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3")
    trunk = nn.Sequential(OrderedDict([(n, getattr(model, n)) for n in names]))
    head = nn.Sequential(OrderedDict(layer4=model.layer4, avgpool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(1)))
    stages = [["trunk.conv1", "trunk.bn1"], ["trunk.layer1"], ["trunk.layer2"], ["trunk.layer3"], ["head.layer4"]]
    return trunk, head, _channels(model.layer3), model.num_features, 16, 14, stages


def _cifar_split(model):
    trunk = nn.Sequential(OrderedDict([(n, getattr(model, n)) for n in ("conv1", "bn1", "relu", "layer1", "layer2")]))
    head = nn.Sequential(OrderedDict(layer3=model.layer3, avgpool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(1)))
    stages = [["trunk.conv1", "trunk.bn1"], ["trunk.layer1"], ["trunk.layer2"], ["head.layer3"]]
    return trunk, head, _channels(model.layer2), model.num_features, 2, 14, stages


def _vgg_split(model):
    trunk = nn.Sequential(*list(model.features.children())[:30])  # conv1_1..conv5_3 + ReLU; pool5 dropped
    cls = model.classifier
    head = nn.Sequential(OrderedDict(
        flatten=nn.Flatten(1), fc6=cls[0], relu6=cls[1], drop6=cls[2], fc7=cls[3], relu7=cls[4], drop7=cls[5]
    ))
    # conv blocks 1..5 occupy feature indices [0,4), [5,9), [10,16), [17,23), [24,30); pools sit between.
    bounds = [(0, 4), (5, 9), (10, 16), (17, 23), (24, 30)]
    stages = [[f"trunk.{i}" for i in range(a, b)] for a, b in bounds]
    return trunk, head, model.out_channels, model.num_features, 16, 7, stages


def build_c4(
    name: str,
    weights: Optional[str] = None,
    freeze_at: Optional[int] = None,
    norm: str = "frozen_bn",
    **kwargs,
) -> C4Backbone:
    """Build the C4 split of a registered backbone.

    Args:
        name: ImageNet ResNets/plain nets and vgg16 (stride 16); CIFAR nets also work (stride 2, for small images).
        weights: a weights source, as for ``build_backbone``; the classifier ``fc`` is dropped.
        freeze_at: stages to freeze (default 2: stem + res2 for ResNets, conv1_x + conv2_x for VGG as in the paper).
        norm: "frozen_bn" (default for fine-tuning), "bn" or "sync_bn".
    """
    spec = get_spec(name)
    model = build_backbone(name, weights=weights, norm=norm, **kwargs)
    split = {"imagenet_resnet": _resnet_split, "cifar_resnet": _cifar_split, "vgg": _vgg_split}[spec.family]
    trunk, head, out_channels, head_channels, stride, roi_size, stages = split(model)
    c4 = C4Backbone(name, trunk, head, out_channels, head_channels, stride, roi_size, stages, model.weights_meta)
    c4.freeze(2 if freeze_at is None else freeze_at)
    return c4
