"""The training entry point: ``train`` sets a run up from its config and checkpoint and trains it in its run folder."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import random
import shutil
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sacseg.config import TrainConfig, save_config
from sacseg.data.check import check_datasets
from sacseg.factory import build_datasets, build_model_from_config
from sacseg.training.distributed import DistContext, cleanup_distributed, init_distributed, wrap_model
from sacseg.training.loop import NonFiniteLossError, fit
from sacseg.training.monitor import require_tensorboard, run_header
from sacseg.training.optim import build_optimizer, build_scheduler
from sacseg.training.resume import best_to_carry, continues_run, restore_checkpoint, resume_path
from sacseg.training.run_dir import check_run_folder, clear_run, locked_run_folder, remove_stale_temp_files
from sacseg.training.state import RunState, StepSettings
from sacseg.utils.io import atomic_open
from sacseg.utils.revision import git_revision

__all__ = ["NonFiniteLossError", "RunInterrupted", "TrainResult", "cudnn_benchmark", "logged_to", "seed_everything", "train"]

_log = logging.getLogger("sacseg.train")


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What ``train`` returns.

    ``iteration``: the iterations done (the checkpoint's when nothing was left to train) of the run's
    ``total``; ``best_miou``: the best validation mIoU so far (-inf before any validation);
    ``last_metrics``: the scores of this call's last validation (empty if it validated nothing);
    ``losses``: this call's loss per iteration (empty when nothing was left to train); ``out_dir``:
    the run folder; ``resumed_from``: the checkpoint continued, or None; ``is_main``: whether this
    process is rank 0, the one that reports; ``best_checkpoint``: ``out_dir/best.pt`` when it holds
    ``best_miou`` (rank 0), else None (no validation yet, or a best reached before the resumed
    checkpoint whose ``best.pt`` was not beside it).
    """

    iteration: int
    total: int
    best_miou: float
    last_metrics: dict[str, Any]
    losses: list[float]
    out_dir: Path
    resumed_from: Path | None
    is_main: bool
    best_checkpoint: Path | None


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


def train(cfg: TrainConfig, resume: str | None = None, overwrite: bool = False, check_data: bool = True) -> TrainResult:
    """Train as ``cfg`` says, writing into ``cfg.out_dir``; returns where the run ended and what it measured.

    Writes ``config.yaml`` (resolved), ``git_revision.txt``, ``train.log``, TensorBoard events in
    ``tb/``, ``last.pt`` every ``checkpoint_every`` and ``best.pt`` at each new best validation
    mIoU. ``resume``: a checkpoint path, or "auto" for ``out_dir/last.pt`` when it exists. On CPU
    a resumed run ends with the same weights, bit for bit, as one never interrupted; the config's
    ``lr``, ``momentum``, ``weight_decay`` and ``scale_lr_mult`` replace the checkpoint's. A run
    resumed into another folder copies the checkpoint's ``best.pt`` (the best so far) there when
    it lies beside the checkpoint. Run under torchrun for several processes; only rank 0 writes files.
    The run's header (model, data, device, steps, optimiser and schedule, folder) is printed and logged.

    The run folder is safe: everything that can fail on bad input (config, datasets, model, the
    checkpoint) fails before it is touched; with ``check_data`` that includes every file of the
    data sets (``sacseg.data.check``: decoded once, remembered in a cache). A folder that holds a
    run is refused (ValueError) unless ``resume`` continues it or ``overwrite`` is set (its run
    files are deleted first); rank 0 holds an exclusive lock on it while training (a second run
    into it is refused, naming the first), removes temporary files that a killed run left, and
    opens ``train.log`` before it writes anything else. A checkpoint already at the last iteration
    trains nothing and writes nothing. A NaN or infinite loss raises NonFiniteLossError naming the
    last good checkpoint. An error that ends a started run is logged, traceback then one last line
    (``logged_to(err)`` names the log); Ctrl-C raises RunInterrupted, whose message, also the last
    line of ``train.log``, says how to resume.
    """
    ctx = init_distributed(cfg.device, timeout=cfg.dist_timeout)
    try:
        return _train(cfg, resume, overwrite, check_data, ctx)
    finally:
        cleanup_distributed()


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) ended a run; the message says at which iteration and how to resume."""


# The attribute by which ``train`` marks an error it logged with its traceback.
_LOGGED_TO = "_sacseg_train_log"


def logged_to(err: BaseException) -> Path | None:
    """The ``train.log`` in which ``train`` recorded ``err`` (its traceback, then one line ending the
    log), or None: an error raised before the run started, or on a rank other than 0."""
    return getattr(err, _LOGGED_TO, None)


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


def _train(cfg: TrainConfig, resume: str | None, overwrite: bool, check_data: bool, ctx: DistContext) -> TrainResult:
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
            _run(cfg, run, ctx, out_dir, _Start(checkpoint, resume, continues, overwrite), check_data)
    best = out_dir / "best.pt"
    return TrainResult(
        iteration=run.iteration, total=run.total, best_miou=run.best, last_metrics=run.last_metrics,
        losses=run.losses, out_dir=out_dir, resumed_from=checkpoint, is_main=ctx.is_main,
        best_checkpoint=best if ctx.is_main and math.isfinite(run.best) and best.is_file() else None,
    )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class _Start:
    """How a run starts: the ``checkpoint`` it resumes (from ``resume``), whether it ``continues`` the
    run in its folder, whether it replaces it (``overwrite``)."""

    checkpoint: Path | None
    resume: str | None
    continues: bool
    overwrite: bool

    def describe(self, out_dir: Path, run: RunState, carried: Path | None) -> str:
        """Where the run starts from, and where the best so far is when it resumes into another folder."""
        if self.checkpoint is None:
            missing = f"no {out_dir / 'last.pt'} yet: " if self.resume == "auto" else ""
            return f"{missing}starting from scratch"
        text = f"resumed from {self.checkpoint} at iteration {run.iteration}"
        if run.changed:
            text += f" (config keys changed since: {', '.join(run.changed)})"
        if self.continues or not math.isfinite(run.best):
            return text
        if carried is not None:
            return f"{text}; best so far: validation mIoU {100 * run.best:.2f}, {carried} copied into the run folder"
        return (
            f"{text}; best so far: validation mIoU {100 * run.best:.2f}, but no best.pt beside {self.checkpoint} "
            "holds it: this folder gets a best.pt when the run beats it"
        )


def _run(cfg: TrainConfig, run: RunState, ctx: DistContext, out_dir: Path, start: _Start, check_data: bool) -> None:
    """Check the data, then lock the folder, open its log, write the run's files and train; logs how the run ends."""
    carried = None if start.continues or start.checkpoint is None else best_to_carry(start.checkpoint, run.best)
    if start.checkpoint is not None and start.checkpoint.resolve() == (out_dir / "last.pt").resolve():
        run.last_saved = run.iteration
    header = run_header(cfg, run, ctx, out_dir, start.describe(out_dir, run, carried))
    _announce(header, ctx.is_main)
    if check_data:
        # Every rank checks every file (rank 0 saves the cache): the ranks stay in step, none waits
        # on another past dist_timeout, and all fail alike on a bad file.
        checked = check_datasets((run.train_set, run.val_set), threads=cfg.workers, progress=ctx.is_main, save=ctx.is_main)
        if checked is not None:
            header.append(checked.describe())
            _announce([header[-1]], ctx.is_main)
    if ctx.is_main:
        require_tensorboard()
    revision = git_revision()
    with locked_run_folder(out_dir) if ctx.is_main else contextlib.nullcontext():
        notes = _clean_run_folder(out_dir, start) if ctx.is_main else []
        with _run_log(out_dir, ctx.is_main), _ending_logged(run, out_dir, ctx.is_main):
            if ctx.is_main:
                _write_run_files(cfg, out_dir, revision, carried)
            for line in [*header, *notes]:
                _log.log(logging.WARNING if line.startswith("warning:") else logging.INFO, line)
            fit(cfg, run, ctx, out_dir, revision)


def _announce(lines: list[str], active: bool) -> None:
    if active:
        print("\n".join(lines), flush=True)


@contextlib.contextmanager
def _run_log(out_dir: Path, active: bool) -> Iterator[None]:
    """``train.log`` gets the run's log while the block runs (rank 0), appended to what a resumed run logged."""
    _log.setLevel(logging.INFO)
    if not active:
        yield
        return
    path = out_dir / "train.log"
    try:
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError as err:
        raise OSError(f"cannot open the run's log {path}: {err.strerror or err}") from err
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    _log.addHandler(handler)
    try:
        yield
    finally:
        _log.removeHandler(handler)
        handler.close()


@contextlib.contextmanager
def _ending_logged(run: RunState, out_dir: Path, active: bool) -> Iterator[None]:
    """Whatever ends a started run early is the last line of ``train.log`` (rank 0): Ctrl-C becomes
    RunInterrupted saying how to resume; an error is logged with its traceback and re-raised as it is."""
    try:
        yield
    except KeyboardInterrupt:
        saved = "no checkpoint yet" if run.last_saved is None else f"last.pt holds iteration {run.last_saved}"
        message = f"interrupted at iteration {run.iteration} ({saved}); resume with: sacseg train --resume auto --out {out_dir}"
        if active:
            _log.warning(message)
        raise RunInterrupted(message) from None
    except Exception as err:
        if active:
            _log.error("the error that stopped the run:\n%s", "".join(traceback.format_exception(err)).rstrip())
            _log.error("stopped at iteration %d: %s: %s", run.iteration, type(err).__name__, err)
            setattr(err, _LOGGED_TO, out_dir / "train.log")
        raise


def _clean_run_folder(out_dir: Path, start: _Start) -> list[str]:
    """With the folder's lock held: check it again, clear it (``overwrite``), delete stale temporary files; return notes for the log."""
    # Checked again: another run may have written the folder since the check before the set-up.
    check_run_folder(out_dir, start.continues, start.overwrite)
    notes = []
    cleared = clear_run(out_dir) if start.overwrite else []
    if cleared:
        notes.append(f"--overwrite: deleted the previous run's {', '.join(cleared)}")
    freed = remove_stale_temp_files(out_dir)
    if freed:
        notes.append(f"deleted temporary files of interrupted checkpoint writes ({freed / 1e6:.1f} MB)")
    return notes


def _write_run_files(cfg: TrainConfig, out_dir: Path, revision: str, carried: Path | None) -> None:
    """The config, the code's revision and the best checkpoint so far (``carried``), each written whole."""
    save_config(cfg, out_dir / "config.yaml")
    with atomic_open(out_dir / "git_revision.txt", "w", encoding="utf-8") as handle:
        handle.write(revision + "\n")
    if carried is not None:
        with carried.open("rb") as source, atomic_open(out_dir / "best.pt", "wb") as target:
            shutil.copyfileobj(source, target)


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
