"""CIFAR-10 read from the official "python version": the ``cifar-10-python.tar.gz`` tarball itself (read in place)
or its extracted ``cifar-10-batches-py/`` folder. The batches are pickles, so they are read with resdet's restricted
unpickler (numpy arrays and containers only).

Splits: "train" = data_batch_1..5 (50k), "test" = test_batch (10k). With ``holdout`` > 0, the last ``holdout`` images
of a fixed permutation (seed 0) of the 50k form "val" and the rest "train" — the paper's 45k/5k split with
``holdout=5000``.
"""
import io
import tarfile
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch

from ...weights.safe_pickle import RestrictedUnpickler
from .errors import DatasetError, DatasetNotFoundError

TARBALL = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"
CATEGORIES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
HOLDOUT_SEED = 0
LAYOUT_HELP = (
    "expected {root}/{tarball}, or {root}/{folder}/ (or {root} itself) holding data_batch_1..data_batch_5 and "
    "test_batch. Get the official 'CIFAR-10 python version' from https://www.cs.toronto.edu/~kriz/cifar.html "
    "(cifar-10-python.tar.gz, 163 MB; no need to extract it)"
)


def _read_files(root: Path, names: List[str]) -> Dict[str, bytes]:
    """Raw bytes of the batch files ``names``, from the extracted folder or in one pass over the tarball."""
    for folder in (root / FOLDER, root):
        if all((folder / name).is_file() for name in TRAIN_BATCHES + [TEST_BATCH]):
            return {name: (folder / name).read_bytes() for name in names}
    tarball = root / TARBALL if root.is_dir() else root
    if tarball.is_file() and tarball.name.endswith((".tar.gz", ".tgz", ".tar")):
        wanted = {f"{FOLDER}/{name}": name for name in names}
        found: Dict[str, bytes] = {}
        try:
            with tarfile.open(tarball) as tar:
                for member in tar:  # only reads members; never extracts paths to disk
                    if member.isfile() and member.name in wanted:
                        found[wanted[member.name]] = tar.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DatasetError(f"CIFAR-10 tarball {tarball} cannot be read ({type(e).__name__}: {e})") from e
        missing = [n for n in names if n not in found]
        if missing:
            raise DatasetError(f"CIFAR-10 tarball {tarball} lacks {', '.join(FOLDER + '/' + n for n in missing)}")
        return found
    raise DatasetNotFoundError(
        f"CIFAR-10 not found at {root}: " + LAYOUT_HELP.format(root=root, tarball=TARBALL, folder=FOLDER)
    )


def _parse_batch(name: str, raw: bytes) -> Tuple[np.ndarray, List[int]]:
    try:
        batch: Dict = RestrictedUnpickler(io.BytesIO(raw), source=name, encoding="latin1").load()
    except Exception as e:
        raise DatasetError(f"CIFAR-10 batch {name} cannot be read ({type(e).__name__}: {e})") from e
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise DatasetError(f"CIFAR-10 batch {name} lacks 'data'/'labels' (keys: {sorted(batch)})")
    data = np.asarray(batch["data"], dtype=np.uint8)
    labels = [int(v) for v in batch["labels"]]
    if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != len(labels):
        raise DatasetError(f"CIFAR-10 batch {name}: data shape {data.shape} does not match N×3072 with N={len(labels)}")
    if labels and not all(0 <= v < 10 for v in labels):
        raise DatasetError(f"CIFAR-10 batch {name}: labels must lie in 0..9")
    return data, labels


class Cifar10Dataset(torch.utils.data.Dataset):
    """Items are (3×32×32 uint8 tensor, label); ``split`` is "train", "val" (needs ``holdout``) or "test"."""

    def __init__(self, root, split: str = "train", holdout: int = 0):
        if split not in ("train", "val", "test"):
            raise ValueError(f"CIFAR-10 split must be 'train', 'val' or 'test', got {split!r}")
        if split == "val" and holdout <= 0:
            raise ValueError("CIFAR-10 split 'val' needs data.holdout > 0 (e.g. 5000 for the paper's 45k/5k split)")
        names = [TEST_BATCH] if split == "test" else TRAIN_BATCHES
        files = _read_files(Path(root), names)
        if split == "test":
            data, labels = _parse_batch(TEST_BATCH, files[TEST_BATCH])
        else:
            parts = [_parse_batch(name, files[name]) for name in TRAIN_BATCHES]
            data = np.concatenate([p[0] for p in parts])
            labels = [v for p in parts for v in p[1]]
            if holdout:
                if holdout >= len(labels):
                    raise ValueError(f"data.holdout={holdout} must be smaller than the {len(labels)} training images")
                order = np.random.RandomState(HOLDOUT_SEED).permutation(len(labels))
                chosen = np.sort(order[-holdout:] if split == "val" else order[:-holdout])
                data, labels = data[chosen], [labels[i] for i in chosen]
        self.images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
        self.labels = labels
        self.categories = CATEGORIES
        self.split = split

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        return self.images[index], self.labels[index]
