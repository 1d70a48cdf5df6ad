"""A run's checkpoints: written from its state as it trains, and read back to resume it exactly."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from sacseg.checkpoint import load_checkpoint, restore_rng_state, save_checkpoint
from sacseg.config import TrainConfig
from sacseg.training.distributed import unwrap
from sacseg.training.state import RunState

__all__ = ["Checkpointer", "continues_run", "restore_checkpoint", "resume_path"]

_RESUME_KEYS = ("model", "optimizer", "scheduler", "scaler", "rng", "iteration", "best_metric")
# Optimiser settings the config decides even on resume (the scheduler's base learning rate is "initial_lr").
_OPTIMIZER_SETTINGS = ("initial_lr", "momentum", "weight_decay")


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


def restore_checkpoint(cfg: TrainConfig, path: Path, run: RunState) -> None:
    """Load the checkpoint at ``path`` into ``run``; errors name the file.

    ``load_state_dict`` brings back the checkpoint's learning rates, momentum and weight decay;
    the config's are put back after it, so a value changed on resume takes effect (and the value
    recorded in ``config.yaml`` and later checkpoints is the one used).
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
    wanted = [{key: group[key] for key in _OPTIMIZER_SETTINGS} for group in run.optimizer.param_groups]
    try:
        unwrap(run.model).load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"checkpoint {path} does not fit model {cfg.model!r} of the config: {str(err).splitlines()[0]}") from err
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    restore_rng_state(state["rng"])
    for group, values, factor in zip(run.optimizer.param_groups, wanted, run.scheduler.lr_lambdas):
        group.update(values)
        group["lr"] = values["initial_lr"] * factor(run.scheduler.last_epoch)  # as LambdaLR computes it
    run.scheduler.base_lrs = [values["initial_lr"] for values in wanted]
    run.iteration, run.best = state["iteration"], state["best_metric"]
    run.changed = sorted(k for k, v in saved.items() if k != "out_dir" and getattr(cfg, k, None) != v)


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
