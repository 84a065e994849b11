"""CIFAR-10 ResNets and plain nets of the paper's §4.2: 6n+2 layers, widths 16/32/64 on 32×32 inputs."""
from typing import Optional

import torch
import torch.nn as nn

from .blocks import BasicBlock, init_weights
from .norm import norm_layer
from .shortcut import make_shortcut


class CifarResNet(nn.Module):
    """conv1 (3×3, 16) → 3 stages of n BasicBlocks (16, 32, 64 filters) → global average pool → fc.

    Args:
        n: blocks per stage; depth = 6n + 2.
        shortcut: "A" (the paper's CIFAR choice), "B", "C", or None for the plain net.
    """

    def __init__(
        self,
        n: int,
        num_classes: int = 10,
        shortcut: Optional[str] = "A",
        norm: str = "bn",
        zero_init_residual: bool = False,
        stride_in_1x1: bool = True,
    ):
        super().__init__()
        self.shortcut = shortcut
        norm_fn = norm_layer(norm)
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = norm_fn(16)
        self.relu = nn.ReLU(inplace=True)
        in_channels = 16
        for index, width in enumerate((16, 32, 64)):
            stage = []
            for i in range(n):
                stride = 2 if index > 0 and i == 0 else 1
                downsample = None if shortcut is None else make_shortcut(shortcut, in_channels, width, stride, norm_fn)
                stage.append(BasicBlock(in_channels, width, stride, norm_fn, downsample, shortcut is not None))
                in_channels = width
            setattr(self, f"layer{index + 1}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        self.num_features = 64
        init_weights(self, zero_init_residual)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.forward_features(x)), 1))
