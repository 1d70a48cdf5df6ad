"""The optimiser and learning-rate schedule of a training run: SGD, step or poly decay per iteration."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from sacseg.config import TrainConfig
from sacseg.models.fcn import REGRESSOR_PREFIXES
from sacseg.training.distributed import unwrap

__all__ = ["build_optimizer", "build_scheduler"]


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.SGD:
    """SGD with momentum and weight decay over the parameters that require gradients.

    The scale regressors' parameters (``scale_regressors.*``; and a deformable model's offset/mask
    predictors, ``offset_predictors.*``: ``REGRESSOR_PREFIXES``) form a second group with learning
    rate ``lr * scale_lr_mult``, as Deformable ConvNets do for their offset convolutions: they
    read unnormalised res4/res5 features, so their gradient is large for an output that lives in
    ``[min_scale, max_scale]``.
    """
    named = [(n, p) for n, p in unwrap(model).named_parameters() if p.requires_grad]
    if not named:
        raise ValueError(f"model {cfg.model!r} has no trainable parameters")
    scale = [p for n, p in named if n.startswith(REGRESSOR_PREFIXES)]
    rest = [p for n, p in named if not n.startswith(REGRESSOR_PREFIXES)]
    groups: list[dict[str, Any]] = [{"params": rest}] if rest else []
    if scale:
        groups.append({"params": scale, "lr": cfg.lr * cfg.scale_lr_mult})
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _lr_factor(cfg: TrainConfig, iters_per_unit: int, total: int) -> Callable[[int], float]:
    step_at = cfg.lr_step * iters_per_unit

    def factor(iteration: int) -> float:
        if cfg.schedule == "poly":
            return (1.0 - min(iteration, total) / total) ** cfg.poly_power
        return cfg.lr_step_factor if iteration >= step_at else 1.0

    return factor


def build_scheduler(
    cfg: TrainConfig,
    optimizer: torch.optim.Optimizer,
    iters_per_unit: int,
    total: int,
    saved: dict[str, Any] | None = None,
) -> LambdaLR:
    """Per-iteration learning rate: ``step`` multiplies by ``lr_step_factor`` from ``lr_step`` on
    (the paper: 60 epochs at 5e-4, then 10 at 5e-5); ``poly`` is ``(1 - it / total) ** poly_power``.

    ``saved``: the ``state_dict`` of a resumed run's scheduler. The scheduler is then constructed
    at the iteration it had reached, from the base rates in the optimiser groups' ``initial_lr``
    (a loaded optimiser's, which the caller may have set to a changed config's), and so sets each
    group's rate for that iteration; the rest of its state (the step count) is ``saved``'s.
    """
    factor = _lr_factor(cfg, iters_per_unit, total)
    if saved is None:
        return LambdaLR(optimizer, factor)
    # The constructor takes one step from last_epoch, to the iteration the run continues at.
    scheduler = LambdaLR(optimizer, factor, last_epoch=saved["last_epoch"] - 1)
    scheduler.load_state_dict({**saved, "base_lrs": scheduler.base_lrs, "_last_lr": scheduler.get_last_lr()})
    return scheduler
