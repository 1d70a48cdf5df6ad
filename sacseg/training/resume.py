"""A run's checkpoints: written from its state as it trains, and read back to resume it exactly."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sacseg.checkpoint import load_checkpoint, restore_rng_state, save_checkpoint
from sacseg.config import TrainConfig
from sacseg.training.distributed import unwrap
from sacseg.training.state import RunState

__all__ = ["Checkpointer", "Resumed", "best_to_carry", "continues_run", "restore_checkpoint", "resume_path"]

_RESUME_KEYS = ("model", "optimizer", "scheduler", "scaler", "rng", "iteration", "best_metric")


def resume_path(resume: str | None, out_dir: Path) -> Path | None:
    """The checkpoint that ``resume`` names: a path, or for "auto" ``out_dir/last.pt`` when it exists."""
    if resume is None:
        return None
    if resume == "auto":
        last = out_dir / "last.pt"
        return last if last.is_file() else None
    return Path(resume)


def continues_run(resume: str | None, checkpoint: Path | None, out_dir: Path) -> bool:
    """Whether the run carries on the one in ``out_dir``: ``--resume auto``, or a checkpoint inside it."""
    return resume == "auto" or (checkpoint is not None and checkpoint.resolve().parent == out_dir.resolve())


def best_to_carry(checkpoint: Path, best: float) -> Path | None:
    """The ``best.pt`` beside ``checkpoint`` when it holds the checkpoint's best validation mIoU ``best``, else None.

    A run resumed into another folder copies it there: its ``best.pt`` then holds the best so far,
    as the run's best mIoU says. An unreadable file is not carried (the run need not fail for it).
    """
    source = checkpoint.parent / "best.pt"
    if not math.isfinite(best) or not source.is_file():
        return None
    try:
        saved = load_checkpoint(source).get("best_metric")
    except ValueError:
        return None
    return source if saved == best else None


@dataclasses.dataclass(frozen=True)
class Resumed:
    """Where a checkpoint leaves a run: its ``iteration`` and ``best`` validation mIoU, its
    ``scheduler`` state (for ``build_scheduler``) and the config keys ``changed`` since it was written."""

    iteration: int
    best: float
    scheduler: dict[str, Any]
    changed: list[str]


def restore_checkpoint(
    cfg: TrainConfig, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler
) -> Resumed:
    """Load the checkpoint at ``path`` into the model, optimiser and scaler built from ``cfg`` and
    restore the random-number generators; errors name the file.

    ``load_state_dict`` brings back the checkpoint's learning rates, momentum and weight decay;
    the config's are put back after it, so a value changed on resume takes effect (and the value
    recorded in ``config.yaml`` and later checkpoints is the one used) once ``build_scheduler``
    continues the returned scheduler state from them.
    """
    state = load_checkpoint(path)  # CPU: RNG states must stay CPU tensors
    missing = [key for key in _RESUME_KEYS if key not in state]
    if missing:
        raise ValueError(f"checkpoint {path} cannot be resumed: it lacks {', '.join(missing)}")
    saved = state.get("config") or {}
    for key in ("model", "num_classes"):
        if key in saved and saved[key] != getattr(cfg, key):
            raise ValueError(
                f"checkpoint {path} was trained with {key} {saved[key]!r} but the config says "
                f"{getattr(cfg, key)!r}; resuming needs the same {key}"
            )
    # The config's settings, read before loading replaces them; a loaded optimiser keeps its base
    # rate in "initial_lr", where build_scheduler reads it.
    wanted = [
        {"initial_lr": group["lr"], "momentum": group["momentum"], "weight_decay": group["weight_decay"]}
        for group in optimizer.param_groups
    ]
    try:
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"checkpoint {path} does not fit model {cfg.model!r} of the config: {str(err).splitlines()[0]}") from err
    for group, values in zip(optimizer.param_groups, wanted, strict=True):
        group.update(values)
    scaler.load_state_dict(state["scaler"])
    restore_rng_state(state["rng"])
    changed = sorted(k for k, v in saved.items() if k != "out_dir" and getattr(cfg, k, None) != v)
    return Resumed(state["iteration"], state["best_metric"], state["scheduler"], changed)


class Checkpointer:
    """Writes the run's state into its folder, as ``save_checkpoint`` records it; only where ``active`` (rank 0)."""

    def __init__(self, cfg: TrainConfig, run: RunState, out_dir: Path, revision: str, active: bool) -> None:
        self.run, self.out_dir, self.revision, self.active = run, out_dir, revision, active
        self.config = dataclasses.asdict(cfg)

    def save(self, name: str) -> None:
        """Write ``out_dir/name`` (atomically) with the run's state as it stands now."""
        if not self.active:
            return
        run = self.run
        save_checkpoint(
            self.out_dir / name, model=unwrap(run.model), optimizer=run.optimizer, scheduler=run.scheduler,
            scaler=run.scaler, iteration=run.iteration, epoch=run.iteration // run.iters_per_epoch,
            config=self.config, best_metric=run.best, git_revision=self.revision,
        )  # fmt: skip
