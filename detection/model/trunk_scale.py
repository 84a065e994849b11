"""Rescale VGG-16's conv5_3 so the C4 trunk's output has a chosen RMS, dividing fc6 by the same factor.

conv5_3 → ReLU → RoIAlign/RoIPool → fc6 is positively homogeneous: conv5_3 × c and fc6 ÷ c compute the same box
features, so the pretrained classifier is untouched. What changes is the RPN, whose 3×3 conv reads the trunk output
directly: a linear layer's output moves per SGD step in proportion to the square of its input's scale. A VGG-16
pretrained on the digits ends at an RMS of about 0.13 where ResNet-18's res4 gives about 1.1, so its RPN learned
~60× slower than the ResNets' at the same learning rate (docs/DETECTION.md, "Deeper nets and VGG-16"). The same rule
would make fc6 (weights ÷ c, input × c) learn c² times faster; its optimizer group undoes that (fc6_group_options).
"""
from typing import List

import torch
import torch.nn as nn


def _vgg_end_layers(model) -> tuple:
    trunk, head = model.backbone, model.roi_heads.box_head
    layers = list(trunk.children()) if isinstance(trunk, nn.Sequential) else []
    fc6 = getattr(head, "fc6", None)
    if len(layers) < 2 or not isinstance(layers[-2], nn.Conv2d) or not isinstance(layers[-1], nn.ReLU) \
            or not isinstance(fc6, nn.Linear):
        raise ValueError(f"trunk rescaling needs a trunk ending in conv + ReLU and an fc6 head (VGG-16); "
                         f"{getattr(model, 'backbone_name', type(trunk).__name__)} has neither")
    return layers[-2], fc6


@torch.no_grad()
def trunk_output_rms(model, images: List[torch.Tensor]) -> float:
    """RMS of the trunk output on ``images`` (float RGB in [0, 1], as the detector takes them)."""
    was_training = model.training
    model.eval()  # the test-time resize; the digits recipes train and test at the same size
    try:
        batch, _ = model.transform(images)
        return float(model.backbone(batch.tensors).float().pow(2).mean().sqrt())
    finally:
        model.train(was_training)


@torch.no_grad()
def rescale_trunk_output(model, images: List[torch.Tensor], target_rms: float) -> tuple:
    """Scale conv5_3 by c and fc6's weights by 1/c so the trunk output RMS on ``images`` becomes ``target_rms``.

    Returns (RMS before, c).
    """
    if target_rms <= 0:
        raise ValueError(f"target_rms must be > 0, got {target_rms}")
    conv, fc6 = _vgg_end_layers(model)
    before = trunk_output_rms(model, images)
    if not before > 0:
        raise ValueError(f"the trunk output is all zeros on the {len(images)} calibration images; cannot rescale it")
    factor = target_rms / before
    conv.weight.mul_(factor)
    if conv.bias is not None:
        conv.bias.mul_(factor)
    fc6.weight.div_(factor)
    return before, factor


def rescaled_fc6_weight(model) -> nn.Parameter:
    """The weight that rescale_trunk_output divides (fc6's); it gets the options of fc6_group_options."""
    return _vgg_end_layers(model)[1].weight


def fc6_group_options(factor: float, weight_decay: float) -> dict:
    """Optimizer-group options that give the rescaled fc6 weight the dynamics of the unscaled one.

    With W' = W / c reading c·x, a gradient step on W' moves the layer's function c² times as far as the same step on
    W did (the gradient grows by c, the weights shrink by c); lr / c² and weight decay × c² move it exactly as before.
    """
    return {"lr_factor": 1.0 / factor ** 2, "weight_decay": weight_decay * factor ** 2}
