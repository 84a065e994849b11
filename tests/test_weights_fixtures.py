"""Helpers shared by the weights tests (imported by them; the one test here checks the helper itself)."""
import importlib.util
from pathlib import Path

import torch
import torch.nn as nn
from torchvision.ops import FrozenBatchNorm2d


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN non-trivial statistics and affine parameters, so a wrong mapping cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
                n = m.weight.shape[0]
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.2 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
    return model


def images(size: int = 48, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def convert_weights_main():
    """``main`` of tools/convert_weights.py (tools/ is not a package), to run the CLI in-process."""
    path = Path(__file__).resolve().parents[1] / "tools" / "convert_weights.py"
    spec = importlib.util.spec_from_file_location("convert_weights", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_randomize_norms_changes_every_bn():
    model = randomize_norms(nn.Sequential(nn.BatchNorm2d(4), FrozenBatchNorm2d(4)))
    for m in model:
        assert not torch.equal(m.running_var, torch.ones(4)) and not torch.equal(m.running_mean, torch.zeros(4))
