"""scikit-learn's bundled handwritten digits (UCI optical recognition test set): 1797 real 8×8 images, 10 classes.

Fixed split: stratified by class with ``random_state=0`` into 1437 training and 360 validation images (the same split
on every machine, independent of the run's seed). Pixels (0..16) are scaled to [0, 1], upsampled bilinearly to
``size``×``size`` for the CIFAR-style nets and replicated to 3 channels (``background="black"``), or painted as ink on
the detection set's textured colour canvases (``background="canvas"``, ``digit_canvas.py``; fixed patches per split).
"""
from typing import List, Tuple

import torch
import torch.nn.functional as F

DIGITS_VAL_SIZE = 360
DIGITS_SPLIT_SEED = 0
BACKGROUNDS = ("black", "canvas")
CANVAS_SEEDS = {"train": 1, "val": 2}  # fixed canvas patches per split, independent of the run's seed
CATEGORIES = [str(d) for d in range(10)]


class DigitsDataset(torch.utils.data.Dataset):
    """``split`` "train" (1437 images) or "val" (360); items are (3×size×size float tensor in [0, 1], label)."""

    def __init__(self, split: str = "train", size: int = 16, background: str = "black"):
        if split not in ("train", "val"):
            raise ValueError(f"digits split must be 'train' or 'val', got {split!r}")
        if size < 8:
            raise ValueError(f"digits size must be >= 8 (the native resolution), got {size}")
        if background not in BACKGROUNDS:
            raise ValueError(f"digits background must be one of {BACKGROUNDS}, got {background!r}")
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        indices = list(range(len(digits.target)))
        train_idx, val_idx = train_test_split(
            indices, test_size=DIGITS_VAL_SIZE, stratify=digits.target, random_state=DIGITS_SPLIT_SEED
        )
        chosen = sorted(train_idx if split == "train" else val_idx)
        images = torch.from_numpy(digits.images[chosen]).float().div_(16.0).unsqueeze(1)
        if size != 8:
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp_(0, 1)
        if background == "canvas":
            from .digit_canvas import paint_on_canvas

            painted = paint_on_canvas(images[:, 0].numpy(), CANVAS_SEEDS[split])
            self.images = torch.from_numpy(painted).permute(0, 3, 1, 2).contiguous()
        else:
            self.images = images.expand(-1, 3, -1, -1).contiguous()
        self.labels: List[int] = [int(t) for t in digits.target[chosen]]
        self.categories = CATEGORIES
        self.split = split

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        return self.images[index], self.labels[index]
