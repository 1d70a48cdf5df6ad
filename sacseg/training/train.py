"""The training entry point: ``train`` sets a run up from its config and checkpoint and trains it in its run folder."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sacseg.config import TrainConfig, save_config
from sacseg.factory import build_datasets, build_model_from_config
from sacseg.training.distributed import DistContext, cleanup_distributed, init_distributed, wrap_model
from sacseg.training.loop import NonFiniteLossError, fit
from sacseg.training.optim import build_optimizer, build_scheduler
from sacseg.training.resume import continues_run, restore_checkpoint, resume_path
from sacseg.training.run_dir import check_run_folder, clear_run, locked_run_folder, remove_stale_temp_files
from sacseg.training.state import RunState, StepSettings
from sacseg.utils.io import atomic_open
from sacseg.utils.revision import git_revision

__all__ = ["NonFiniteLossError", "TrainResult", "cudnn_benchmark", "seed_everything", "train"]

_log = logging.getLogger("sacseg.train")


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What ``train`` returns.

    ``iteration``: the iterations done (the checkpoint's when nothing was left to train) of the run's
    ``total``; ``best_miou``: the best validation mIoU so far (-inf before any validation);
    ``last_metrics``: the scores of this call's last validation (empty if it validated nothing);
    ``losses``: this call's loss per iteration (empty when nothing was left to train); ``out_dir``:
    the run folder; ``resumed_from``: the checkpoint continued, or None; ``is_main``: whether this
    process is rank 0, the one that reports.
    """

    iteration: int
    total: int
    best_miou: float
    last_metrics: dict[str, Any]
    losses: list[float]
    out_dir: Path
    resumed_from: Path | None
    is_main: bool


_AUTOCAST: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def cudnn_benchmark(cfg: TrainConfig) -> bool:
    """Whether cuDNN autotunes: the config's ``cudnn_benchmark``, by default on unless ``deterministic``."""
    return not cfg.deterministic if cfg.cudnn_benchmark is None else cfg.cudnn_benchmark


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and torch; with ``deterministic``, ask torch for deterministic kernels.

    ``warn_only`` keeps CUDA ops without a deterministic version (e.g. grid-sample backward)
    usable: they warn instead of failing. On CPU every op used here is deterministic.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS reads this when it creates its handle, i.e. before the first CUDA matmul.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)


def train(cfg: TrainConfig, resume: str | None = None, overwrite: bool = False) -> TrainResult:
    """Train as ``cfg`` says, writing into ``cfg.out_dir``; returns where the run ended and what it measured.

    Writes ``config.yaml`` (resolved), ``git_revision.txt``, ``train.log``, TensorBoard events in
    ``tb/``, ``last.pt`` every ``checkpoint_every`` and ``best.pt`` at each new best validation
    mIoU. ``resume``: a checkpoint path, or "auto" for ``out_dir/last.pt`` when it exists. On CPU
    a resumed run ends with the same weights, bit for bit, as one never interrupted; the config's
    ``lr``, ``momentum``, ``weight_decay`` and ``scale_lr_mult`` replace the checkpoint's. Run
    under torchrun for several processes; only rank 0 writes files.

    The run folder is safe: everything that can fail on bad input (config, datasets, model, the
    checkpoint) fails before it is touched; a folder that holds a run is refused (ValueError)
    unless ``resume`` continues it or ``overwrite`` is set (its run files are deleted first); rank
    0 holds an exclusive lock on it while training (a second run into it is refused, naming the
    first), and removes temporary files that a killed run left. A checkpoint already at the last
    iteration trains nothing and writes nothing. A NaN or infinite loss raises NonFiniteLossError
    naming the last good checkpoint.
    """
    ctx = init_distributed(cfg.device, timeout=cfg.dist_timeout)
    try:
        return _train(cfg, resume, overwrite, ctx)
    finally:
        cleanup_distributed()


@contextlib.contextmanager
def _restored_torch_settings() -> Iterator[None]:
    """Put back the process-wide torch settings a run changes (threads, deterministic kernels,
    cuDNN autotuning), so ``train`` called in a larger program (the demo, tests) leaves no trace."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark


def _train(cfg: TrainConfig, resume: str | None, overwrite: bool, ctx: DistContext) -> TrainResult:
    out_dir = Path(cfg.out_dir)
    if cfg.batch_size % ctx.world_size:
        raise ValueError(f"config key 'batch_size' ({cfg.batch_size}) must divide by the process count {ctx.world_size}")
    checkpoint = resume_path(resume, out_dir)
    continues = continues_run(resume, checkpoint, out_dir)
    if overwrite and continues:
        raise ValueError(f"--overwrite would delete the run in {out_dir} that --resume continues; give one of them")
    if ctx.is_main:
        check_run_folder(out_dir, continues, overwrite)  # fail fast, before the slow set-up
    with _restored_torch_settings():
        run = _prepare(cfg, checkpoint, ctx)
        if run.iteration < run.total:  # else nothing is left to train: the folder is not touched
            revision = git_revision()
            with locked_run_folder(out_dir) if ctx.is_main else contextlib.nullcontext():
                notes = _start_run_files(cfg, out_dir, revision, continues, overwrite) if ctx.is_main else []
                handler = _setup_logging(out_dir, ctx.is_main)
                try:
                    for note in notes:
                        _log.info(note)
                    if checkpoint is not None:
                        _log.info("resumed from %s at iteration %d%s", checkpoint, run.iteration,
                                  f" (config keys changed since: {', '.join(run.changed)})" if run.changed else "")  # fmt: skip
                    elif resume == "auto":
                        _log.info("no %s yet: starting from scratch", out_dir / "last.pt")
                    fit(cfg, run, ctx, out_dir, revision)
                finally:
                    if handler is not None:
                        _log.removeHandler(handler)
                        handler.close()
    return TrainResult(
        iteration=run.iteration, total=run.total, best_miou=run.best, last_metrics=run.last_metrics,
        losses=run.losses, out_dir=out_dir, resumed_from=checkpoint, is_main=ctx.is_main,
    )  # fmt: skip


def _setup_logging(out_dir: Path, is_main: bool) -> logging.Handler | None:
    _log.setLevel(logging.INFO)
    if not is_main:
        return None
    handler = logging.FileHandler(out_dir / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    _log.addHandler(handler)
    return handler


def _start_run_files(cfg: TrainConfig, out_dir: Path, revision: str, continues: bool, overwrite: bool) -> list[str]:
    """With the folder's lock held: check it again, clear or clean it, write the config; return notes for the log."""
    # Checked again: another run may have written the folder since the check before the set-up.
    check_run_folder(out_dir, continues, overwrite)
    notes = []
    cleared = clear_run(out_dir) if overwrite else []
    if cleared:
        notes.append(f"--overwrite: deleted the previous run's {', '.join(cleared)}")
    freed = remove_stale_temp_files(out_dir)
    if freed:
        notes.append(f"deleted temporary files of interrupted checkpoint writes ({freed / 1e6:.1f} MB)")
    save_config(cfg, out_dir / "config.yaml")
    with atomic_open(out_dir / "git_revision.txt", "w", encoding="utf-8") as handle:
        handle.write(revision + "\n")
    return notes


def _prepare(cfg: TrainConfig, checkpoint: Path | None, ctx: DistContext) -> RunState:
    """Build datasets, model, optimiser and schedule, and load ``checkpoint``; writes nothing."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed, cfg.deterministic)
    torch.backends.cudnn.benchmark = cudnn_benchmark(cfg)
    train_set, val_set = build_datasets(cfg)
    iters_per_epoch = len(train_set) // cfg.batch_size
    if iters_per_epoch < 1:
        raise ValueError(f"the training set has {len(train_set)} samples, fewer than batch_size {cfg.batch_size}")
    iters_per_unit = iters_per_epoch if cfg.epochs else 1
    total = cfg.epochs * iters_per_epoch if cfg.epochs else cfg.iterations

    model = build_model_from_config(cfg)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = wrap_model(model, ctx, sync_bn=cfg.sync_bn)
    optimizer = build_optimizer(cfg, model)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=cfg.precision == "fp16")
    resumed = None if checkpoint is None else restore_checkpoint(cfg, checkpoint, model, optimizer, scaler)
    scheduler = build_scheduler(cfg, optimizer, iters_per_unit, total, None if resumed is None else resumed.scheduler)
    # Compiled around the wrapped model (DDP's hooks stay outside the graphs), for the training
    # steps only: validation's changing image sizes would recompile, and checkpoints keep plain names.
    steps = StepSettings(torch.compile(model) if cfg.compile else model, _AUTOCAST[cfg.precision], cfg.channels_last)
    run = RunState(train_set, val_set, model, optimizer, scheduler, scaler, steps, iters_per_epoch, iters_per_unit, total)
    if resumed is not None:
        run.iteration, run.best, run.changed = resumed.iteration, resumed.best, resumed.changed
    return run
