"""The exported model's input and output contract, checked at run time by every runtime (tools/infer.py included).

Input: one image, a float32 tensor (or array) [3, H, W], RGB, values in [0, 1], any H and W. Everything else is in
the graph: the pixel convention of the weights (channel order, scale, mean, std), the test resize, padding, the
network, NMS and the mapping of boxes back to the input's pixels. Output: boxes float32 [N, 4] (x1, y1, x2, y2 in
input pixels), scores float32 [N], labels int64 [N] (1..K; label i is ``categories[i - 1]``).
"""
from typing import Any, Dict

import numpy as np
import torch

INPUT_NAME = "image"
OUTPUT_NAMES = ("boxes", "scores", "labels")
CONTRACT = "one image as a float32 [3, H, W] tensor (channels first, RGB, values in [0, 1])"


def input_contract() -> Dict[str, Any]:
    """The contract as written into the JSON beside an exported file."""
    return {"name": INPUT_NAME, "layout": "CHW", "shape": [3, "H", "W"], "dtype": "float32", "channel_order": "RGB",
            "value_range": [0.0, 1.0], "batch": "one image per call",
            "outputs": {"boxes": "float32 [N, 4] x1 y1 x2 y2 in input pixels", "scores": "float32 [N]",
                        "labels": "int64 [N], 1..K, label i is categories[i - 1]"}}


def check_image(image) -> torch.Tensor:
    """``image`` as a float32 CPU-or-device tensor if it meets the contract; otherwise a ValueError naming it."""
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(image)
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"expected {CONTRACT}; got a {type(image).__name__}")
    if image.dtype != torch.float32:
        raise ValueError(f"expected {CONTRACT}; got dtype {str(image.dtype).replace('torch.', '')}"
                         + (" (divide 8-bit pixels by 255)" if image.dtype == torch.uint8 else ""))
    if image.dim() != 3 or image.shape[0] != 3 or image.shape[1] < 1 or image.shape[2] < 1:
        hint = " (channels last: permute(2, 0, 1))" if image.dim() == 3 and image.shape[-1] == 3 else ""
        raise ValueError(f"expected {CONTRACT}; got shape {list(image.shape)}{hint}")
    lo, hi = float(image.min()), float(image.max())
    if not (0.0 <= lo and hi <= 1.0):
        raise ValueError(f"expected {CONTRACT}; got values in [{lo:g}, {hi:g}]")
    return image


def pixels_to_input(pixels: np.ndarray) -> torch.Tensor:
    """An HxWx3 uint8 RGB image (``read_image``) as the model input."""
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float().div_(255.0)


def input_to_pixels(image: torch.Tensor) -> np.ndarray:
    """A model input back to HxWx3 uint8 RGB (for drawing)."""
    return (image.detach().cpu() * 255).round().byte().permute(1, 2, 0).numpy()
