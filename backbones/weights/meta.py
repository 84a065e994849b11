"""Weights metadata: the pixel convention and layout that travel with every set of weights."""
from dataclasses import asdict, dataclass, field, fields
from typing import List, Optional, Tuple

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
# Caffe / MSRA / py-faster-rcnn BGR pixel means on a 0-255 scale (no std division).
MSRA_MEAN_BGR = (102.9801, 115.9465, 122.7717)


@dataclass
class WeightsMeta:
    """How a network expects its input, and where its weights came from.

    A float RGB image ``img`` in [0, 1] becomes the network input as
    ``(reorder(img, pixel_format) * input_scale - mean) / std`` per channel, in ``pixel_format`` channel order.
    """

    arch: str = ""
    source: str = "scratch"
    pixel_format: str = "RGB"
    input_scale: float = 1.0
    mean: Tuple[float, float, float] = IMAGENET_MEAN_RGB
    std: Tuple[float, float, float] = IMAGENET_STD_RGB
    stride_in_1x1: Optional[bool] = None
    num_classes: Optional[int] = None
    categories: Optional[List[str]] = None
    norm: Optional[str] = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.pixel_format not in ("RGB", "BGR"):
            raise ValueError(f"pixel_format must be 'RGB' or 'BGR', got {self.pixel_format!r}")
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need 3 values (one per channel)")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "WeightsMeta":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown weights-metadata keys {unknown}; expected a subset of {sorted(known)}")
        return cls(**d)

    def pixel_mean_std_01(self):
        """Mean and std expressed for [0, 1] inputs in ``pixel_format`` order (what GeneralizedRCNNTransform takes)."""
        return ([m / self.input_scale for m in self.mean], [s / self.input_scale for s in self.std])
