"""Multi-scale testing as the paper does it (Appendix B, after SPPnet / NoC): ``test.multiscale: maxout``.

Only the Fast R-CNN step sees the pyramid: the RPN runs at the single test scale (``input.min_size_test``), the trunk
also runs on the batch resized by ``s / min_size_test`` for each shorter side ``s`` in ``test.scales``, and each RoI is
pooled from the two adjacent scales at which it comes closest to the head's canonical size (``pooled side × stride``:
one feature cell per RoI bin, 224 px for the ResNet C4 head), the pooled features merged by elementwise max (maxout).
"""
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F


def scale_pairs(boxes: torch.Tensor, factors: Sequence[float], canonical: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """For each box (base-scale pixels), the indices of the two adjacent ``factors`` closest to ``canonical`` size.

    The nearest scale (by the log of the ratio of the box's scaled side, sqrt of its area, to ``canonical``) and its
    neighbour on the side of ``canonical`` (the next larger scale when the box is still smaller there); with one
    scale, or at either end of the pyramid, both indices may be the same.
    """
    f = torch.as_tensor(list(factors), dtype=torch.float32, device=boxes.device)
    side = ((boxes[:, 2] - boxes[:, 0]).clamp(min=1e-6) * (boxes[:, 3] - boxes[:, 1]).clamp(min=1e-6)).sqrt()
    log_ratio = torch.log(side[:, None] * f[None, :] / canonical)  # [R, S], increasing along the scales
    nearest = log_ratio.abs().argmin(dim=1)
    below = log_ratio.gather(1, nearest[:, None])[:, 0] < 0
    other = (nearest + torch.where(below, 1, -1)).clamp(0, len(f) - 1)
    return torch.minimum(nearest, other), torch.maximum(nearest, other)


def pyramid_features(backbone, batch: torch.Tensor, base: torch.Tensor, factors: Sequence[float]) -> List[torch.Tensor]:
    """The trunk's feature map at each factor (``base`` reused at factor 1)."""
    out = []
    for f in factors:
        if f == 1.0:
            out.append(base)
        else:
            out.append(backbone(F.interpolate(batch, scale_factor=float(f), mode="bilinear", align_corners=False,
                                              recompute_scale_factor=False)))
    return out


def maxout_pool(pooler, pyramid: List[torch.Tensor], factors: Sequence[float], boxes: List[torch.Tensor],
                image_shapes: List[Tuple[int, int]], canonical: float) -> torch.Tensor:
    """Each RoI pooled at its two scales (``scale_pairs``) and merged by elementwise max; rows in ``boxes`` order."""
    counts = [len(b) for b in boxes]
    flat = torch.cat(boxes)
    image_of = torch.repeat_interleave(torch.arange(len(boxes), device=flat.device),
                                       torch.as_tensor(counts, device=flat.device))
    first, second = scale_pairs(flat, factors, canonical)
    out = None
    for k, f in enumerate(factors):
        rows = torch.where((first == k) | (second == k))[0]
        if len(rows) == 0:
            continue
        per_image = [flat[rows[image_of[rows] == i]] * f for i in range(len(boxes))]
        shapes = [(int(round(h * f)), int(round(w * f))) for h, w in image_shapes]
        # rows grouped by image, as the pooler returns them
        order = torch.cat([rows[image_of[rows] == i] for i in range(len(boxes))])
        values = pooler({"0": pyramid[k]}, per_image, shapes)
        if out is None:
            out = values.new_full((len(flat), *values.shape[1:]), float("-inf"))
        out[order] = torch.maximum(out[order], values)
    if out is None:  # no RoI at all
        return pooler({"0": pyramid[0]}, boxes, image_shapes)
    return out
