"""Resumable, sharded training order in which every sample's augmentation is fixed by (seed, epoch, index)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from sacseg.data.protocol import SegmentationDataset

__all__ = ["ResumableSampler", "SeededSamples", "sample_seed", "seed_worker"]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one sample of one epoch (independent of process count and order)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (drop_last) that can start part-way into an epoch and yields ``(index, seed)``.

    The order of epoch ``e`` is torch's ``randperm`` under seed ``seed + e`` (as DistributedSampler
    does); process ``rank`` takes every ``num_replicas``-th index. ``set_position(epoch, skip)``
    drops this process's first ``skip`` samples of that epoch, so a resumed run sees exactly the
    samples the uninterrupted run would have seen next. With one process it is a seeded shuffle.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        self.skip = 0

    def set_position(self, epoch: int, skip: int = 0) -> None:
        """Start epoch ``epoch`` after this process's first ``skip`` samples."""
        if not 0 <= skip <= self.num_samples:
            raise ValueError(f"skip must be in [0, {self.num_samples}], got {skip}")
        self.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in list(super().__iter__())[self.skip :]:
            yield index, sample_seed(self.seed, self.epoch, index)

    def __len__(self) -> int:
        return self.num_samples - self.skip


class SeededSamples(Dataset):
    """Wrap a dataset so that ``ds[(index, seed)]`` runs ``dataset[index]`` with all global RNGs seeded.

    Random augmentations (Python ``random``, NumPy, torch) then depend only on the seed, not on
    which worker loads the sample or what ran before; the caller's generator states are put back.
    """

    def __init__(self, dataset: SegmentationDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                random.seed(seed)
                np.random.seed(seed % 2**32)
                torch.manual_seed(seed)
                return self.dataset[index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed Python and NumPy from the worker's torch seed."""
    worker_seed = torch.initial_seed() % 2**32
    random.seed(worker_seed)
    np.random.seed(worker_seed)
