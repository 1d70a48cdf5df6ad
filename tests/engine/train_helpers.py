"""Shared pieces of the training tests; run as a script (under torchrun) it dumps first-step gradients.

``python tests/engine/train_helpers.py CONFIG OUT`` (or under ``torchrun --nproc_per_node N``)
takes one real training step on the first global batch and saves rank 0's parameter gradients,
which DDP has averaged over the processes, to OUT.
"""

from __future__ import annotations

import sys
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import torch

from sacseg.engine.config import TrainConfig, config_from_dict, load_config
from sacseg.engine.distributed import cleanup_distributed, init_distributed, unwrap, wrap_model
from sacseg.engine.train import (
    build_datasets,
    build_model_from_config,
    build_optimizer,
    make_train_loader,
    seed_everything,
    train_step,
)

# Tiny and augmentation-free (two whole 64x64 scenes per batch): a few steps must lower the loss.
TINY: dict[str, Any] = {
    "model": "fcn_resnet18",
    "num_classes": 7,
    "backbone_weights": None,
    "dataset": "scale_scenes",
    "scale_scenes_train_images": 2,
    "scale_scenes_val_images": 1,
    "scale_scenes_size": 64,
    "crop_size": 64,
    "scale_min": 1.0,
    "scale_max": 1.0,
    "flip": False,
    "batch_size": 2,
    "iterations": 4,
    "lr": 0.01,
    "schedule": "poly",
    "workers": 0,
    "amp": False,
    "device": "cpu",
    "val_every": 4,
    "checkpoint_every": 1,
    "log_every": 1,
}


def single_thread() -> Iterator[None]:
    """Generator for a pytest fixture: one torch thread while it is active.

    Two OpenMP threads on a busy 2-core machine spin against each other: steps get 10-30x slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(out_dir: Path, **overrides: Any) -> TrainConfig:
    """The tiny CPU config writing to ``out_dir``, with ``overrides``."""
    return config_from_dict(dict(TINY, out_dir=str(out_dir), **overrides), source="test")


def first_step_grads(cfg: TrainConfig) -> dict[str, torch.Tensor] | None:
    """Gradients of one ``train_step`` on the first batch of epoch 0 (rank 0; None on other ranks)."""
    ctx = init_distributed(cfg.device)
    try:
        seed_everything(cfg.seed, cfg.deterministic)
        train_set, _ = build_datasets(cfg)
        model = wrap_model(build_model_from_config(cfg), ctx)
        model.train()
        optimizer = build_optimizer(cfg, model)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        images, targets = next(iter(make_train_loader(cfg, train_set, ctx, epoch=0, skip_batches=0)))
        train_step(model, optimizer, scaler, images, targets, ctx, 0, amp=False, grad_clip=None)
        if not ctx.is_main:
            return None
        return {name: p.grad.clone() for name, p in unwrap(model).named_parameters() if p.grad is not None}
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    torch.set_num_threads(1)
    grads = first_step_grads(load_config(sys.argv[1]))
    if grads is not None:
        torch.save(grads, sys.argv[2])
