"""The training loop: SGD with step or poly learning rate, validation mIoU, checkpoints, exact resume, DDP."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from sacseg.data import DATASETS, ScaleScenes, SegmentationFolder
from sacseg.data.transforms import eval_transforms, train_transforms
from sacseg.engine.checkpoint import load_checkpoint, restore_rng_state, save_checkpoint
from sacseg.engine.config import TrainConfig, save_config
from sacseg.engine.distributed import (
    DistContext,
    all_reduce_mean,
    cleanup_distributed,
    init_distributed,
    unwrap,
    wrap_model,
)
from sacseg.engine.evaluate import evaluate
from sacseg.engine.inference import predict_with_scales
from sacseg.engine.io import atomic_open
from sacseg.engine.metrics import format_results
from sacseg.engine.run_dir import check_run_folder, clear_run, locked_run_folder, remove_stale_temp_files
from sacseg.engine.sampling import ResumableSampler, SeededSamples, seed_worker
from sacseg.models import build_model, load_baseline, load_baseline_and_freeze
from sacseg.viz import colorize, denormalize, heatmap

__all__ = [
    "NonFiniteLossError",
    "seed_everything",
    "dataset_class",
    "build_eval_dataset",
    "build_datasets",
    "build_model_from_config",
    "build_optimizer",
    "build_scheduler",
    "make_train_loader",
    "segmentation_loss",
    "train_step",
    "train",
]

IGNORE_INDEX = 255
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


# ScaleScenes' convention: each split is generated from its own seed, so validation is held out.
_SCALE_SCENES_SEEDS = {"train": 0, "val": 1, "test": 2}


def _scale_scenes(cfg: TrainConfig, split: str, num_images: int, transforms: Any) -> Dataset:
    if split not in _SCALE_SCENES_SEEDS:
        raise ValueError(f"scale_scenes split {split!r} is unknown; valid: {', '.join(_SCALE_SCENES_SEEDS)}")
    return ScaleScenes(num_images, size=cfg.scale_scenes_size, seed=_SCALE_SCENES_SEEDS[split], transforms=transforms)


def dataset_class(cfg: TrainConfig) -> type[Dataset]:
    """The ``sacseg.data`` class the config's ``dataset`` names (its ``classes`` and ``palette``), built
    as ``(data_root, split, transforms=...)``; for ``folder``, ``SegmentationFolder`` laid out by the
    config's ``folder_*`` keys."""
    if cfg.dataset not in DATASETS:
        raise ValueError(f"config key 'dataset': {cfg.dataset!r} is unknown; valid: {', '.join(sorted(DATASETS))}")
    if cfg.dataset == "folder":
        classes = _folder_classes(cfg)
        return SegmentationFolder.with_layout(
            cfg.folder_images, cfg.folder_masks, classes, _folder_palette(cfg, len(classes)), cfg.folder_ignore_index
        )
    return DATASETS[cfg.dataset]


def _folder_classes(cfg: TrainConfig) -> list[str]:
    """``folder_classes``: the list itself, or the names in the file it names (relative to ``data_root``)."""
    if isinstance(cfg.folder_classes, list):
        return cfg.folder_classes
    path = Path(cfg.data_root) / str(cfg.folder_classes)
    if not path.is_file():
        raise FileNotFoundError(f"config key 'folder_classes': class-name file not found: {path}")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise ValueError(f"config key 'folder_classes': no class names in {path}")
    return names


def _folder_palette(cfg: TrainConfig, num_classes: int) -> Tensor | None:
    if cfg.folder_palette is None:
        return None
    palette = cfg.folder_palette
    if len(palette) != num_classes or any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in palette):
        raise ValueError(
            f"config key 'folder_palette' must be {num_classes} colours [r, g, b] in 0..255 (one per class), got {palette}"
        )
    return torch.tensor(palette, dtype=torch.uint8)


def _check_num_classes(cfg: TrainConfig, dataset: Dataset) -> Dataset:
    num_classes = len(dataset.classes)  # type: ignore[attr-defined]
    if num_classes != cfg.num_classes:
        raise ValueError(f"config key 'num_classes' is {cfg.num_classes} but dataset {cfg.dataset!r} has {num_classes} classes")
    return dataset


def build_eval_dataset(cfg: TrainConfig, split: str | None = None) -> Dataset:
    """The config's dataset, split ``split`` (default ``val_split``), with eval transforms only."""
    split = cfg.val_split if split is None else split
    if cfg.dataset == "scale_scenes":
        dataset = _scale_scenes(cfg, split, cfg.scale_scenes_val_images, eval_transforms())
    else:
        dataset = dataset_class(cfg)(cfg.data_root, split, transforms=eval_transforms())
    return _check_num_classes(cfg, dataset)


def build_datasets(cfg: TrainConfig) -> tuple[Dataset, Dataset]:
    """The training set (with the paper's augmentation) and the validation set (eval transforms)."""
    train_tf = train_transforms(cfg.crop_size, (cfg.scale_min, cfg.scale_max), cfg.flip)
    if cfg.dataset == "scale_scenes":
        train_set = _scale_scenes(cfg, cfg.train_split, cfg.scale_scenes_train_images, train_tf)
    else:
        train_set = dataset_class(cfg)(cfg.data_root, cfg.train_split, transforms=train_tf)
    return _check_num_classes(cfg, train_set), build_eval_dataset(cfg)


def build_model_from_config(cfg: TrainConfig) -> nn.Module:
    """``build_model`` with the config's options; ``init_checkpoint`` configs start from its weights,
    "-only" configs load and freeze their baseline."""
    options: dict[str, Any] = {
        "output_stride": cfg.output_stride,
        "backbone_weights": cfg.backbone_weights,
        "upsample": cfg.upsample,
        "classifier_dilation": cfg.classifier_dilation,
        "frozen_bn": cfg.frozen_bn,
    }
    if cfg.model.startswith("sac_"):
        options.update(min_scale=cfg.min_scale, max_scale=cfg.max_scale, scale_bound=cfg.scale_bound)
    model = build_model(cfg.model, cfg.num_classes, **options)
    if cfg.init_checkpoint is not None:
        load_baseline(model, load_checkpoint(cfg.init_checkpoint)["model"], source=cfg.init_checkpoint)
    if cfg.baseline_checkpoint is not None:
        load_baseline_and_freeze(model, load_checkpoint(cfg.baseline_checkpoint)["model"])
    return model


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
    groups = [{"params": rest}] if rest else []
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
    cfg: TrainConfig, dataset: Dataset, ctx: DistContext, epoch: int, skip_batches: int
) -> DataLoader:
    """This process's share of epoch ``epoch``, starting after ``skip_batches`` batches.

    Each process loads ``batch_size / world_size`` samples per step; sample order and every
    sample's augmentation are fixed by (seed, epoch, index), so resuming mid-epoch repeats
    nothing and skips nothing, whatever the number of workers.
    """
    local_batch = cfg.batch_size // ctx.world_size
    sampler = ResumableSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, seed=cfg.seed)
    sampler.set_position(epoch, skip_batches * local_batch)
    generator = torch.Generator().manual_seed(cfg.seed * 7919 + epoch)
    return DataLoader(
        SeededSamples(dataset),
        batch_size=local_batch,
        sampler=sampler,
        num_workers=cfg.workers,
        pin_memory=ctx.device.type == "cuda",
        drop_last=True,
        worker_init_fn=seed_worker,
        generator=generator,
    )


def _val_loader(cfg: TrainConfig, dataset: Dataset, ctx: DistContext) -> DataLoader:
    # Images may differ in size, so one per batch; shards without padding so no image counts twice.
    shard = list(range(ctx.rank, len(dataset), ctx.world_size))  # type: ignore[arg-type]
    return DataLoader(
        torch.utils.data.Subset(dataset, shard),
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


def git_revision() -> str:
    """``git rev-parse HEAD`` of the sacseg source tree, or "unknown" outside git."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() or "unknown"


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
    """A run ready to train: everything built from the config, and the checkpoint's state when resuming."""

    train_set: Dataset
    val_set: Dataset
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
    iters_per_epoch = len(train_set) // cfg.batch_size  # type: ignore[arg-type]
    if iters_per_epoch < 1:
        raise ValueError(f"the training set has {len(train_set)} samples, fewer than batch_size {cfg.batch_size}")  # type: ignore[arg-type]
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
    model, optimizer, scheduler, scaler = run.model, run.optimizer, run.scheduler, run.scaler
    iteration, best, total = run.iteration, run.best, run.total
    iters_per_epoch, iters_per_unit = run.iters_per_epoch, run.iters_per_unit

    writer = SummaryWriter(str(out_dir / "tb")) if ctx.is_main else None
    val_loader = _val_loader(cfg, run.val_set, ctx)
    config_dict = dataclasses.asdict(cfg)
    last_metrics: dict[str, Any] = {}
    losses: list[float] = []

    def save(path: Path, at: int) -> None:
        save_checkpoint(
            path, model=unwrap(model), optimizer=optimizer, scheduler=scheduler, scaler=scaler, iteration=at,
            epoch=at // iters_per_epoch, config=config_dict, best_metric=best, git_revision=revision,
        )  # fmt: skip

    _log.info(
        "training %s on %s: %d iterations (%d per epoch), %d process(es) on %s, global batch %d",
        cfg.model, cfg.dataset, total, iters_per_epoch, ctx.world_size, ctx.device, cfg.batch_size,
    )  # fmt: skip
    progress = tqdm(total=total, initial=iteration, disable=not ctx.is_main, desc="train", dynamic_ncols=True)
    postfix: dict[str, str] = {}

    def validate(at: int) -> None:
        """Score the model on the validation set; a new best is saved as ``best.pt``."""
        nonlocal best, last_metrics
        last_metrics = evaluate(
            unwrap(model), val_loader, cfg.num_classes, ignore_index=IGNORE_INDEX, device=ctx.device,
            mode=cfg.eval_mode, crop_size=cfg.eval_crop_size, stride=cfg.eval_stride,
            progress=ctx.is_main, desc="val",
        ).compute()  # fmt: skip
        miou = last_metrics["miou"]
        if ctx.is_main:
            _report_validation(last_metrics, run.val_set, at, progress, writer)
            if writer is not None:
                _validation_pictures(unwrap(model), run.val_set, cfg, at, writer)
        postfix["val_miou"] = f"{100 * miou:.2f}"
        progress.set_postfix(postfix)
        if miou > best:
            best = miou
            if ctx.is_main:
                save(out_dir / "best.pt", at)
        progress.unpause()  # the bar's rate counts training only

    try:
        if cfg.val_at_start and iteration == 0:
            validate(0)
        while iteration < total:
            epoch, done_in_epoch = divmod(iteration, iters_per_epoch)
            loader = make_train_loader(cfg, run.train_set, ctx, epoch, done_in_epoch)
            model.train()
            tick = time.perf_counter()
            for images, targets in loader:
                lr = optimizer.param_groups[0]["lr"]  # the step's own lr, before the scheduler moves it on
                loss, scales = train_step(
                    model, optimizer, scaler, images, targets, ctx, iteration, run.use_amp, cfg.grad_clip
                )
                scheduler.step()
                iteration += 1
                losses.append(loss)
                throughput = cfg.batch_size / max(time.perf_counter() - tick, 1e-9)
                progress.update(1)
                postfix.update(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{throughput:.1f}")
                progress.set_postfix(postfix)
                if writer is not None:
                    writer.add_scalar("train/loss", loss, iteration)
                    writer.add_scalar("train/lr", lr, iteration)
                    writer.add_scalar("train/images_per_s", throughput, iteration)
                    for name, value in scales.items():
                        writer.add_scalar(f"train/mean_scale/{name}", value, iteration)
                if iteration % cfg.log_every == 0 or iteration == total:
                    _log.info("iteration %d/%d loss %.4f lr %.3e %.1f img/s", iteration, total, loss, lr, throughput)
                if iteration % (cfg.val_every * iters_per_unit) == 0 or iteration == total:
                    validate(iteration)
                if ctx.is_main and (iteration % (cfg.checkpoint_every * iters_per_unit) == 0 or iteration == total):
                    save(out_dir / "last.pt", iteration)
                    progress.unpause()
                if iteration >= total:
                    break
                tick = time.perf_counter()  # images/s counts training only: not validation, not checkpoints
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
            f"dist_timeout) for the other processes after iteration {iteration}: one of them stalled or died"
        )
        _log.error(message)
        raise TimeoutError(message) from err
    finally:
        progress.close()
        if writer is not None:
            writer.close()
    _log.info("done: %d iterations, best validation mIoU %.2f", iteration, 100 * best)
    return {
        "iteration": iteration, "best_miou": best, "last_metrics": last_metrics, "losses": losses,
        "out_dir": str(out_dir),
    }  # fmt: skip


# Validation images drawn into TensorBoard at each validation (prediction, ground truth, scale maps),
# each panel subsampled to at most _PICTURE_SIZE pixels a side (a Cityscapes frame is 2048 wide).
_VAL_PICTURES = 2
_PICTURE_SIZE = 512


def _report_validation(
    metrics: dict[str, Any], val_set: Dataset, iteration: int, progress: tqdm, writer: SummaryWriter | None
) -> None:
    """A validation's scores to the terminal (the per-class table), ``train.log`` and TensorBoard; in percent
    on the terminal and in the log, as ``sacseg eval`` prints them."""
    classes = val_set.classes  # type: ignore[attr-defined]
    miou, pixel_acc = 100 * metrics["miou"], 100 * metrics["pixel_acc"]
    progress.write(f"iteration {iteration} validation:\n{format_results(metrics, classes)}")
    _log.info("iteration %d validation mIoU %.2f pixel acc %.2f mean acc %.2f (percent)",
              iteration, miou, pixel_acc, 100 * metrics["mean_acc"])  # fmt: skip
    per_class = ", ".join(f"{name} {100 * iou:.2f}" for name, iou in zip(classes, metrics["iou"]))
    _log.info("iteration %d validation IoU per class (percent, nan: absent): %s", iteration, per_class)
    if writer is None:
        return
    for key in ("miou", "pixel_acc", "mean_acc"):
        writer.add_scalar(f"val/{key}", metrics[key], iteration)
    for name, iou in zip(classes, metrics["iou"]):
        if not math.isnan(iou):  # absent from prediction and ground truth: no point to plot
            writer.add_scalar(f"val/iou/{name}", iou, iteration)


@torch.no_grad()
def _validation_pictures(model: nn.Module, val_set: Dataset, cfg: TrainConfig, iteration: int, writer: SummaryWriter) -> None:
    """The first validation images to TensorBoard: image | prediction | ground truth, and each scale map
    as a heat map on ``[min_scale, max_scale]``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for index in range(min(_VAL_PICTURES, len(val_set))):  # type: ignore[arg-type]
            image, target = val_set[index]
            probs, scale_maps = predict_with_scales(model, image[None].to(device))
            palette = val_set.palette  # type: ignore[attr-defined]
            step = math.ceil(max(target.shape) / _PICTURE_SIZE)  # nearest subsampling keeps the class colours exact
            row = [denormalize(image), colorize(probs.argmax(1)[0].cpu(), palette), colorize(target, palette)]
            picture = np.concatenate([panel[::step, ::step] for panel in row], axis=1)
            writer.add_image(f"val/prediction/{index}", picture, iteration, dataformats="HWC")
            for name, scale in scale_maps.items():
                # Maps held at one value (min_scale == max_scale) are drawn on a range around it.
                high = cfg.max_scale if cfg.max_scale > cfg.min_scale else cfg.min_scale + 1.0
                picture = heatmap(scale[0, 0, ::step, ::step].cpu(), cfg.min_scale, high)
                writer.add_image(f"val/scale_{name}/{index}", picture, iteration, dataformats="HWC")
    finally:
        model.train(was_training)
