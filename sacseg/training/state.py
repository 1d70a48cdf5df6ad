"""A training run's state: what it trains with, where it stands and what it has measured."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from sacseg.data import SegmentationDataset

__all__ = ["RunState"]


@dataclasses.dataclass
class RunState:
    """Everything built from the config, where training stands (from the checkpoint when resuming)
    and what this run has measured so far.

    ``iters_per_unit`` is the length of the config's periods (``val_every``, ``lr_step``, ...) in
    iterations: an epoch's, or 1 for runs counted in iterations. ``changed``: the config keys that
    differ from the resumed checkpoint's. ``last_metrics``: the scores of the last validation.
    """

    train_set: SegmentationDataset
    val_set: SegmentationDataset
    model: nn.Module
    optimizer: torch.optim.SGD
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    use_amp: bool
    iters_per_epoch: int
    iters_per_unit: int
    total: int
    iteration: int = 0
    best: float = -math.inf
    changed: list[str] = dataclasses.field(default_factory=list)
    losses: list[float] = dataclasses.field(default_factory=list)
    last_metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
