"""The data loaders of a training run: this process's resumable share of each epoch, its shard of the validation set."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from sacseg.config import TrainConfig
from sacseg.data import SegmentationDataset
from sacseg.data.protocol import torch_dataset
from sacseg.training.distributed import DistContext
from sacseg.training.sampling import ResumableSampler, SeededSamples, seed_worker

__all__ = ["make_train_loader", "make_val_loader"]


def make_train_loader(
    cfg: TrainConfig, dataset: SegmentationDataset, ctx: DistContext, epoch: int, skip_batches: int
) -> DataLoader:
    """This process's share of epoch ``epoch``, starting after ``skip_batches`` batches.

    Each process loads ``batch_size / world_size`` samples per step; sample order and every
    sample's augmentation are fixed by (seed, epoch, index), so resuming mid-epoch repeats
    nothing and skips nothing, whatever the number of workers.
    """
    local_batch = cfg.batch_size // ctx.world_size
    samples = SeededSamples(dataset)
    sampler = ResumableSampler(samples, num_replicas=ctx.world_size, rank=ctx.rank, seed=cfg.seed)
    sampler.set_position(epoch, skip_batches * local_batch)
    generator = torch.Generator().manual_seed(cfg.seed * 7919 + epoch)
    return DataLoader(
        samples,
        batch_size=local_batch,
        sampler=sampler,
        num_workers=cfg.workers,
        pin_memory=ctx.device.type == "cuda",
        drop_last=True,
        worker_init_fn=seed_worker,
        generator=generator,
    )


def make_val_loader(cfg: TrainConfig, dataset: SegmentationDataset, ctx: DistContext) -> DataLoader:
    """This process's shard of the validation set, one image per batch."""
    # Images may differ in size, so one per batch; shards without padding so no image counts twice.
    shard = list(range(ctx.rank, len(dataset), ctx.world_size))
    return DataLoader(
        torch.utils.data.Subset(torch_dataset(dataset), shard),
        batch_size=1,
        num_workers=min(cfg.workers, 2),
        pin_memory=ctx.device.type == "cuda",
        generator=torch.Generator().manual_seed(cfg.seed),
    )
