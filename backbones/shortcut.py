"""Shortcut connections of the paper's §3.3: options A (parameter-free), B and C (projections)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

SHORTCUTS = ("A", "B", "C")


class ZeroPadShortcut(nn.Module):
    """Option A: identity with stride-``stride`` subsampling and zero-padded extra channels; no parameters."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        if out_channels < in_channels:
            raise ValueError("option A cannot reduce channels")
        self.extra = out_channels - in_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra))
        return x


def make_shortcut(option, in_channels, out_channels, stride, norm):
    """Build the ``downsample`` module for one block, or None for a plain identity.

    ``option`` None means no shortcut at all is wanted by the caller (plain nets never call this).
    B projects only where the shape changes; C projects on every block.
    """
    if option not in SHORTCUTS:
        raise ValueError(f"shortcut={option!r} is not one of {SHORTCUTS}")
    changes = stride != 1 or in_channels != out_channels
    if option == "A":
        return ZeroPadShortcut(in_channels, out_channels, stride) if changes else None
    if option == "B" and not changes:
        return None
    # Sequential(conv, norm) gives torchvision's names downsample.0 / downsample.1.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
        norm(out_channels),
    )
