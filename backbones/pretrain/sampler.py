"""Deterministic, resumable, DDP-sharded batches for iteration-based training.

Epoch ``e`` visits the training set in the order ``randperm(N, generator_for(seed, e))``; batch ``b`` of the epoch
is the slice ``[b·B, (b+1)·B)`` of that order (B = global batch, the last partial batch dropped) and process ``r``
takes the ``r``-th of its ``world_size`` equal parts. So the global batch is the same whatever the process count,
and resuming at (epoch, batch) reproduces the remaining sequence exactly. Items are ``(epoch, index)`` pairs, which
``AugmentedDataset`` turns into per-sample random generators.
"""
from typing import Iterator, List, Tuple

import torch
from torch.utils.data import Dataset

from ..utils.rng import generator_for


class EpochBatchSampler:
    """Endless batch sampler starting at (``start_epoch``, ``start_batch``); use as a DataLoader ``batch_sampler``."""

    def __init__(self, dataset_size: int, global_batch: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 start_epoch: int = 0, start_batch: int = 0, shuffle: bool = True):
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} is not divisible by world size {world_size}")
        if dataset_size < global_batch:
            raise ValueError(
                f"the training set has {dataset_size} images, fewer than one global batch of {global_batch}; "
                "lower solver.batch_size"
            )
        self.dataset_size, self.global_batch = dataset_size, global_batch
        self.rank, self.world_size, self.seed, self.shuffle = rank, world_size, seed, shuffle
        self.per_process = global_batch // world_size
        self.batches_per_epoch = dataset_size // global_batch
        if not 0 <= start_batch < self.batches_per_epoch:
            raise ValueError(f"start_batch {start_batch} is outside 0..{self.batches_per_epoch - 1}")
        self.start_epoch, self.start_batch = start_epoch, start_batch

    def epoch_order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.dataset_size)
        return torch.randperm(self.dataset_size, generator=generator_for(self.seed, epoch))

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        epoch, first = self.start_epoch, self.start_batch
        while True:
            order = self.epoch_order(epoch)
            for b in range(first, self.batches_per_epoch):
                start = b * self.global_batch + self.rank * self.per_process
                yield [(epoch, int(i)) for i in order[start:start + self.per_process]]
            epoch, first = epoch + 1, 0


class AugmentedDataset(Dataset):
    """Wrap a dataset of (image, label): item ``(epoch, index)`` → (transform(image, generator_for(seed, epoch,
    index)), label)."""

    def __init__(self, base: Dataset, transform, seed: int):
        self.base, self.transform, self.seed = base, transform, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: Tuple[int, int]):
        epoch, index = key
        generator = generator_for(self.seed, epoch, index)
        # Datasets that draw their images (digits on context canvases) take the same per-item generator.
        image, label = (self.base.sample(index, generator, epoch) if hasattr(self.base, "sample")
                        else self.base[index])
        return self.transform(image, generator), label
