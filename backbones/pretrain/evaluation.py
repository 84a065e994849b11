"""Classification test protocols of the paper, reported as top-1/top-5 error (%).

- "single": the stored image as is (CIFAR-10, digits: "the single view of the original 32×32 image").
- "1crop": shorter side 256, centre 224 crop (torchvision's and the released models' 1-crop numbers).
- "10crop": shorter side 256, four corner and centre 224 crops plus their mirrors; softmax scores averaged (the
  paper's "standard 10-crop testing" used for its comparison tables).
- "multiscale": fully-convolutional — the whole image at each shorter side in {224, 256, 384, 480, 640} and its
  mirror; the network's global average pool makes its fc score the spatial mean of the fc applied as a 1×1 conv at
  every position; softmax scores are averaged over scales and mirrors (the paper's "best results" protocol).
  VGG-16's fc layers need a 7×7 input, which its adaptive pool provides, so for VGG this is an approximation.

Under DDP every process scores a disjoint share of the images and the counts are summed.
"""
import math
from contextlib import nullcontext
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..utils.dist import all_reduce_sum, get_rank, get_world_size
from ..utils.progress import track
from .transforms import EvalTransform


class _EvalViews(Dataset):
    def __init__(self, base: Dataset, indices: List[int], transform: EvalTransform):
        self.base, self.indices, self.transform = base, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        image, label = self.base[self.indices[i]]
        return self.transform(image), label


def _collate_lists(batch):
    return [views for views, _ in batch], torch.tensor([label for _, label in batch])


def _scores(model, views, protocol: str, flip: bool, device, autocast, channels_last: bool) -> torch.Tensor:
    """Averaged softmax scores, one row per image."""
    def run(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            return F.softmax(model(x).float(), dim=1)

    if protocol in ("single", "1crop"):
        return run(views)
    if protocol == "10crop":
        b, n = views.shape[:2]
        return run(views.flatten(0, 1)).view(b, n, -1).mean(1)
    rows = []
    for per_scale in views:  # multiscale: one image at a time, its scales differ in size
        total = 0.0
        for v in per_scale:
            x = torch.stack([v, v.flip(-1)]) if flip else v.unsqueeze(0)
            total = total + run(x).mean(0)
        rows.append(total / len(per_scale))
    return torch.stack(rows)


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: Dataset, protocol: str, mean: Sequence[float], std: Sequence[float],
             device: torch.device = torch.device("cpu"), resize: int = 256, crop: int = 224,
             scales: Sequence[int] = (224, 256, 384, 480, 640), flip: bool = True, batch_size: int = 64,
             max_images: int = 0, num_workers: int = 0, amp_dtype: Optional[torch.dtype] = None,
             channels_last: bool = False, progress: bool = False, return_scores: bool = False) -> Dict[str, Any]:
    """Top-1/top-5 error (%) of ``model`` on ``dataset`` (items (image, label)) with ``protocol``.

    Returns ``{"top1_err", "top5_err", "images", "protocol"}``; ``images`` counts all processes. With
    ``return_scores``, also ``"scores"``: this process's averaged softmax scores, one row per image it scored.
    """
    count = len(dataset) if not max_images else min(max_images, len(dataset))
    indices = list(range(count))[get_rank()::get_world_size()]
    transform = EvalTransform(protocol, mean, std, resize, crop, scales)
    views = _EvalViews(dataset, indices, transform)
    multiscale = protocol == "multiscale"
    loader = DataLoader(views, batch_size=1 if multiscale else batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=_collate_lists if multiscale else None, pin_memory=device.type == "cuda")
    if amp_dtype is not None:
        def autocast():
            return torch.autocast(device.type, dtype=amp_dtype)
    else:
        autocast = nullcontext
    was_training = model.training
    model.eval()
    counts = torch.zeros(3, dtype=torch.float64)
    all_scores = []
    try:
        for batch_views, labels in track(loader, f"eval {protocol}", enabled=progress):
            scores = _scores(model, batch_views, protocol, flip, device, autocast, channels_last).cpu()
            if return_scores:
                all_scores.append(scores)
            k = min(5, scores.shape[1])
            top = scores.topk(k, dim=1).indices
            hits = top.eq(labels.view(-1, 1))
            counts += torch.tensor([hits[:, 0].sum().item(), hits.any(1).sum().item(), len(labels)],
                                   dtype=torch.float64)
    finally:
        model.train(was_training)
    counts = all_reduce_sum(counts.to(device)).cpu()
    top1, top5, n = counts.tolist()
    result: Dict[str, Any] = {"top1_err": math.nan, "top5_err": math.nan, "images": int(n), "protocol": protocol}
    if n:
        result.update(top1_err=100.0 * (1 - top1 / n), top5_err=100.0 * (1 - top5 / n))
    if return_scores:
        result["scores"] = torch.cat(all_scores) if all_scores else torch.zeros(0)
    return result
