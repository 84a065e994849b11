"""ResNet classification throughput on synthetic data: training (forward, backward, SGD step) and inference img/s.

The layout is torchvision's ("v1.5": stride on the 3×3), the one NVIDIA's published ResNet-50 throughputs use.
"""
import copy
from typing import Dict

import torch
import torch.nn as nn

from backbones import build_backbone
from backbones.fuse import fold_frozen_batchnorm

from .timing import interleaved


class _TrainStep:
    def __init__(self, model, images, labels, channels_last: bool, bf16: bool):
        self.model = model.train()
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
            images = images.contiguous(memory_format=torch.channels_last)
        self.images, self.labels, self.bf16 = images, labels, bf16
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        self.loss = nn.CrossEntropyLoss()

    def __call__(self):
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.images.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.loss(self.model(self.images), self.labels)
        loss.backward()
        self.optimizer.step()


class _Infer:
    def __init__(self, model, images, optimized: bool, bf16: bool, context):
        self.model = model.eval()
        if optimized:
            fold_frozen_batchnorm(self.model)
            self.model.to(memory_format=torch.channels_last)
            images = images.contiguous(memory_format=torch.channels_last)
        self.images, self.bf16, self.context = images, bf16, context

    def __call__(self):
        with self.context(), torch.autocast(self.images.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.model(self.images)


def measure_classification(arch: str, device, batch: int, size: int, repeats: int, bf16: bool,
                           log=print) -> Dict[str, dict]:
    """img/s for training and inference: the plain fp32 NCHW model and the optimised variants side by side."""
    device = torch.device(device)
    torch.manual_seed(0)
    model = build_backbone(arch, stride_in_1x1=False).to(device)
    gen = torch.Generator().manual_seed(3)
    images = torch.randn(batch, 3, size, size, generator=gen).to(device)
    labels = torch.randint(0, 1000, (batch,), generator=gen).to(device)
    train = {"baseline": _TrainStep(copy.deepcopy(model), images, labels, False, False),
             "channels_last": _TrainStep(copy.deepcopy(model), images, labels, True, False)}
    infer = {"baseline": _Infer(copy.deepcopy(model), images, False, False, torch.no_grad),
             "fold_bn+channels_last+inference_mode": _Infer(copy.deepcopy(model), images, True, False,
                                                            torch.inference_mode)}
    if bf16:
        train["channels_last+bf16"] = _TrainStep(copy.deepcopy(model), images, labels, True, True)
        infer["fold_bn+channels_last+inference_mode+bf16"] = _Infer(copy.deepcopy(model), images, True, True,
                                                                    torch.inference_mode)
    out = {"arch": arch, "layout": "torchvision v1.5 (stride on the 3x3)", "batch": batch, "input_size": size}
    for kind, fns in (("train", train), ("inference", infer)):
        log(f"[classification] {arch} {kind}: timing {list(fns)}")
        times = interleaved(fns, repeats, warmup=1, device=device)
        base = times["baseline"]["median"]
        out[kind] = {k: {"img_per_s": batch / times[k]["median"], "speedup_vs_baseline": base / times[k]["median"],
                         "timing": times[k]} for k in fns}
    return out
