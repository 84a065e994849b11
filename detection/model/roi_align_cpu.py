"""RoIAlign for CPU inference as two small matrix products per RoI, written straight into an NHWC output.

torchvision's CPU ``roi_align`` runs scalar code on one thread over NCHW, zero-fills its output and returns NCHW,
which a channels_last head then copies again; for 300 RoIs × 1024 channels × 14 × 14 that is 10-20% of a C4
detector's CPU time. RoIAlign's bilinear sampling and bin averaging are separable in y and x: the zero rule for
samples outside the map (``y < -1 or y > H``, same for x) and the clamping act on each coordinate alone, and the
average over a ``gh × gw`` grid is the product of an average over rows and one over columns. So for one RoI

    out[p, q, c] = sum_h sum_w Ay[p, h] Ax[q, w] F[h, w, c]

with ``Ay`` (P × rows) and ``Ax`` (P × cols) holding the averaged bilinear weights. Restricted to the rows and
columns the RoI touches, that is ``Ay @ F_window`` then a batched ``Ax @ ·``: BLAS-speed work, no zero fill, the
result lands in NHWC memory in the head's dtype. Same semantics as torchvision's kernel (``aligned``, adaptive or
fixed ``sampling_ratio``); equal up to float rounding (tests/test_optimize.py). Inference only: no backward.
"""
from typing import List, Optional, Tuple

import torch
import torch.nn as nn


def _axis_weights(start: torch.Tensor, extent: torch.Tensor, pooled: int, grid: torch.Tensor, length: int):
    """Per RoI and bin, the two bilinear taps of every sample along one axis: (index, weight), each [R, P, G, 2].

    Weights already include the 1/grid of the bin average; samples beyond the RoI's own grid get weight 0.
    """
    dtype = start.dtype
    g = grid.to(dtype)
    bin_size = extent / pooled
    p = torch.arange(pooled, dtype=dtype)
    i = torch.arange(max(int(grid.max()), 1), dtype=dtype)
    pos = start[:, None, None] + p[None, :, None] * bin_size[:, None, None] \
        + (i[None, None, :] + 0.5) * (bin_size / g)[:, None, None]
    valid = (i[None, None, :] < g[:, None, None]) & (pos >= -1.0) & (pos <= length)
    pos = pos.clamp(min=0)
    low = pos.floor().long()
    at_end = low >= length - 1
    low = torch.where(at_end, torch.full_like(low, length - 1), low)
    high = torch.where(at_end, low, low + 1)
    frac = torch.where(at_end, torch.zeros_like(pos), pos - low.to(dtype))
    weight = torch.stack([1 - frac, frac], -1) * (valid.to(dtype) / g[:, None, None])[..., None]
    return torch.stack([low, high], -1), weight


def _window_weights(index: torch.Tensor, weight: torch.Tensor, pooled: int) -> Tuple[torch.Tensor, ...]:
    """Dense per-RoI weight matrices over the span of rows (or columns) each RoI touches: (start, span, W [R, P, L])."""
    rois = index.shape[0]
    used = weight > 0
    big = torch.iinfo(index.dtype).max
    start = torch.where(used, index, big).flatten(1).min(1).values
    stop = torch.where(used, index, -1).flatten(1).max(1).values + 1
    span = (stop - start).clamp(min=0)
    start = torch.where(span > 0, start, torch.zeros_like(start))
    width = max(int(span.max()) if rois else 0, 1)
    matrix = torch.zeros(rois, pooled, width, dtype=weight.dtype)
    rel = (index - start[:, None, None, None]).clamp(0, width - 1)
    matrix.scatter_add_(2, rel.flatten(2), weight.flatten(2))
    return start, span, matrix


def roi_align_nhwc(features: torch.Tensor, boxes: List[torch.Tensor], output_size: int, spatial_scale: float,
                   sampling_ratio: int = 0, aligned: bool = True,
                   out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``torchvision.ops.roi_align(features, boxes, ...)`` for CPU tensors, returned as a channels_last tensor.

    Args:
        features: [N, C, H, W] (any memory format, any float dtype; computed in float32).
        boxes: one [R_i, 4] xyxy tensor per image, in input-image pixels.
        out_dtype: dtype of the result (default: the features'); bf16 saves the head its own cast.
    """
    n, channels, height, width = features.shape
    if len(boxes) != n:
        raise ValueError(f"got {len(boxes)} box tensors for {n} feature maps")
    with torch.autocast("cpu", enabled=False):  # the weights and sums stay float32 under bf16 autocast
        return _roi_align_nhwc(features, boxes, output_size, spatial_scale, sampling_ratio, aligned, out_dtype)


def _roi_align_nhwc(features, boxes, output_size, spatial_scale, sampling_ratio, aligned, out_dtype):
    n, channels, height, width = features.shape
    pooled = int(output_size)
    dtype = out_dtype or features.dtype
    total = sum(int(b.shape[0]) for b in boxes)
    out = torch.empty(total, pooled, pooled, channels, dtype=dtype)
    scratch = torch.empty(pooled, pooled, channels) if dtype != torch.float32 else None
    first = 0
    offset = 0.5 if aligned else 0.0
    for image, image_boxes in enumerate(boxes):
        rois = int(image_boxes.shape[0])
        if rois == 0:
            continue
        hwc = features[image].permute(1, 2, 0).float().contiguous().reshape(-1)
        base = hwc.storage_offset()  # as_strided offsets count from the storage, not from this view
        x1, y1, x2, y2 = (image_boxes.float() * spatial_scale - offset).unbind(1)
        roi_w, roi_h = x2 - x1, y2 - y1
        if not aligned:
            roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
        if sampling_ratio > 0:
            grid_h = grid_w = torch.full((rois,), int(sampling_ratio), dtype=torch.long)
        else:
            grid_h, grid_w = torch.ceil(roi_h / pooled).long(), torch.ceil(roi_w / pooled).long()
        y0, ly, ay = _window_weights(*_axis_weights(y1, roi_h, pooled, grid_h, height), pooled)
        x0, lx, ax = _window_weights(*_axis_weights(x1, roi_w, pooled, grid_w, width), pooled)
        for r, (top, rows, left, cols) in enumerate(zip(y0.tolist(), ly.tolist(), x0.tolist(), lx.tolist())):
            target = out[first + r]
            if rows == 0 or cols == 0:
                target.zero_()
                continue
            window = hwc.as_strided((rows, cols * channels), (width * channels, 1),
                                    base + (top * width + left) * channels)
            by_rows = torch.mm(ay[r, :, :rows], window).view(pooled, cols, channels)
            weights_x = ax[r, :, :cols].expand(pooled, pooled, cols)
            if scratch is None:
                torch.matmul(weights_x, by_rows, out=target)
            else:
                torch.matmul(weights_x, by_rows, out=scratch)
                target.copy_(scratch)
        first += rois
    return out.permute(0, 3, 1, 2)


class SeparableRoIAlign(nn.Module):
    """Drop-in for ``SingleLevelRoIPooler(kind="align")`` on CPU inference (see the module docstring)."""

    def __init__(self, pooler: nn.Module, out_dtype: Optional[torch.dtype] = None):
        super().__init__()
        if getattr(pooler, "kind", None) != "align":
            raise ValueError("SeparableRoIAlign replaces RoIAlign poolers only")
        self.output_size = pooler.output_size[0]
        self.spatial_scale = pooler.spatial_scale
        self.sampling_ratio = pooler.sampling_ratio
        self.aligned = pooler.aligned
        self.feature_name = pooler.feature_name
        self.out_dtype = out_dtype

    def forward(self, features, proposals: List[torch.Tensor], image_shapes: List[Tuple[int, int]]) -> torch.Tensor:
        x = features[self.feature_name]
        if x.device.type != "cpu" or torch.is_grad_enabled():
            raise RuntimeError("SeparableRoIAlign is for CPU inference (no autograd)")
        return roi_align_nhwc(x, proposals, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned,
                              self.out_dtype)

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}, out_dtype={self.out_dtype}")
