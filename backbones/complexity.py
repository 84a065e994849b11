"""Model size and multiply-add counts (``torch.utils.flop_counter``; one multiply-add counted once)."""
from dataclasses import dataclass
from typing import Tuple

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_multiply_adds(model: nn.Module, input_shape: Tuple[int, ...]) -> int:
    """Multiply-adds of one forward pass on a zero tensor of ``input_shape`` (flop_counter counts 2 FLOPs per MAC)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(input_shape))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


@dataclass
class ModelInfo:
    arch: str
    input_size: int
    params: int
    multiply_adds: int
    c4_stride: int
    c4_channels: int
    c4_head_channels: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)
