"""Faster R-CNN C4 model: builder, single-level RoI pooler, boundary-aware RPN, pixel-convention transform."""
from .detector import FasterRCNNC4, build_detector
from .pooler import SingleLevelRoIPooler
from .rpn import BoundaryAwareRPN
from .transform import PixelConventionTransform

__all__ = ["FasterRCNNC4", "build_detector", "SingleLevelRoIPooler", "BoundaryAwareRPN", "PixelConventionTransform"]
