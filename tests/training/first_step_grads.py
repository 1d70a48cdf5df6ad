"""Script of the DDP test: ``python first_step_grads.py CONFIG OUT`` (alone, or under ``torchrun --nproc_per_node N``)
takes one real training step on the first global batch and saves rank 0's parameter gradients, which DDP has
averaged over the processes, to OUT."""

from __future__ import annotations

import sys

import torch

from sacseg.config import load_config
from sacseg.factory import build_datasets, build_model_from_config
from sacseg.training.data import make_train_loader
from sacseg.training.distributed import cleanup_distributed, init_distributed, unwrap, wrap_model
from sacseg.training.loop import train_step
from sacseg.training.optim import build_optimizer
from sacseg.training.state import StepSettings
from sacseg.training.train import seed_everything


def main(config: str, out: str) -> None:
    cfg = load_config(config)
    ctx = init_distributed(cfg.device)
    try:
        seed_everything(cfg.seed, cfg.deterministic)
        train_set, _ = build_datasets(cfg)
        model = wrap_model(build_model_from_config(cfg), ctx)
        model.train()
        optimizer = build_optimizer(cfg, model)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        images, targets = next(iter(make_train_loader(cfg, train_set, ctx, epoch=0, skip_batches=0)))
        train_step(optimizer, scaler, images, targets, ctx, 0, StepSettings(model, None, False), grad_clip=None)
        if ctx.is_main:
            grads = {name: p.grad.clone() for name, p in unwrap(model).named_parameters() if p.grad is not None}
            torch.save(grads, out)
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], sys.argv[2])
