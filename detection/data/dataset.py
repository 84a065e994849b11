"""Map-style detection dataset over ``DetectionSource`` records, with the bad-data policy applied at read time."""
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from .image_io import image_size, read_image
from .issues import DataError, DataIssues, Issue
from .records import DetectionSource, select_objects
from .transforms import TrainAugmentation

MAX_CONSECUTIVE_BAD = 50


class DetectionDataset(Dataset):
    """Images as float RGB [3, H, W] in [0, 1] and targets ``{"boxes", "labels", "image_id", "issues"}``.

    Training datasets drop crowd boxes (and ``difficult`` ones unless ``use_difficult``), leave out images without
    objects when ``filter_empty``, and augment with ``augmentation`` using the per-sample seed carried by the index
    (``dataset[(index, seed)]``). Test datasets return the original image; the model resizes it and maps its boxes
    back. An unreadable image is skipped for the next one under ``on_error=skip`` (its problem travels in
    ``target["issues"]`` so the main process counts it) and raises ``DataError`` under ``raise``.
    """

    def __init__(self, source: DetectionSource, train: bool, augmentation: Optional[TrainAugmentation] = None,
                 use_difficult: bool = False, filter_empty: bool = True, max_image_pixels: int = 178956970,
                 issues: Optional[DataIssues] = None):
        self.source = source
        self.train = train
        self.augmentation = augmentation
        self.max_image_pixels = int(max_image_pixels)
        self.issues = issues or source.issues
        self.on_error = self.issues.on_error
        records = source.records
        if train:
            records = [self._training_objects(r, use_difficult) for r in records]
            if filter_empty:
                kept = [r for r in records if len(r["boxes"])]
                for r in records:
                    if not len(r["boxes"]):
                        self.issues.repair("empty_image", r["file"], "no usable objects; left out of training")
                records = kept
            if not records:
                raise DataError(f"dataset {source.name} has no training image with objects "
                                f"(see the data-issue summary above)")
        self.records = records

    @staticmethod
    def _training_objects(record: dict, use_difficult: bool) -> dict:
        keep = record["iscrowd"] == 0
        if not use_difficult:
            keep &= record["difficult"] == 0
        return record if keep.all() else select_objects(record, keep)

    def __len__(self) -> int:
        return len(self.records)

    def aspect_groups(self) -> List[int]:
        """0 for landscape (w >= h), 1 for portrait, per record; used for aspect-ratio grouped batches."""
        groups = []
        for r in self.records:
            w, h = r["width"], r["height"]
            if w is None:
                try:
                    w, h = image_size(Path(r["file"]))
                except (OSError, ValueError):
                    w, h = 1, 1
            groups.append(0 if w >= h else 1)
        return groups

    def __getitem__(self, key: Union[int, Tuple[int, int]]):
        index, seed = key if isinstance(key, tuple) else (key, 0)
        problems: List[Issue] = []
        for _ in range(MAX_CONSECUTIVE_BAD):
            record = self.records[index]
            pixels = self._read(record, problems)
            if pixels is not None:
                return self._sample(record, pixels, seed, problems)
            index = (index + 1) % len(self.records)
        raise DataError(f"{MAX_CONSECUTIVE_BAD} consecutive images of {self.source.name} could not be read; last "
                        f"problem: {problems[-1][1]}: {problems[-1][2]}")

    def _read(self, record: dict, problems: List[Issue]) -> Optional[np.ndarray]:
        """HxWx3 uint8 RGB pixels of ``record``, or None to skip it (overridden by the fast loader's decoder)."""
        expected = None if record["width"] is None else (record["width"], record["height"])
        return read_image(Path(record["file"]), expected, self.max_image_pixels, problems, self.on_error)

    @staticmethod
    def _to_tensor(pixels: np.ndarray) -> torch.Tensor:
        """The model's input: float RGB [3, H, W] in [0, 1] (the fast loader keeps uint8 here)."""
        return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float().div_(255.0)

    def _sample(self, record: dict, pixels: np.ndarray, seed: int, problems: List[Issue]):
        boxes, labels = record["boxes"], record["labels"]
        if self.train and self.augmentation is not None:
            pixels, boxes, labels = self.augmentation(pixels, boxes.copy(), labels, seed)
            ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            if not ok.all():
                problems.append(("degenerate_after_transform", record["file"],
                                 f"{int((~ok).sum())} box(es) collapsed by resize/flip"))
                boxes, labels = boxes[ok], labels[ok]
        image = self._to_tensor(pixels)
        target = {
            "boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.as_tensor(labels, dtype=torch.int64),
            "image_id": record["image_id"],
            "issues": problems,
        }
        if not self.train:  # ground truth as the evaluator sees it (sample grids)
            target["difficult"] = torch.as_tensor(record["difficult"], dtype=torch.bool)
        return image, target


def collate(batch):
    """Lists of images and targets (images differ in size; the model pads them)."""
    images, targets = zip(*batch)
    return list(images), list(targets)
