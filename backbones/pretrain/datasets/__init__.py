"""Classification datasets for pretraining: ImageNet-style class folders, CIFAR-10 (official batches), digits."""
from typing import Tuple

from torch.utils.data import Dataset

from .cifar10 import Cifar10Dataset
from .digits import DigitsDataset
from .errors import DatasetError, DatasetNotFoundError
from .imagenet import ImageFolderDataset

DATASETS = ("imagenet", "cifar10", "digits")
DEFAULT_ROOTS = {"imagenet": "datasets/imagenet", "cifar10": "datasets/cifar10", "digits": ""}


def build_datasets(name: str, root: str = "", on_error: str = "raise", holdout: int = 0,
                   digits_size: int = 16, digits_background: str = "black",
                   digits_heights=(12, 40), digits_curriculum_epochs: int = 0,
                   digits_train_sizes=()) -> Tuple[Dataset, Dataset]:
    """(training set, validation set) of dataset ``name``; ``root`` "" means the default under ``datasets/``.

    Validation is ImageNet's ``val``, CIFAR-10's ``test_batch`` (or the held-out part of the training batches when
    ``holdout`` > 0) and the fixed 360-image digits split.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    root = root or DEFAULT_ROOTS[name]
    if name == "imagenet":
        train = ImageFolderDataset(root, "train", on_error)
        return train, ImageFolderDataset(root, "val", on_error, classes=train.categories)
    if name == "cifar10":
        return Cifar10Dataset(root, "train", holdout), Cifar10Dataset(root, "val" if holdout else "test", holdout)
    return (DigitsDataset("train", digits_size, digits_background, digits_heights, digits_curriculum_epochs,
                          digits_train_sizes),
            DigitsDataset("val", digits_size, digits_background, digits_heights))


def build_datasets_for(data) -> Tuple[Dataset, Dataset]:
    """``build_datasets`` with every argument from a pretraining config's ``data`` section."""
    return build_datasets(data.dataset, data.root, data.on_error, data.holdout, data.digits_size,
                          data.digits_background, data.digits_heights, data.digits_curriculum_epochs,
                          data.digits_train_sizes)


__all__ = ["build_datasets", "build_datasets_for", "DATASETS", "DatasetError", "DatasetNotFoundError", "Cifar10Dataset", "DigitsDataset",
           "ImageFolderDataset"]
