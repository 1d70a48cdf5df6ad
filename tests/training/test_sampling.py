"""Tests for the resumable sampler and per-sample seeding that make resume and multi-process runs exact."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from sacseg.training.sampling import ResumableSampler, SeededSamples


class _Noise(Dataset):
    """Returns (index, a random draw): the draw shows which RNG state the sample saw."""

    def __len__(self) -> int:
        return 11

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        return index, torch.rand(2)


def test_skip_resumes_the_same_epoch_order() -> None:
    full = ResumableSampler(_Noise(), seed=3)
    full.set_position(epoch=2)
    resumed = ResumableSampler(_Noise(), seed=3)
    resumed.set_position(epoch=2, skip=4)
    assert list(resumed) == list(full)[4:] and len(resumed) == len(full) - 4
    other_epoch = ResumableSampler(_Noise(), seed=3)
    other_epoch.set_position(epoch=3)
    assert [i for i, _ in other_epoch] != [i for i, _ in full]


def test_two_ranks_split_each_global_batch_of_one_rank() -> None:
    global_batch = 4
    single = ResumableSampler(_Noise(), seed=0)
    single.set_position(1)
    ranks = [ResumableSampler(_Noise(), num_replicas=2, rank=r, seed=0) for r in range(2)]
    for r in ranks:
        r.set_position(1)
    single_items, rank_items = list(single), [list(r) for r in ranks]
    local = global_batch // 2
    for step in range(len(single_items) // global_batch):
        expected = single_items[step * global_batch : (step + 1) * global_batch]
        got = rank_items[0][step * local : (step + 1) * local] + rank_items[1][step * local : (step + 1) * local]
        assert sorted(got) == sorted(expected)  # same samples, same per-sample seeds


def test_seeded_samples_depend_only_on_the_seed() -> None:
    data = SeededSamples(_Noise())
    first = data[(5, 123)]
    torch.rand(10)  # disturb the global generator
    before = torch.get_rng_state()
    again = data[(5, 123)]
    assert torch.equal(first[1], again[1]) and not torch.equal(first[1], data[(5, 124)][1])
    assert torch.equal(torch.get_rng_state(), before)  # the caller's generator is untouched
