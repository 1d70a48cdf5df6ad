"""The training loop: SGD with step or poly learning rate, validation mIoU, checkpoints, exact resume, DDP."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from sacseg.checkpoint import load_checkpoint, restore_rng_state, save_checkpoint
from sacseg.config import TrainConfig, save_config
from sacseg.data import IGNORE_INDEX, SegmentationDataset
from sacseg.data.protocol import torch_dataset
from sacseg.evaluation.evaluate import evaluate
from sacseg.factory import build_datasets, build_model_from_config
from sacseg.options import InferenceOptions
from sacseg.training.distributed import (
    DistContext,
    all_reduce_mean,
    cleanup_distributed,
    init_distributed,
    unwrap,
    wrap_model,
)
from sacseg.training.monitor import TrainMonitor
from sacseg.training.run_dir import check_run_folder, clear_run, locked_run_folder, remove_stale_temp_files
from sacseg.training.sampling import ResumableSampler, SeededSamples, seed_worker
from sacseg.utils.io import atomic_open
from sacseg.utils.revision import git_revision

__all__ = [
    "NonFiniteLossError",
    "build_optimizer",
    "build_scheduler",
    "make_train_loader",
    "seed_everything",
    "segmentation_loss",
    "train",
    "train_step",
]

_log = logging.getLogger("sacseg.train")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped without writing the bad weights."""


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


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.SGD:
    """SGD with momentum and weight decay over the parameters that require gradients.

    The scale regressors' parameters (``scale_regressors.*``) form a second group with learning
    rate ``lr * scale_lr_mult``, as Deformable ConvNets do for their offset convolutions: they
    read unnormalised res4/res5 features, so their gradient is large for an output that lives in
    ``[min_scale, max_scale]``.
    """
    named = [(n, p) for n, p in unwrap(model).named_parameters() if p.requires_grad]
    if not named:
        raise ValueError(f"model {cfg.model!r} has no trainable parameters")
    scale = [p for n, p in named if n.startswith("scale_regressors.")]
    rest = [p for n, p in named if not n.startswith("scale_regressors.")]
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
    cfg: TrainConfig, optimizer: torch.optim.Optimizer, iters_per_unit: int, total: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration learning rate: ``step`` multiplies by ``lr_step_factor`` from ``lr_step`` on
    (the paper: 60 epochs at 5e-4, then 10 at 5e-5); ``poly`` is ``(1 - it / total) ** poly_power``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(cfg, iters_per_unit, total))


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


def _val_loader(cfg: TrainConfig, dataset: SegmentationDataset, ctx: DistContext) -> DataLoader:
    # Images may differ in size, so one per batch; shards without padding so no image counts twice.
    shard = list(range(ctx.rank, len(dataset), ctx.world_size))
    return DataLoader(
        torch.utils.data.Subset(torch_dataset(dataset), shard),
        batch_size=1,
        num_workers=min(cfg.workers, 2),
        pin_memory=ctx.device.type == "cuda",
        generator=torch.Generator().manual_seed(cfg.seed),
    )


def segmentation_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Per-pixel cross-entropy averaged over labelled pixels; ``logits [N, K, H, W]``, ``target [N, H, W]``."""
    return F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    images: Tensor,
    targets: Tensor,
    ctx: DistContext,
    iteration: int,
    amp: bool,
    grad_clip: float | None,
) -> tuple[float, dict[str, float]]:
    """One SGD step on a batch; returns the loss (mean over processes) and the mean of each scale map.

    Raises NonFiniteLossError naming the iteration before any weight changes if the loss (on
    any process) is NaN or infinite.
    """
    images = images.to(ctx.device, non_blocking=True)
    targets = targets.to(ctx.device, non_blocking=True)
    with torch.autocast(device_type=ctx.device.type, dtype=torch.float16, enabled=amp):
        output = model(images)
        loss = segmentation_loss(output["out"], targets)
    loss_value = float(all_reduce_mean(loss, ctx))
    if not math.isfinite(loss_value):
        raise NonFiniteLossError(f"loss is {loss_value} at iteration {iteration + 1}; training stopped")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip is not None:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], grad_clip)
    scaler.step(optimizer)
    scaler.update()
    scales = {name: float(s.detach().float().mean()) for name, s in output["scales"].items()}
    return loss_value, scales


def _setup_logging(out_dir: Path, is_main: bool) -> logging.Handler | None:
    _log.setLevel(logging.INFO)
    if not is_main:
        return None
    handler = logging.FileHandler(out_dir / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    _log.addHandler(handler)
    return handler


def _resume_path(resume: str | None, out_dir: Path) -> Path | None:
    if resume is None:
        return None
    if resume == "auto":
        last = out_dir / "last.pt"
        return last if last.is_file() else None
    return Path(resume)


def _continues_run(resume: str | None, checkpoint: Path | None, out_dir: Path) -> bool:
    """Whether the run carries on the one in ``out_dir``: ``--resume auto``, or a checkpoint inside it."""
    return resume == "auto" or (checkpoint is not None and checkpoint.resolve().parent == out_dir.resolve())


def train(cfg: TrainConfig, resume: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Train as ``cfg`` says, writing into ``cfg.out_dir``; returns a summary.

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
    iteration trains nothing and writes nothing.

    Returns ``{"iteration", "best_miou", "last_metrics" (the last validation's scores), "losses"
    (this run's loss per iteration; empty when nothing was left to train), "out_dir", "total"
    (the run's iterations), "resumed_from" (the checkpoint's path, or None), "is_main" (rank 0,
    the process that reports)}``.
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


@dataclasses.dataclass
class _Run:
    """A run's state: everything built from the config, where training stands (from the checkpoint
    when resuming) and what it has measured so far."""

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
    changed: list[str] = dataclasses.field(default_factory=list)  # config keys changed since the checkpoint
    losses: list[float] = dataclasses.field(default_factory=list)
    last_metrics: dict[str, Any] = dataclasses.field(default_factory=dict)  # of the last validation


def _train(cfg: TrainConfig, resume: str | None, overwrite: bool, ctx: DistContext) -> dict[str, Any]:
    out_dir = Path(cfg.out_dir)
    if cfg.batch_size % ctx.world_size:
        raise ValueError(f"config key 'batch_size' ({cfg.batch_size}) must divide by the process count {ctx.world_size}")
    checkpoint = _resume_path(resume, out_dir)
    continues = _continues_run(resume, checkpoint, out_dir)
    if overwrite and continues:
        raise ValueError(f"--overwrite would delete the run in {out_dir} that --resume continues; give one of them")
    if ctx.is_main:
        check_run_folder(out_dir, continues, overwrite)  # fail fast, before the slow set-up
    with _restored_torch_settings():
        run = _prepare(cfg, checkpoint, ctx)
        summary = {"iteration": run.iteration, "best_miou": run.best, "last_metrics": {}, "losses": [],
                   "out_dir": str(out_dir), "total": run.total, "is_main": ctx.is_main,
                   "resumed_from": None if checkpoint is None else str(checkpoint)}  # fmt: skip
        if run.iteration >= run.total:
            return summary  # nothing left to train: the folder is not touched
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
                return {**summary, **_fit(cfg, run, ctx, out_dir, revision)}
            finally:
                if handler is not None:
                    _log.removeHandler(handler)
                    handler.close()


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


def _prepare(cfg: TrainConfig, checkpoint: Path | None, ctx: DistContext) -> _Run:
    """Build datasets, model, optimiser and schedule, and load ``checkpoint``; writes nothing."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed, cfg.deterministic)
    train_set, val_set = build_datasets(cfg)
    iters_per_epoch = len(train_set) // cfg.batch_size
    if iters_per_epoch < 1:
        raise ValueError(f"the training set has {len(train_set)} samples, fewer than batch_size {cfg.batch_size}")
    iters_per_unit = iters_per_epoch if cfg.epochs else 1
    total = cfg.epochs * iters_per_epoch if cfg.epochs else cfg.iterations

    model = wrap_model(build_model_from_config(cfg), ctx, sync_bn=cfg.sync_bn)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer, iters_per_unit, total)
    use_amp = cfg.amp and ctx.device.type == "cuda"
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=use_amp)
    run = _Run(train_set, val_set, model, optimizer, scheduler, scaler, use_amp, iters_per_epoch, iters_per_unit, total)
    if checkpoint is not None:
        _resume(cfg, checkpoint, run)
    return run


_RESUME_KEYS = ("model", "optimizer", "scheduler", "scaler", "rng", "iteration", "best_metric")
# Optimiser settings the config decides even on resume (the scheduler's base learning rate is "initial_lr").
_OPTIMIZER_SETTINGS = ("initial_lr", "momentum", "weight_decay")


def _resume(cfg: TrainConfig, path: Path, run: _Run) -> None:
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


def _fit(cfg: TrainConfig, run: _Run, ctx: DistContext, out_dir: Path, revision: str) -> dict[str, Any]:
    """Train ``run`` from its iteration to its total: steps, reports, validations and checkpoints."""
    _log.info(
        "training %s on %s: %d iterations (%d per epoch), %d process(es) on %s, global batch %d",
        cfg.model, cfg.dataset, run.total, run.iters_per_epoch, ctx.world_size, ctx.device, cfg.batch_size,
    )  # fmt: skip
    val_loader = _val_loader(cfg, run.val_set, ctx)
    checkpointer = _Checkpointer(cfg, run, out_dir, revision, active=ctx.is_main)
    with (
        _failures_explained(cfg, run, ctx, out_dir),
        TrainMonitor(cfg, run.total, run.iteration, out_dir, ctx.is_main) as monitor,
    ):
        if cfg.val_at_start and run.iteration == 0:  # the starting weights can win the selection
            _validate(cfg, run, ctx, val_loader, monitor, checkpointer)
        while run.iteration < run.total:
            epoch, done_in_epoch = divmod(run.iteration, run.iters_per_epoch)
            run.model.train()
            tick = time.perf_counter()
            for images, targets in make_train_loader(cfg, run.train_set, ctx, epoch, done_in_epoch):
                loss, lr, scales = _step(cfg, run, ctx, images, targets)
                monitor.step(run.iteration, loss, lr, cfg.batch_size / max(time.perf_counter() - tick, 1e-9), scales)
                if _due(cfg.val_every, run):
                    _validate(cfg, run, ctx, val_loader, monitor, checkpointer)
                if _due(cfg.checkpoint_every, run):
                    checkpointer.save("last.pt")
                    monitor.resume_timing()
                if run.iteration >= run.total:
                    break
                tick = time.perf_counter()  # images/s counts training only: not validation, not checkpoints
    _log.info("done: %d iterations, best validation mIoU %.2f", run.iteration, 100 * run.best)
    return {
        "iteration": run.iteration, "best_miou": run.best, "last_metrics": run.last_metrics, "losses": run.losses,
        "out_dir": str(out_dir),
    }  # fmt: skip


def _due(every: int, run: _Run) -> bool:
    """Whether the iteration just done ends a period of ``every`` epochs (or iterations), or the run."""
    return run.iteration % (every * run.iters_per_unit) == 0 or run.iteration == run.total


def _step(
    cfg: TrainConfig, run: _Run, ctx: DistContext, images: Tensor, targets: Tensor
) -> tuple[float, float, dict[str, float]]:
    """One optimisation step and the schedule's move; returns the loss, the step's learning rate and the mean scales."""
    lr = run.optimizer.param_groups[0]["lr"]  # the step's own lr, before the scheduler moves it on
    loss, scales = train_step(
        run.model, run.optimizer, run.scaler, images, targets, ctx, run.iteration, run.use_amp, cfg.grad_clip
    )
    run.scheduler.step()
    run.iteration += 1
    run.losses.append(loss)
    return loss, lr, scales


def _validate(
    cfg: TrainConfig, run: _Run, ctx: DistContext, loader: DataLoader, monitor: TrainMonitor, checkpointer: _Checkpointer
) -> None:
    """Score the validation set, report it, and keep ``best.pt`` at a new best mIoU."""
    run.last_metrics = evaluate(
        unwrap(run.model), loader, cfg.num_classes, ignore_index=IGNORE_INDEX, device=ctx.device,
        options=InferenceOptions.from_config(cfg), progress=ctx.is_main, desc="val",
    ).compute()  # fmt: skip
    monitor.validation(run.last_metrics, unwrap(run.model), run.val_set, run.iteration)
    if run.last_metrics["miou"] > run.best:
        run.best = run.last_metrics["miou"]
        checkpointer.save("best.pt")
    monitor.resume_timing()


class _Checkpointer:
    """Writes the run's state into its folder, as ``save_checkpoint`` records it; only where ``active`` (rank 0)."""

    def __init__(self, cfg: TrainConfig, run: _Run, out_dir: Path, revision: str, active: bool) -> None:
        self.run, self.out_dir, self.revision, self.active = run, out_dir, revision, active
        self.config = dataclasses.asdict(cfg)

    def save(self, name: str) -> None:
        if not self.active:
            return
        run = self.run
        save_checkpoint(
            self.out_dir / name, model=unwrap(run.model), optimizer=run.optimizer, scheduler=run.scheduler,
            scaler=run.scaler, iteration=run.iteration, epoch=run.iteration // run.iters_per_epoch,
            config=self.config, best_metric=run.best, git_revision=self.revision,
        )  # fmt: skip


@contextlib.contextmanager
def _failures_explained(cfg: TrainConfig, run: _Run, ctx: DistContext, out_dir: Path) -> Iterator[None]:
    """A non-finite loss names the last good checkpoint; a peer that stalled past ``dist_timeout``
    becomes a TimeoutError naming this rank and the iteration."""
    try:
        yield
    except NonFiniteLossError as err:
        last = out_dir / "last.pt"
        kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was written yet"
        _log.error("%s; %s", err, kept)
        raise NonFiniteLossError(f"{err}; {kept}") from err
    except RuntimeError as err:
        # Gloo's "Timed out waiting ...ms for recv operation" (NCCL's watchdog ends the process itself).
        if not (ctx.distributed and "timed out" in str(err).lower()):
            raise
        message = (
            f"rank {ctx.rank} of {ctx.world_size} waited more than {cfg.dist_timeout:g} s (config key "
            f"dist_timeout) for the other processes after iteration {run.iteration}: one of them stalled or died"
        )
        _log.error(message)
        raise TimeoutError(message) from err
