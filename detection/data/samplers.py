"""Deterministic, resumable samplers for detection training and sharded inference.

The training stream is an endless sequence of epochs, each a permutation seeded by ``(seed, epoch)``. Stream
position ``p`` goes to process ``p % world_size``; each process forms batches from its positions, grouped by aspect
ratio (landscape / portrait, as torchvision's references and detectron2 do) so padded batches waste little. Every
sample carries the seed of its position, which drives its augmentation. Resuming at iteration ``k`` replays the index
stream (cheap: no images are read) and skips the first ``k`` batches, giving exactly the batches an uninterrupted run
would have seen.
"""
from collections import defaultdict
from typing import Iterator, List, Sequence, Tuple

import torch
from torch.utils.data import Sampler

from backbones.utils.rng import derive_seed, generator_for


class GroupedInfiniteBatchSampler(Sampler):
    """Endless per-process batches of ``(dataset index, sample seed)``.

    Args:
        group_ids: group of each dataset index (e.g. ``DetectionDataset.aspect_groups()``); all 0 disables grouping.
        batch_size: images per process per iteration.
        seed: run seed.
        rank, world_size: this process and the number of processes.
        start_iter: number of batches already consumed (resume).
    """

    def __init__(self, group_ids: Sequence[int], batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 start_iter: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not len(group_ids):
            raise ValueError("cannot sample from an empty dataset")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world size {world_size}")
        self.group_ids = list(group_ids)
        self.batch_size = batch_size
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.start_iter = int(start_iter)

    def _positions(self) -> Iterator[Tuple[int, int]]:
        n = len(self.group_ids)
        epoch = 0
        while True:
            order = torch.randperm(n, generator=generator_for(self.seed, epoch)).tolist()
            base = epoch * n
            for j in range((self.rank - base) % self.world_size, n, self.world_size):
                yield order[j], base + j
            epoch += 1

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        buckets = defaultdict(list)
        produced = 0
        for index, position in self._positions():
            bucket = buckets[self.group_ids[index]]
            bucket.append((index, position))
            if len(bucket) == self.batch_size:
                if produced >= self.start_iter:
                    yield [(i, derive_seed(self.seed, p)) for i, p in bucket]
                produced += 1
                bucket.clear()


class ShardedSequentialSampler(Sampler):
    """Indices ``rank, rank + world_size, ...`` in order: each image is run by exactly one process."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1):
        self.indices = list(range(rank, size, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
