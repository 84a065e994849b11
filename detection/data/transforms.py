"""Training augmentation with albumentations: the paper's scale rule (optionally multi-scale) and horizontal flip.

Under ``model.conventions: detectron2`` the resize is detectron2's ``ResizeShortestEdge`` (sizes rounded with
``int(x + 0.5)``, PIL bilinear on the uint8 image, as ``ResizeTransform.apply_image``); otherwise the Fast R-CNN scale
rule with OpenCV's bilinear resize.

Randomness comes only from a per-sample seed (``apply(image, boxes, labels, seed)``), so the augmented sample is
a pure function of (run seed, position in the sample stream): independent of DataLoader workers and identical after
a resume.
"""
from typing import Any, Dict, Sequence, Tuple

import albumentations as A
import cv2
import numpy as np

from PIL import Image

from backbones.utils.rng import derive_seed


def scale_for(height: int, width: int, short_side: int, max_size: int) -> float:
    """The Fast/Faster R-CNN rule: shorter side → ``short_side`` unless the longer side would exceed ``max_size``."""
    return min(short_side / min(height, width), max_size / max(height, width))


def detectron2_resized_shape(h: int, w: int, short_edge: int, max_size: int) -> Tuple[int, int]:
    """``ResizeShortestEdge.get_output_shape``: the (height, width) detectron2 resizes an image to."""
    size = short_edge * 1.0
    scale = size / min(h, w)
    newh, neww = (size, scale * w) if h < w else (scale * h, size)
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    return int(newh + 0.5), int(neww + 0.5)


class ResizeShortestEdge(A.DualTransform):
    """Resize so the shorter side is one of ``short_sides`` (drawn per image) and the longer side <= ``max_size``.

    Boxes are carried by albumentations in normalised coordinates, which a resize leaves unchanged.
    ``detectron2``: detectron2's output size and PIL resampling (see the module docstring).
    """

    def __init__(self, short_sides: Sequence[int], max_size: int, interpolation: int = cv2.INTER_LINEAR, p: float = 1.0,
                 detectron2: bool = False):
        super().__init__(p=p)
        self.short_sides = [int(s) for s in short_sides]
        self.max_size = int(max_size)
        self.interpolation = interpolation
        self.detectron2 = bool(detectron2)

    def get_params_dependent_on_data(self, params: Dict[str, Any], data: Dict[str, Any]) -> Dict[str, Any]:
        height, width = params["shape"][:2]
        short = self.short_sides[self.py_random.randrange(len(self.short_sides))] if len(self.short_sides) > 1 \
            else self.short_sides[0]
        if self.detectron2:
            return {"out_hw": detectron2_resized_shape(height, width, short, self.max_size)}
        scale = scale_for(height, width, short, self.max_size)
        return {"out_hw": (max(1, int(round(height * scale))), max(1, int(round(width * scale))))}

    def apply(self, img: np.ndarray, out_hw: Tuple[int, int] = (0, 0), **params) -> np.ndarray:
        if img.shape[:2] == tuple(out_hw):
            return img
        if self.detectron2 and img.dtype == np.uint8:
            return np.asarray(Image.fromarray(img).resize((out_hw[1], out_hw[0]), Image.BILINEAR))
        return cv2.resize(img, (out_hw[1], out_hw[0]), interpolation=self.interpolation)

    def apply_to_bboxes(self, bboxes: np.ndarray, **params) -> np.ndarray:
        return bboxes

    def get_transform_init_args_names(self) -> Tuple[str, ...]:
        return ("short_sides", "max_size", "interpolation", "detectron2")


class TrainAugmentation:
    """Scale rule + horizontal flip on HxWx3 uint8 images with xyxy pixel boxes."""

    def __init__(self, short_sides: Sequence[int], max_size: int, hflip_prob: float = 0.5, conventions: str = "torchvision"):
        self.short_sides, self.max_size, self.hflip_prob = list(short_sides), int(max_size), float(hflip_prob)
        self.conventions = conventions
        resize = ResizeShortestEdge(short_sides, max_size, detectron2=conventions == "detectron2")
        self.pipeline = A.Compose(
            [resize, A.HorizontalFlip(p=hflip_prob)],
            bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"], clip=True),
            strict=True,
        )

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, seed: int):
        # One independent stream per transform: sharing a seed would tie the flip to the scale choice.
        self.pipeline.set_random_seed(derive_seed(seed, 0))
        for i, t in enumerate(self.pipeline.transforms, 1):
            t.set_random_seed(derive_seed(seed, i))
        out = self.pipeline(image=image, bboxes=boxes.reshape(-1, 4), labels=labels)
        out_boxes = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)
        return out["image"], out_boxes, np.asarray(out["labels"], np.int64)

    def __repr__(self) -> str:
        return (f"TrainAugmentation(short_sides={self.short_sides}, max_size={self.max_size}, "
                f"hflip_prob={self.hflip_prob}, conventions={self.conventions!r})")
