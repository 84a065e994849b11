"""CPU inference: every convolution and linear layer through oneDNN, with the ReLU (or residual add + ReLU) after it
fused into the same kernel.

Why not plain ``F.conv2d``: with one thread and a batch below 16, PyTorch sends 1×1 convolutions to its im2col +
BLAS path instead of oneDNN (``ConvParams::use_mkldnn``), and ``F.linear`` always goes to the BLAS; on AMD
processors MKL's BLAS runs AVX2 kernels, so those layers run at a third of the core's speed. Fusing the ReLU and
the residual add into the convolution's output stage also saves one or two full passes over every activation map
and the allocation of the sum (the PyTorch ops ``mkldnn._convolution_pointwise`` / ``_linear_pointwise``, which
``torch.compile`` uses on CPU). With more than one thread the convolutions take PyTorch's own oneDNN path (then
the faster of the two here) and add/ReLU in place; linears stay in oneDNN.

``fuse_for_onednn(module)`` traces ``module`` with ``torch.fx`` and returns a ``GraphModule`` computing the same
function (up to float rounding). Run it after ``backbones.fuse.fold_frozen_batchnorm``: a conv followed by a BN is
not fused. Inference only (no autograd formulas for the fused ops).
"""
import operator
from typing import Optional

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

_RELUS = (torch.relu, torch.relu_, F.relu)
_ADDS = (operator.add, operator.iadd, torch.add)


def onednn_available() -> bool:
    ops = getattr(torch.ops, "mkldnn", None)
    return (torch.backends.mkldnn.is_available() and ops is not None
            and hasattr(ops, "_convolution_pointwise") and hasattr(ops, "_linear_pointwise"))


class OneDNNConv2d(nn.Module):
    """``relu(conv(x) + other)``, ``relu(conv(x))`` or ``conv(x)`` as one oneDNN call (``unary``/``binary``)."""

    def __init__(self, conv: nn.Conv2d, unary: str = "none", binary: Optional[str] = None):
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("only zero padding given as numbers can be fused")
        self.register_buffer("weight", conv.weight.detach().clone())
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())
        self.padding, self.stride = list(conv.padding), list(conv.stride)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.unary, self.binary = unary, binary

    def forward(self, x: torch.Tensor, other: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x.to(self.weight.dtype)
        if torch.get_num_threads() > 1:
            # With several threads PyTorch's own conv already runs in oneDNN, and measured faster than the fused
            # kernel (docs/BENCHMARKS.md); the add and ReLU then work in place on the fresh output.
            out = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
            if self.binary is not None:
                out = out.add_(other.to(out.dtype)) if other.shape == out.shape else out + other.to(out.dtype)
            return out.relu_() if self.unary == "relu" else out
        if self.binary is None:
            return self._conv(x, self.unary)
        other = other.to(self.weight.dtype)
        if other.shape != self._output_shape(x):  # broadcasting: not what the fused kernel does
            out = self._conv(x, "none") + other
            return torch.relu(out) if self.unary == "relu" else out
        return torch.ops.mkldnn._convolution_pointwise(
            x, other, self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups, self.binary,
            1.0, self.unary, [], "")

    def _conv(self, x: torch.Tensor, unary: str) -> torch.Tensor:
        return torch.ops.mkldnn._convolution_pointwise(x, self.weight, self.bias, self.padding, self.stride,
                                                       self.dilation, self.groups, unary, [], "")

    def _output_shape(self, x: torch.Tensor) -> torch.Size:
        size = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in
                zip(x.shape[2:], self.padding, self.dilation, self.weight.shape[2:], self.stride)]
        return torch.Size([x.shape[0], self.weight.shape[0], *size])

    def extra_repr(self) -> str:
        fused = "+".join(f for f in (self.binary, self.unary) if f and f != "none") or "none"
        return f"{tuple(self.weight.shape)}, stride={self.stride}, padding={self.padding}, fused={fused}"


class OneDNNLinear(nn.Module):
    """``relu(linear(x))`` or ``linear(x)`` as one oneDNN call."""

    def __init__(self, linear: nn.Linear, unary: str = "none"):
        super().__init__()
        self.register_buffer("weight", linear.weight.detach().clone())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        self.unary = unary

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x.to(self.weight.dtype), self.weight, self.bias, self.unary, [],
                                                  "")


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (nn.Conv2d, nn.Linear, nn.ReLU, nn.Identity)) or super().is_leaf_module(m, qualname)


def _is(node: torch.fx.Node, root: nn.Module, module_type, functions) -> bool:
    if node.op == "call_module":
        return isinstance(root.get_submodule(node.target), module_type)
    return node.op == "call_function" and node.target in functions


def _only_user(node: torch.fx.Node) -> Optional[torch.fx.Node]:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _fusible_conv(m: nn.Module) -> bool:
    return type(m) is nn.Conv2d and m.padding_mode == "zeros" and not isinstance(m.padding, str)


def _set_submodule(root: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, attr = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, new)


def _replace_leaves(module: nn.Module) -> nn.Module:
    """Fallback for untraceable modules: route their convs/linears through oneDNN without fusing anything."""
    for name, child in module.named_children():
        if _fusible_conv(child):
            setattr(module, name, OneDNNConv2d(child))
        elif type(child) is nn.Linear:
            setattr(module, name, OneDNNLinear(child))
        else:
            _replace_leaves(child)
    return module


def fuse_for_onednn(module: nn.Module) -> nn.Module:
    """``module`` with its convs/linears as oneDNN kernels and ReLU / add+ReLU fused into them (see module doc).

    Returns a ``torch.fx.GraphModule``; an untraceable module is returned with its layers replaced one by one, and
    a single conv or linear layer as its oneDNN module.
    """
    if _fusible_conv(module):
        return OneDNNConv2d(module)
    if type(module) is nn.Linear:
        return OneDNNLinear(module)
    try:
        graph_module = torch.fx.GraphModule(module, _Tracer().trace(module))
    except Exception:  # data-dependent control flow somewhere: replace layer by layer, no fusion
        return _replace_leaves(module)
    graph = graph_module.graph
    calls = {}
    for node in list(graph.nodes):
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
            if isinstance(graph_module.get_submodule(node.target), nn.Identity):
                node.replace_all_uses_with(node.args[0])
                graph.erase_node(node)
    for node in list(graph.nodes):
        if node.op != "call_module" or calls[node.target] != 1:  # a shared layer keeps its plain form
            continue
        layer = graph_module.get_submodule(node.target)
        user = _only_user(node)
        relu = user if user is not None and _is(user, graph_module, nn.ReLU, _RELUS) else None
        if type(layer) is nn.Linear:
            _set_submodule(graph_module, node.target, OneDNNLinear(layer, "relu" if relu else "none"))
            if relu is not None:
                relu.replace_all_uses_with(node)
                graph.erase_node(relu)
            continue
        if not _fusible_conv(layer):
            continue
        add = user if user is not None and _is(user, graph_module, (), _ADDS) else None
        add_relu = _only_user(add) if add is not None else None
        if (add is not None and len(add.args) == 2 and not add.kwargs and add_relu is not None
                and _is(add_relu, graph_module, nn.ReLU, _RELUS)):
            other = add.args[1] if add.args[0] is node else add.args[0]
            if isinstance(other, torch.fx.Node) and other is not node:
                _set_submodule(graph_module, node.target, OneDNNConv2d(layer, "relu", "add"))
                with graph.inserting_before(add):  # ``other`` may be computed after the conv (the shortcut)
                    fused = graph.call_module(node.target, (node.args[0], other))
                add_relu.replace_all_uses_with(fused)
                for dead in (add_relu, add, node):
                    graph.erase_node(dead)
                continue
        _set_submodule(graph_module, node.target, OneDNNConv2d(layer, "relu" if relu else "none"))
        if relu is not None:
            relu.replace_all_uses_with(node)
            graph.erase_node(relu)
    graph.lint()
    graph_module.recompile()
    graph_module.delete_all_unused_submodules()
    return graph_module
