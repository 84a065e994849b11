"""scikit-learn's bundled handwritten digits (UCI optical recognition test set): 1797 real 8×8 images, 10 classes.

Fixed split: stratified by class with ``random_state=0`` into 1437 training and 360 validation images (the same split
on every machine, independent of the run's seed). Pixels (0..16) are scaled to [0, 1], upsampled bilinearly to
``size``×``size`` for the CIFAR-style nets and replicated to 3 channels (``background="black"``), or painted as ink on
the detection set's textured colour canvases (``background="canvas"``, ``digit_canvas.py``; fixed patches per split),
or drawn as on a detection canvas (``background="context"``: a digit ``heights`` px tall anywhere on a ``size``-px
texture, redrawn for every (epoch, index) of training through ``sample``; validation images are drawn once at
``size``). ``train_sizes`` cycles the training side length by epoch, so every batch has one size and a net cannot
tie its features to one image size (one epoch never shares a batch with the next: the sampler drops partial batches).
"""
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

DIGITS_VAL_SIZE = 360
DIGITS_SPLIT_SEED = 0
BACKGROUNDS = ("black", "canvas", "context")
CANVAS_SEEDS = {"train": 1, "val": 2}  # fixed canvas patches per split, independent of the run's seed
CATEGORIES = [str(d) for d in range(10)]


class DigitsDataset(torch.utils.data.Dataset):
    """``split`` "train" (1437 images) or "val" (360); items are (3×size×size float tensor in [0, 1], label)."""

    def __init__(self, split: str = "train", size: int = 16, background: str = "black",
                 heights: Sequence[int] = (12, 40), curriculum_epochs: int = 0, train_sizes: Sequence[int] = ()):
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
        self.labels: List[int] = [int(t) for t in digits.target[chosen]]
        self.categories = CATEGORIES
        self.split = split
        self.size, self.heights = size, tuple(int(h) for h in heights)
        self.curriculum_epochs = int(curriculum_epochs)
        self.train_sizes = tuple(int(v) for v in train_sizes)
        if self.train_sizes and background != "context":
            raise ValueError(f"digits train_sizes need background 'context', got {background!r}")
        self._alphas: Optional[np.ndarray] = None
        if background == "context":
            smallest = min((size,) + self.train_sizes)
            if not 4 <= self.heights[0] <= self.heights[1] <= smallest:
                raise ValueError(f"digits heights must satisfy 4 <= low <= high <= the smallest size ({smallest}), "
                                 f"got {list(heights)}")
            self._alphas = images[:, 0].numpy()
            if split == "val":
                self.images = torch.stack([self._draw(i, np.random.default_rng((CANVAS_SEEDS[split], i)))
                                           for i in range(len(self.labels))])
            return
        if size != 8:
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp_(0, 1)
        if background == "canvas":
            from .digit_canvas import paint_on_canvas

            painted = paint_on_canvas(images[:, 0].numpy(), CANVAS_SEEDS[split])
            self.images = torch.from_numpy(painted).permute(0, 3, 1, 2).contiguous()
        else:
            self.images = images.expand(-1, 3, -1, -1).contiguous()

    def __len__(self) -> int:
        return len(self.labels)

    def _draw(self, index: int, rng: np.random.Generator, ease: float = 0.0, size: int = 0) -> torch.Tensor:
        from .digit_canvas import paint_in_context

        painted = paint_in_context(self._alphas[index], size or self.size, self.heights, rng, ease)
        return torch.from_numpy(painted).permute(2, 0, 1).contiguous()

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        if self._alphas is not None and self.split == "train":
            return self._draw(index, np.random.default_rng((CANVAS_SEEDS[self.split], index))), self.labels[index]
        return self.images[index], self.labels[index]

    def sample(self, index: int, generator: torch.Generator, epoch: int = 0) -> Tuple[torch.Tensor, int]:
        """Item ``index`` for one training draw: with ``background="context"`` a fresh drawing per generator.

        With ``curriculum_epochs`` E > 0, epoch e < E draws an easier image (``paint_in_context``'s ease 1 - e/E:
        larger digits, fainter texture); from epoch E on, the full task. Deep nets without a curriculum stay at
        chance for hundreds of iterations on small digits in texture (docs/DETECTION.md). With ``train_sizes``, epoch
        e draws ``train_sizes[e % len(train_sizes)]``-px images.
        """
        if self._alphas is None or self.split != "train":
            return self[index]
        seed = int(torch.randint(0, 2 ** 31 - 1, (1,), generator=generator))
        ease = max(0.0, 1.0 - epoch / self.curriculum_epochs) if self.curriculum_epochs else 0.0
        size = self.train_sizes[epoch % len(self.train_sizes)] if self.train_sizes else self.size
        return self._draw(index, np.random.default_rng(seed), ease, size), self.labels[index]
