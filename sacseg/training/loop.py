"""The training loop: one optimisation step, and the steps from a run's position to its end with validations and checkpoints."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from sacseg.config import TrainConfig
from sacseg.data import IGNORE_INDEX
from sacseg.evaluation.evaluate import evaluate
from sacseg.options import InferenceOptions
from sacseg.training.data import make_train_loader, make_val_loader
from sacseg.training.distributed import DistContext, all_reduce_mean, unwrap
from sacseg.training.monitor import TrainMonitor
from sacseg.training.resume import Checkpointer
from sacseg.training.state import RunState, StepSettings

__all__ = ["NonFiniteLossError", "fit", "segmentation_loss", "train_step"]

_log = logging.getLogger("sacseg.train")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped without writing the bad weights."""


def segmentation_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Per-pixel cross-entropy averaged over labelled pixels; ``logits [N, K, H, W]``, ``target [N, H, W]``."""
    return F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX)


def train_step(
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    images: Tensor,
    targets: Tensor,
    ctx: DistContext,
    iteration: int,
    steps: StepSettings,
    grad_clip: float | None,
) -> tuple[float, dict[str, float]]:
    """One SGD step on a batch; returns the loss (mean over processes) and the mean of each scale map.

    ``steps.forward`` (the model, or the model compiled) computes the loss, ``optimizer`` updates
    the model's parameters. Raises NonFiniteLossError naming the iteration before any
    weight changes if the loss (on any process) is NaN or infinite.
    """
    layout = torch.channels_last if steps.channels_last else torch.contiguous_format
    images = images.to(ctx.device, non_blocking=True, memory_format=layout)
    targets = targets.to(ctx.device, non_blocking=True)
    with torch.autocast(device_type=ctx.device.type, dtype=steps.autocast, enabled=steps.autocast is not None):
        output = steps.forward(images)
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


def fit(cfg: TrainConfig, run: RunState, ctx: DistContext, out_dir: Path, revision: str) -> None:
    """Train ``run`` from its iteration to its total: steps, reports, validations and checkpoints."""
    val_loader = make_val_loader(cfg, run.val_set, ctx)
    checkpointer = Checkpointer(cfg, run, out_dir, revision, active=ctx.is_main)
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
                    run.last_saved = run.iteration
                    monitor.resume_timing()
                if run.iteration >= run.total:
                    break
                tick = time.perf_counter()  # images/s counts training only: not validation, not checkpoints
    _log.info("done: %d iterations, best validation mIoU %.2f", run.iteration, 100 * run.best)


def _due(every: int, run: RunState) -> bool:
    """Whether the iteration just done ends a period of ``every`` epochs (or iterations), or the run."""
    return run.iteration % (every * run.iters_per_unit) == 0 or run.iteration == run.total


def _step(
    cfg: TrainConfig, run: RunState, ctx: DistContext, images: Tensor, targets: Tensor
) -> tuple[float, float, dict[str, float]]:
    """One optimisation step and the schedule's move; returns the loss, the step's learning rate and the mean scales."""
    lr = run.optimizer.param_groups[0]["lr"]  # the step's own lr, before the scheduler moves it on
    loss, scales = train_step(run.optimizer, run.scaler, images, targets, ctx, run.iteration, run.steps, cfg.grad_clip)
    run.scheduler.step()
    run.iteration += 1
    run.losses.append(loss)
    return loss, lr, scales


def _validate(
    cfg: TrainConfig, run: RunState, ctx: DistContext, loader: DataLoader, monitor: TrainMonitor, checkpointer: Checkpointer
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


@contextlib.contextmanager
def _failures_explained(cfg: TrainConfig, run: RunState, ctx: DistContext, out_dir: Path) -> Iterator[None]:
    """A non-finite loss names the last good checkpoint; a peer that stalled past ``dist_timeout``
    becomes a TimeoutError naming this rank and the iteration (``train`` logs either)."""
    try:
        yield
    except NonFiniteLossError as err:
        last = out_dir / "last.pt"
        kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was written yet"
        raise NonFiniteLossError(f"{err}; {kept}") from err
    except RuntimeError as err:
        # Gloo's "Timed out waiting ...ms for recv operation" (NCCL's watchdog ends the process itself).
        if not (ctx.distributed and "timed out" in str(err).lower()):
            raise
        raise TimeoutError(
            f"rank {ctx.rank} of {ctx.world_size} waited more than {cfg.dist_timeout:g} s (config key "
            f"dist_timeout) for the other processes after iteration {run.iteration}: one of them stalled or died"
        ) from err
