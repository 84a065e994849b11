"""Input transform: torchvision's GeneralizedRCNNTransform with the pixel convention taken from the weights metadata."""
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import torchvision
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from backbones.weights.meta import WeightsMeta


def traced_hw(image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(height, width) of a [C, H, W] image as float64 graph values, for traced exports (float64: Python's floats).

    One-element vectors, not 0-d tensors: the ONNX exporter types 0-d results as float32 scalars.
    """
    hw = torch._shape_as_tensor(image)[-2:].to(torch.float64)
    return hw[0:1], hw[1:2]


def traced_min(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.min(a, b)`` that stays float64 in ONNX (the exporter casts ``Min``/``Max`` inputs to float32)."""
    return torch.where(a < b, a, b)


def traced_max(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(a < b, b, a)


def traced_div(numerator: float, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator`` as one division (the exporter turns ``float / tensor`` into a reciprocal and a
    product, which rounds differently from Python and can move a resized side by a pixel)."""
    return torch.tensor([float(numerator)], dtype=denominator.dtype) / denominator


def interpolate_to(image: torch.Tensor, height: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of a [C, H, W] image to a traced size (rounded down already)."""
    size = (height.long().reshape(()), width.long().reshape(()))
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]


class PixelConventionTransform(GeneralizedRCNNTransform):
    """Normalise ``[0, 1]`` RGB images exactly as the weights expect, then resize and batch as torchvision does.

    The network input is ``(reorder(img, pixel_format) * input_scale - mean) / std`` (``WeightsMeta``), so Caffe/MSRA
    weights (BGR, 0-255, mean only) and torchvision weights (RGB, 0-1, mean/std) both get their own convention.

    Args:
        weights_meta: convention of the backbone weights; never set by hand.
        min_size: shorter side at test time is ``min_size[-1]``; in training one is drawn per image.
        max_size: cap on the longer side.
        resize_in_training: False when the data pipeline already resized training images (albumentations), so the
            model only normalises and batches them; test images are always resized here, and the returned boxes are
            mapped back to the original pixels.
    """

    def __init__(self, weights_meta: WeightsMeta, min_size: Sequence[int], max_size: int, size_divisible: int = 32,
                 resize_in_training: bool = True):
        mean01, std01 = weights_meta.pixel_mean_std_01()
        super().__init__(tuple(int(s) for s in min_size), int(max_size), mean01, std01, size_divisible)
        self.weights_meta = weights_meta
        self.resize_in_training = resize_in_training
        self.register_buffer("_scale", torch.tensor(float(weights_meta.input_scale)), persistent=False)
        self.register_buffer("_mean", torch.tensor(weights_meta.mean).view(3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(weights_meta.std).view(3, 1, 1), persistent=False)
        self._bgr = weights_meta.pixel_format == "BGR"

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        if not image.is_floating_point():
            raise TypeError(f"images must be float tensors in [0, 1] (RGB, CHW); got dtype {image.dtype}")
        if image.shape[0] != 3:
            raise ValueError(f"images must have 3 channels (RGB, CHW); got shape {tuple(image.shape)}")
        if self._bgr:
            image = image.flip(0)
        dtype = image.dtype
        return (image * self._scale.to(dtype) - self._mean.to(dtype)) / self._std.to(dtype)

    def resize(self, image: torch.Tensor,
               target: Optional[Dict[str, torch.Tensor]] = None) -> Tuple[torch.Tensor, Optional[Dict[str, torch.Tensor]]]:
        if self.training and not self.resize_in_training:
            return image, target
        if torchvision._is_tracing() and not self.training:
            # torchvision's traced resize computes the size in float32 and can land 1 px off the eager one
            # (161 * (128 / 161) -> 128, eagerly 127); this is the eager rule in float64.
            h, w = traced_hw(image)
            scale = traced_min(traced_div(self.min_size[-1], traced_min(h, w)),
                               traced_div(self.max_size, traced_max(h, w)))
            return interpolate_to(image, torch.floor(h * scale), torch.floor(w * scale)), target
        return super().resize(image, target)

    def __repr__(self) -> str:
        m = self.weights_meta
        return (f"{type(self).__name__}(pixel_format={m.pixel_format}, input_scale={m.input_scale}, mean={m.mean}, "
                f"std={m.std}, min_size={self.min_size}, max_size={self.max_size}, "
                f"resize_in_training={self.resize_in_training})")
