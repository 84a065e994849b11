"""Residual building blocks (paper Fig. 2 and Fig. 5) with torchvision parameter names."""
import torch
import torch.nn as nn


def conv3x3(in_channels, out_channels, stride=1):
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels, out_channels, stride=1):
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 convolutions; ``residual=False`` gives the plain counterpart with no shortcut."""

    expansion = 1

    def __init__(self, in_channels, width, stride, norm, downsample=None, residual=True, stride_in_1x1=True):
        super().__init__()
        self.conv1 = conv3x3(in_channels, width, stride)
        self.bn1 = norm(width)
        self.conv2 = conv3x3(width, width)
        self.bn2 = norm(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.residual = residual

    @property
    def last_norm(self):
        return self.bn2

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class Bottleneck(nn.Module):
    """1×1 → 3×3 → 1×1. ``stride_in_1x1=True`` is the paper's (MSRA) layout, False torchvision's "v1.5"."""

    expansion = 4

    def __init__(self, in_channels, width, stride, norm, downsample=None, residual=True, stride_in_1x1=True):
        super().__init__()
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(in_channels, width, stride_1x1)
        self.bn1 = norm(width)
        self.conv2 = conv3x3(width, width, stride_3x3)
        self.bn2 = norm(width)
        self.conv3 = conv1x1(width, width * self.expansion)
        self.bn3 = norm(width * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.residual = residual

    @property
    def last_norm(self):
        return self.bn3

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


def init_weights(model: nn.Module, zero_init_residual: bool = False) -> None:
    """He (MSRA) initialisation for convolutions [paper ref. 13], unit BN; optional zero γ on each block's last BN."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in model.modules():
            if isinstance(m, (BasicBlock, Bottleneck)) and m.residual:
                norm = m.last_norm
                with torch.no_grad():
                    norm.weight.zero_()
