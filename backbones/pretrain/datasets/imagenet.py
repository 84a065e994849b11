"""ImageNet (ILSVRC-2012) in the standard class-folder layout: ``ROOT/{train,val}/<wnid>/*.JPEG``.

Any folder tree of that shape works (tests use tiny generated ones). Images are decoded with PIL, EXIF-rotated and
converted to RGB (grayscale, CMYK and alpha images included). An unreadable image either stops the run with its path
(``on_error="raise"``) or is replaced by the next readable image of the list with a warning (``"skip"``), which
keeps the batch composition a deterministic function of the index.
"""
import os
import sys
from pathlib import Path
from typing import List, Tuple

import torch
from PIL import Image, ImageOps

from .errors import DatasetError, DatasetNotFoundError

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp")
ON_ERROR = ("raise", "skip")
MAX_CONSECUTIVE_BAD = 16
LAYOUT_HELP = (
    "expected {root}/train/<wnid>/*.JPEG and {root}/val/<wnid>/*.JPEG (ILSVRC-2012: 1000 class folders named like "
    "n01440764, 1.28M training and 50k validation images). Get ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar "
    "from https://image-net.org/download-images (free account, non-commercial terms), untar each per-class tar of "
    "the training set into train/<wnid>/, and sort the validation images into val/<wnid>/ with the devkit's "
    "ground truth (e.g. the widely used valprep.sh)"
)


def _scan(split_dir: Path) -> Tuple[List[str], List[Tuple[str, int]]]:
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    samples = []
    for label, wnid in enumerate(classes):
        folder = split_dir / wnid
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS):
                samples.append((str(folder / entry.name), label))
    return classes, samples


def load_rgb(path: str) -> Image.Image:
    """Decode ``path`` fully (so truncated files fail here), apply its EXIF orientation and convert to RGB."""
    with Image.open(path) as image:
        image.load()
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            background = Image.new("RGB", image.size, (255, 255, 255))  # flatten alpha onto white
            background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
            return background
        return image.convert("RGB")


class ImageFolderDataset(torch.utils.data.Dataset):
    """Items are (PIL RGB image, label); class index = position of the wnid in the sorted training folder list."""

    def __init__(self, root, split: str = "train", on_error: str = "raise", classes: List[str] = None):
        if on_error not in ON_ERROR:
            raise ValueError(f"data.on_error must be one of {ON_ERROR}, got {on_error!r}")
        root = Path(root)
        split_dir = root / split
        if not split_dir.is_dir():
            raise DatasetNotFoundError(
                f"ImageNet-style data not found: {split_dir} is not a folder; " + LAYOUT_HELP.format(root=root)
            )
        found, samples = _scan(split_dir)
        if not samples:
            raise DatasetNotFoundError(
                f"ImageNet-style data not found: {split_dir} holds no images in class folders; "
                + LAYOUT_HELP.format(root=root)
            )
        if classes is not None and found != list(classes):
            extra, missing = sorted(set(found) - set(classes)), sorted(set(classes) - set(found))
            raise DatasetError(
                f"{split_dir}: class folders differ from the training set's (unknown: {extra[:5]}, "
                f"missing: {missing[:5]}); {split} must use the same wnid folders as train"
            )
        self.root = root
        self.split = split
        self.categories = found
        self.samples = samples
        self.labels = [label for _, label in samples]
        self.on_error = on_error

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[Image.Image, int]:
        if not -len(self.samples) <= index < len(self.samples):
            raise IndexError(f"record {index} is outside the {len(self.samples)} images of {self.split}")
        index %= len(self.samples)
        for offset in range(MAX_CONSECUTIVE_BAD):
            path, label = self.samples[(index + offset) % len(self.samples)]
            try:
                return load_rgb(path), label
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                if self.on_error == "raise":
                    raise DatasetError(
                        f"cannot read image {path} (record {index} of {self.split}): {type(e).__name__}: {e}. "
                        "Set data.on_error=skip to replace unreadable images by the next one"
                    ) from e
                print(f"[resdet] skipping unreadable image {path}: {type(e).__name__}: {e}", file=sys.stderr)
        raise DatasetError(f"{MAX_CONSECUTIVE_BAD} consecutive unreadable images from record {index} of {self.split}")
