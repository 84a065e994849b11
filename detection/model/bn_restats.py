"""Re-estimate the backbone's BatchNorm statistics on detection inputs before training (``model.bn_restats_images``).

A classifier pretrained on small images carries BatchNorm means and variances measured on those images. A C4 detector
runs its trunk on whole detection images and its head on RoIs, and where activation statistics depend on the input
size the pretrained statistics no longer normalise: on digits, plain34 pretrained on 48-px images reads ground-truth
RoIs at 7 % top-1 (chance 10 %), and its detector never learns to classify (docs/DETECTION.md). Measuring the
statistics again on the detector's own inputs (as AdaBN does for a new domain, with detectron2's precise-BN
averaging) keeps the learned filters and only re-centres them: the trunk's norms on training images, the head's on
the RoIs that the RoI heads sample at the first iteration. FrozenBatchNorm2d and BatchNorm2d layers are both updated.
"""
from typing import Dict, List, Sequence

import torch
import torch.nn as nn
from torchvision.ops import FrozenBatchNorm2d

NORMS = (FrozenBatchNorm2d, nn.BatchNorm2d)


class _Moments:
    """Inside ``with``, each norm layer normalises with its batch's statistics (as in training) and accumulates the
    first and second moments of its input over all batches; on a normal exit their mean and variance are stored,
    on an exception the previous statistics come back."""

    def __init__(self, module: nn.Module):
        self.norms = [m for m in module.modules() if isinstance(m, NORMS)]

    def __enter__(self) -> "_Moments":
        self.sums: Dict[nn.Module, List] = {m: [0.0, 0.0, 0] for m in self.norms}
        self.saved = {m: (m.running_mean.clone(), m.running_var.clone()) for m in self.norms}
        self.handles = [m.register_forward_pre_hook(self._hook) for m in self.norms]
        self.modes = {m: m.training for m in self.norms}
        for m in self.norms:
            m.eval()  # BatchNorm2d then reads the buffers this hook sets
        return self

    def _hook(self, module: nn.Module, inputs) -> None:
        x = inputs[0].detach().float()
        mean = x.mean(dim=(0, 2, 3))
        square = x.pow(2).mean(dim=(0, 2, 3))
        count = x.numel() // x.shape[1]
        acc = self.sums[module]
        acc[0], acc[1], acc[2] = acc[0] + mean * count, acc[1] + square * count, acc[2] + count
        module.running_mean.copy_(mean)
        module.running_var.copy_((square - mean.pow(2)).clamp_(min=0))

    def __exit__(self, error_type, error, traceback) -> None:
        commit = error_type is None
        for handle in self.handles:
            handle.remove()
        for m in self.norms:
            total, square, count = self.sums[m]
            if commit and count:
                mean = total / count
                m.running_mean.copy_(mean)
                m.running_var.copy_((square / count - mean.pow(2)).clamp_(min=0))
            else:
                m.running_mean.copy_(self.saved[m][0])
                m.running_var.copy_(self.saved[m][1])
            m.train(self.modes[m])


def _batches(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


@torch.no_grad()
def restat_batchnorm(model, images: Sequence[torch.Tensor], targets: Sequence[dict], batch_size: int) -> Dict[str, int]:
    """Replace the running statistics of the trunk's and the box head's norm layers by those of the detector's inputs.

    Args:
        model: a ``FasterRCNNC4`` before ``prepare_for_training`` (which folds the norms into the convolutions).
        images, targets: training images (float RGB in [0, 1]) and their targets, as the training loop feeds them.
        batch_size: images per forward pass (the training batch, so the head sees the training RoI mix).
    Returns the number of norm layers updated in the trunk and in the head.
    """
    if not images:
        raise ValueError("BatchNorm re-estimation needs at least one training image")
    was_training = model.training
    trunk, head = model.backbone, model.roi_heads.box_head
    try:
        model.train()  # the training transform (no resize of augmented images) and the RPN's training proposals
        pairs = list(zip(images, targets))
        batches = [model.transform([img for img, _ in batch], [dict(t) for _, t in batch])
                   for batch in _batches(pairs, batch_size)]
        with _Moments(trunk) as trunk_norms:
            for tensors, _ in batches:
                trunk(tensors.tensors)
        # The head's RoIs: the untrained RPN's proposals with the ground truth added, sampled as at iteration 0.
        trunk.eval()  # a trainable-BN trunk now normalises with its new statistics
        with _Moments(head) as head_norms:
            for tensors, batch_targets in batches:
                features = {"0": trunk(tensors.tensors)}
                proposals, _ = model.rpn(tensors, features, batch_targets)
                proposals, _, _, _ = model.roi_heads.select_training_samples(proposals, batch_targets)
                head(model.roi_heads.box_roi_pool(features, proposals, tensors.image_sizes))
        return {"trunk": len(trunk_norms.norms), "head": len(head_norms.norms)}
    finally:
        model.train(was_training)
