"""Normalisation layers selectable by name (``norm=`` in the registry)."""
from typing import Callable

import torch.nn as nn
from torchvision.ops import FrozenBatchNorm2d

NORMS = ("bn", "frozen_bn", "sync_bn")


def norm_layer(norm: str) -> Callable[[int], nn.Module]:
    """Return a constructor ``f(num_channels) -> module`` for ``norm``."""
    if norm == "bn":
        return nn.BatchNorm2d
    if norm == "frozen_bn":
        return FrozenBatchNorm2d
    if norm == "sync_bn":
        return nn.SyncBatchNorm
    raise ValueError(f"norm={norm!r} is not one of {NORMS}")


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d/SyncBatchNorm in ``module`` by a FrozenBatchNorm2d with the same statistics."""
    if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        if module.affine:
            frozen.weight.copy_(module.weight.detach())
            frozen.bias.copy_(module.bias.detach())
        if module.running_mean is not None:
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new = freeze_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module
