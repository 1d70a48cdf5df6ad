"""A training run's state: what it trains with, where it stands and what it has measured."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from sacseg.data import SegmentationDataset

__all__ = ["RunState", "StepSettings"]


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """How a training step runs, resolved from the config for the run's device.

    ``forward``: the module the step calls (the model, or the model under ``torch.compile``);
    ``autocast``: the autocast dtype, or None for float32; ``channels_last``: the images' memory
    layout (the model's was set when it was built).
    """

    forward: Callable[[Tensor], Any]
    autocast: torch.dtype | None
    channels_last: bool


@dataclasses.dataclass
class RunState:
    """Everything built from the config, where training stands (from the checkpoint when resuming)
    and what this run has measured so far.

    ``iters_per_unit`` is the length of the config's periods (``val_every``, ``lr_step``, ...) in
    iterations: an epoch's, or 1 for runs counted in iterations. ``changed``: the config keys that
    differ from the resumed checkpoint's. ``last_metrics``: the scores of the last validation.
    ``last_saved``: the iteration that the run folder's ``last.pt`` holds (None before there is one).
    """

    train_set: SegmentationDataset
    val_set: SegmentationDataset
    model: nn.Module
    optimizer: torch.optim.SGD
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    steps: StepSettings
    iters_per_epoch: int
    iters_per_unit: int
    total: int
    iteration: int = 0
    best: float = -math.inf
    changed: list[str] = dataclasses.field(default_factory=list)
    last_saved: int | None = None
    losses: list[float] = dataclasses.field(default_factory=list)
    last_metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
