"""Fold frozen BatchNorm into the preceding convolution.

A frozen BN is a fixed per-channel affine map ``y = x * s + t`` with ``s = γ / sqrt(σ² + ε)`` and ``t = β - μ s``.
After a convolution it folds into the convolution's own weights: ``conv(x, W) * s + t = conv(x, W * s) + t``, which
saves two full passes over every activation map (on a CPU the BN's multiply and add cost a third of a C4
detector's time).

Two forms, chosen by what the model is used for:

- ``fold_frozen_batchnorm`` (inference): the folded ``W * s`` and bias ``t`` are computed once and stored; the BN
  becomes ``nn.Identity``. The state-dict keys change, so a folded model is for running, not for saving.
- ``fuse_frozen_batchnorm_for_training`` (training): every forward computes ``W * s`` from the live parameter, so
  autograd gives the exact gradient ``dL/dW = s * dL/d(W s)`` and the optimizer keeps updating the original ``W``.
  The BN module stays where it was (an identity that still holds its buffers), so ``state_dict`` keys and values
  are unchanged: checkpoints, resume and DDP see the unfused model. Chosen over folding only the frozen stages
  because in a C4 detector the trainable res3-res5 carry most of the BN cost.

Pairs are found by tracing with ``torch.fx``: a BN folds only when its sole input is a convolution whose output
nothing else reads. Modules that cannot be traced are searched child by child. Only frozen statistics fold:
``FrozenBatchNorm2d`` always, ``nn.BatchNorm2d`` only for inference and only in eval mode.
"""
from typing import List, Tuple

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import FrozenBatchNorm2d

_BATCHNORMS = (FrozenBatchNorm2d, nn.BatchNorm2d)


def bn_scale_shift(bn: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(s, t)`` with ``bn(x) == x * s + t`` per channel, in the buffers' dtype (FrozenBN's own arithmetic)."""
    weight = bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)
    bias = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
    scale = weight * (bn.running_var + bn.eps).rsqrt()
    return scale, bias - bn.running_mean * scale


def _folded_weight_bias(conv: nn.Conv2d, bn: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    # float64 so the folded weights carry no extra rounding beyond the final cast.
    weight = bn.weight.double() if bn.weight is not None else torch.ones_like(bn.running_var, dtype=torch.float64)
    bias = bn.bias.double() if bn.bias is not None else torch.zeros_like(bn.running_mean, dtype=torch.float64)
    scale = weight * (bn.running_var.double() + bn.eps).rsqrt()
    shift = bias - bn.running_mean.double() * scale
    if conv.bias is not None:
        shift = shift + conv.bias.double() * scale
    folded = conv.weight.double() * scale.reshape(-1, *([1] * (conv.weight.dim() - 1)))
    return folded.to(conv.weight.dtype), shift.to(conv.weight.dtype)


def fold_conv_bn(conv: nn.Conv2d, bn: nn.Module) -> nn.Conv2d:
    """A new ``nn.Conv2d`` (with bias) equal to ``bn(conv(x))`` for BN's stored statistics."""
    if conv.out_channels != bn.running_mean.numel():
        raise ValueError(f"cannot fold a BN over {bn.running_mean.numel()} channels into a conv with "
                         f"{conv.out_channels} output channels")
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
                      device=conv.weight.device, dtype=conv.weight.dtype)
    weight, bias = _folded_weight_bias(conv, bn)
    with torch.no_grad():
        fused.weight.copy_(weight)
        fused.bias.copy_(bias)
    # Keep the conv's memory format (channels_last weights stay channels_last).
    if conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous():
        fused.weight.data = fused.weight.data.contiguous(memory_format=torch.channels_last)
    fused.weight.requires_grad_(conv.weight.requires_grad)
    fused.bias.requires_grad_(conv.weight.requires_grad)
    fused.train(conv.training)
    return fused


class FoldedBatchNorm2d(FrozenBatchNorm2d):
    """A FrozenBatchNorm2d whose effect moved into the preceding ``FrozenBNConv2d``: identity, same buffers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @classmethod
    def from_frozen(cls, bn: FrozenBatchNorm2d) -> "FoldedBatchNorm2d":
        folded = cls(bn.weight.numel(), eps=bn.eps)
        for name in ("weight", "bias", "running_mean", "running_var"):
            setattr(folded, name, getattr(bn, name))  # the same tensors, not copies
        return folded


class FrozenBNConv2d(nn.Conv2d):
    """``bn(conv(x))`` computed as one convolution with ``W * s`` and bias ``t``, rebuilt every forward.

    Shares ``weight`` (and ``bias``) with the conv it replaces, so optimizers and DDP keep working on the same
    Parameter objects. The BN's buffers are read from ``self.bn`` (not registered here: it stays in its parent).
    """

    def __init__(self, conv: nn.Conv2d, bn: FoldedBatchNorm2d):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                         conv.dilation, conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode,
                         device="meta")
        self.weight = conv.weight
        self.bias = conv.bias
        object.__setattr__(self, "bn", bn)  # a plain reference: keeps state-dict keys where they were
        self.train(conv.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = bn_scale_shift(self.bn)
        weight = self.weight * scale.reshape(-1, 1, 1, 1)
        bias = shift if self.bias is None else shift + self.bias * scale
        if self.padding_mode != "zeros":
            return F.conv2d(F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode), weight, bias,
                            self.stride, (0, 0), self.dilation, self.groups)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class _ConvBNTracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (nn.Conv2d,) + _BATCHNORMS) or super().is_leaf_module(m, qualname)


def find_conv_bn_pairs(module: nn.Module) -> List[Tuple[str, str]]:
    """``(conv path, bn path)`` for every BN (frozen or eval-foldable) applied directly and only to a conv's output.

    Paths are relative to ``module``. A conv or BN that is called more than once is never paired.
    """
    try:
        graph = _ConvBNTracer().trace(module)
    except Exception:  # untraceable (data-dependent control flow): look inside its children instead
        pairs = []
        for name, child in module.named_children():
            pairs += [(f"{name}.{c}", f"{name}.{b}") for c, b in find_conv_bn_pairs(child)]
        return pairs
    calls = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(module.get_submodule(node.target), _BATCHNORMS):
            continue
        src = node.args[0] if node.args else None
        if not (isinstance(src, torch.fx.Node) and src.op == "call_module" and len(src.users) == 1):
            continue
        conv = module.get_submodule(src.target)
        if type(conv) is not nn.Conv2d or calls[src.target] != 1 or calls[node.target] != 1:
            continue
        pairs.append((src.target, node.target))
    return pairs


def _set_submodule(root: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, attr = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, new)


def fold_frozen_batchnorm(module: nn.Module) -> int:
    """Fold every frozen BN (and every eval-mode BatchNorm2d) into its conv, in place; returns how many folded.

    For inference: the result computes the same function with stored ``W * s`` weights and BN → Identity.
    """
    count = 0
    for conv_path, bn_path in find_conv_bn_pairs(module):
        bn = module.get_submodule(bn_path)
        if isinstance(bn, nn.BatchNorm2d) and (bn.training or bn.running_var is None):
            continue  # batch statistics: not a fixed affine map
        _set_submodule(module, conv_path, fold_conv_bn(module.get_submodule(conv_path), bn))
        _set_submodule(module, bn_path, nn.Identity())
        count += 1
    return count


def fuse_frozen_batchnorm_for_training(module: nn.Module) -> int:
    """Replace each (conv, FrozenBatchNorm2d) pair by a ``FrozenBNConv2d`` + identity BN, in place.

    Loss and gradients equal the unfused model's up to float rounding; parameters, buffers and state-dict keys
    are unchanged. Returns the number of pairs fused.
    """
    count = 0
    for conv_path, bn_path in find_conv_bn_pairs(module):
        bn = module.get_submodule(bn_path)
        if type(bn) is not FrozenBatchNorm2d:
            continue
        folded_bn = FoldedBatchNorm2d.from_frozen(bn)
        _set_submodule(module, conv_path, FrozenBNConv2d(module.get_submodule(conv_path), folded_bn))
        _set_submodule(module, bn_path, folded_bn)
        count += 1
    return count
