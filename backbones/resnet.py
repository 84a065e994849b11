"""ImageNet ResNets and plain nets of the paper's Table 1 / Table 2, with torchvision parameter names."""
from typing import Optional, Sequence, Type, Union

import torch
import torch.nn as nn

from .blocks import BasicBlock, Bottleneck, init_weights
from .norm import norm_layer
from .shortcut import make_shortcut
from .width import scaled_channels

Block = Type[Union[BasicBlock, Bottleneck]]


class ResNet(nn.Module):
    """conv1 (7×7/2) → max pool → layer1..layer4 → global average pool → fc.

    Args:
        block: BasicBlock (18/34 layers) or Bottleneck (50/101/152).
        layers: blocks per stage, e.g. (3, 4, 6, 3).
        num_classes: size of ``fc``.
        shortcut: "A", "B" or "C" (paper §3.3), or None for a plain net without shortcuts.
        stride_in_1x1: stride-2 on the bottleneck's first 1×1 (paper/MSRA) instead of its 3×3 (torchvision v1.5).
        norm: "bn", "frozen_bn" or "sync_bn".
        zero_init_residual: start each residual branch's last BN with γ = 0.
        width_mult: scales every layer's channels (stem 64, stages 64/128/256/512 × expansion); 1.0 is the paper's
            net. Fractions keep the depth and the stride-16 layout while cutting the cost by about width_mult².
    """

    def __init__(
        self,
        block: Block,
        layers: Sequence[int],
        num_classes: int = 1000,
        shortcut: Optional[str] = "B",
        stride_in_1x1: bool = True,
        norm: str = "bn",
        zero_init_residual: bool = False,
        width_mult: float = 1.0,
    ):
        super().__init__()
        self.block = block
        self.shortcut = shortcut
        self.width_mult = width_mult
        norm_fn = norm_layer(norm)
        stem = scaled_channels(64, width_mult)
        self.conv1 = nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = norm_fn(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = stem
        widths = [scaled_channels(c, width_mult) for c in (64, 128, 256, 512)]
        for index, (blocks, width) in enumerate(zip(layers, widths)):
            stride = 1 if index == 0 else 2
            stage = []
            for i in range(blocks):
                out_channels = width * block.expansion
                s = stride if i == 0 else 1
                downsample = None if shortcut is None else make_shortcut(shortcut, in_channels, out_channels, s, norm_fn)
                stage.append(block(in_channels, width, s, norm_fn, downsample, shortcut is not None, stride_in_1x1))
                in_channels = out_channels
            setattr(self, f"layer{index + 1}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        self.num_features = in_channels
        init_weights(self, zero_init_residual)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.forward_features(x)), 1))
