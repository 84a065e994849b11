"""Single-level RoI pooling for the C4 head: RoIAlign or RoIPool on the stride-16 trunk map.

torchvision's ``FasterRCNN`` only accepts ``MultiScaleRoIAlign``; this module keeps the call signature ``RoIHeads``
uses (``pooler(features, proposals, image_shapes)``) while pooling one map at a fixed ``1/stride`` scale, which is
what the paper's C4 design does ("RoI pooling before conv5_1").
"""
from typing import Dict, List, Tuple

import torch
import torch.nn as nn
from torchvision.ops import roi_align, roi_pool

POOLER_TYPES = ("align", "pool")


class SingleLevelRoIPooler(nn.Module):
    """Pool every proposal from feature map ``feature_name`` to ``output_size``×``output_size``.

    Args:
        output_size: pooled side (14 before res5, 7 before VGG's fc6).
        stride: trunk stride; the boxes (input-image pixels) are scaled by ``1/stride``.
        kind: "align" (RoIAlign) or "pool" (RoIPool, the original Fast R-CNN max pooling).
        sampling_ratio: RoIAlign samples per bin side (0 = adaptive, as detectron2's C4 configs).
        aligned: RoIAlign half-pixel correction (detectron2's ROIAlignV2); False reproduces the legacy op.
    """

    def __init__(self, output_size: int, stride: int, kind: str = "align", sampling_ratio: int = 0,
                 aligned: bool = True, feature_name: str = "0"):
        super().__init__()
        if kind not in POOLER_TYPES:
            raise ValueError(f"RoI pooler type must be one of {POOLER_TYPES}, got {kind!r}")
        if output_size < 1 or stride < 1:
            raise ValueError(f"output_size and stride must be >= 1, got {output_size} and {stride}")
        self.output_size = (int(output_size), int(output_size))
        self.spatial_scale = 1.0 / stride
        self.kind = kind
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = bool(aligned)
        self.feature_name = feature_name

    def forward(self, features: Dict[str, torch.Tensor], proposals: List[torch.Tensor],
                image_shapes: List[Tuple[int, int]]) -> torch.Tensor:
        x = features[self.feature_name]
        boxes = [b.to(x.dtype) for b in proposals]
        if self.kind == "align":
            return roi_align(x, boxes, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)
        return roi_pool(x, boxes, self.output_size, self.spatial_scale)

    def extra_repr(self) -> str:
        extra = f", sampling_ratio={self.sampling_ratio}, aligned={self.aligned}" if self.kind == "align" else ""
        return f"kind={self.kind}, output_size={self.output_size}, spatial_scale={self.spatial_scale}{extra}"
