"""Where a training run reports: its header, the progress bar, ``train.log`` and (rank 0) TensorBoard scalars and pictures."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from sacseg.config import TrainConfig
from sacseg.data import ScaleScenes, SegmentationDataset
from sacseg.evaluation.metrics import format_results
from sacseg.models.inference import predict_with_scales
from sacseg.training.distributed import DistContext
from sacseg.training.state import RunState
from sacseg.utils.optional import import_optional
from sacseg.viz import colorize, denormalize, heatmap

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

__all__ = ["TrainMonitor", "require_tensorboard", "run_header"]

_log = logging.getLogger("sacseg.train")

# Validation images drawn into TensorBoard at each validation (prediction, ground truth, scale maps),
# each panel subsampled to at most _PICTURE_SIZE pixels a side (a Cityscapes frame is 2048 wide).
_VAL_PICTURES = 2
_PICTURE_SIZE = 512


def require_tensorboard() -> ModuleType:
    """``torch.utils.tensorboard``, or MissingExtraError naming the extra that installs it (checked before a run starts)."""
    return import_optional("torch.utils.tensorboard", "train", "TensorBoard logging of training runs")


def _summary_writer(folder: Path) -> SummaryWriter:
    writer: SummaryWriter = require_tensorboard().SummaryWriter(str(folder))
    return writer


def run_header(cfg: TrainConfig, run: RunState, ctx: DistContext, out_dir: Path, start: str) -> list[str]:
    """The lines that open a run, on the console and in ``train.log``: the model, its data, the device,
    how the steps run, the optimiser and schedule, the run folder and ``start`` (where the run starts
    from); a warning line where a step schedule's drop falls outside the run."""
    device = f"{ctx.device}" + (" (device: auto)" if cfg.device == "auto" else "")
    source = "generated" if isinstance(run.train_set, ScaleScenes) else f"in {cfg.data_root or '.'}"
    cudnn = f"cudnn.benchmark {'on' if torch.backends.cudnn.benchmark else 'off'}" + (
        "" if ctx.device.type == "cuda" else " (CUDA only)"
    )
    layout = "channels_last" if cfg.channels_last else "NCHW"
    lines = [
        f"training {cfg.model} on {cfg.dataset}: {run.total} iterations ({run.iters_per_epoch} per epoch), "
        f"{ctx.world_size} process(es) on {device}, global batch {cfg.batch_size}",
        f"data: {cfg.dataset} {source}, {cfg.num_classes} classes: {_images(len(run.train_set))} for training "
        f"(split {cfg.train_split}), {_images(len(run.val_set))} for validation (split {cfg.val_split})",
        f"optimiser: SGD lr {cfg.lr:g}"
        + (f" (scale regressors x{cfg.scale_lr_mult:g})" if cfg.scale_lr_mult != 1 else "")
        + f", momentum {cfg.momentum:g}, weight decay {cfg.weight_decay:g}; {_schedule(cfg, run)}",
        f"steps: precision {cfg.precision}, {layout} memory layout, {'compiled' if cfg.compile else 'eager'}, {cudnn}",
        f"output: {out_dir}; {start}",
    ]
    step_at = cfg.lr_step * run.iters_per_unit
    if cfg.schedule == "step" and not 0 < step_at < run.total:
        where = "at the start" if step_at == 0 else f"at iteration {step_at}, not before the run's end ({run.total})"
        lines.append(f"warning: the step schedule drops the lr {where}: check config keys lr_step and schedule")
    return lines


def _images(count: int) -> str:
    return f"{count} image{'' if count == 1 else 's'}"


def _schedule(cfg: TrainConfig, run: RunState) -> str:
    if cfg.schedule == "poly":
        return f"schedule poly: lr x (1 - iteration / {run.total}) ** {cfg.poly_power:g}"
    unit = "epochs" if cfg.epochs else "iterations"
    return f"schedule step: lr x {cfg.lr_step_factor:g} from iteration {cfg.lr_step * run.iters_per_unit} (lr_step {cfg.lr_step} {unit})"


class TrainMonitor:
    """The reports of one run, from iteration ``start`` to ``total``; ``active`` on rank 0 only (the
    others keep no bar and no TensorBoard). A context manager: leaving it closes the bar and the events file."""

    def __init__(self, cfg: TrainConfig, total: int, start: int, out_dir: Path, active: bool) -> None:
        self.cfg, self.total, self.active = cfg, total, active
        self.writer = _summary_writer(out_dir / "tb") if active else None
        self.progress = tqdm(total=total, initial=start, disable=not active, desc="train", dynamic_ncols=True)
        self.postfix: dict[str, str] = {}

    def __enter__(self) -> TrainMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.close()
        if self.writer is not None:
            self.writer.close()

    def step(self, iteration: int, loss: float, lr: float, throughput: float, scales: dict[str, float]) -> None:
        """After training step ``iteration`` (counted from 1): its loss, learning rate, images/s and mean scales."""
        self.progress.update(1)
        self.postfix.update(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{throughput:.1f}")
        self.progress.set_postfix(self.postfix)
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, iteration)
            self.writer.add_scalar("train/lr", lr, iteration)
            self.writer.add_scalar("train/images_per_s", throughput, iteration)
            for name, value in scales.items():
                self.writer.add_scalar(f"train/mean_scale/{name}", value, iteration)
        if iteration % self.cfg.log_every == 0 or iteration == self.total:
            _log.info("iteration %d/%d loss %.4f lr %.3e %.1f img/s", iteration, self.total, loss, lr, throughput)

    def validation(self, metrics: dict[str, Any], model: nn.Module, val_set: SegmentationDataset, iteration: int) -> None:
        """A validation's scores (and, in TensorBoard, pictures of the first validation images)."""
        if self.active:
            _report_validation(metrics, val_set, iteration, self.progress, self.writer)
            if self.writer is not None:
                _validation_pictures(model, val_set, self.cfg, iteration, self.writer)
        self.postfix["val_miou"] = f"{100 * metrics['miou']:.2f}"
        self.progress.set_postfix(self.postfix)

    def resume_timing(self) -> None:
        """After a validation or a checkpoint: the bar's rate counts training only."""
        self.progress.unpause()


def _report_validation(
    metrics: dict[str, Any], val_set: SegmentationDataset, iteration: int, progress: tqdm, writer: SummaryWriter | None
) -> None:
    """A validation's scores to the terminal (the per-class table), ``train.log`` and TensorBoard; in percent
    on the terminal and in the log, as ``sacseg eval`` prints them."""
    classes = val_set.classes
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
def _validation_pictures(
    model: nn.Module, val_set: SegmentationDataset, cfg: TrainConfig, iteration: int, writer: SummaryWriter
) -> None:
    """The first validation images to TensorBoard: image | prediction | ground truth, and each scale map
    as a heat map on ``[min_scale, max_scale]``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    # Maps held at one value (min_scale == max_scale) are drawn on a range around it.
    high = cfg.max_scale if cfg.max_scale > cfg.min_scale else cfg.min_scale + 1.0
    try:
        for index in range(min(_VAL_PICTURES, len(val_set))):
            image, target = val_set[index]
            probs, scale_maps = predict_with_scales(model, image[None].to(device))
            palette = val_set.palette
            step = math.ceil(max(target.shape) / _PICTURE_SIZE)  # nearest subsampling keeps the class colours exact
            row = [denormalize(image), colorize(probs.argmax(1)[0].cpu(), palette), colorize(target, palette)]
            picture = np.concatenate([panel[::step, ::step] for panel in row], axis=1)
            writer.add_image(f"val/prediction/{index}", picture, iteration, dataformats="HWC")
            for name, scale in scale_maps.items():
                picture = heatmap(scale[0, 0, ::step, ::step].cpu(), cfg.min_scale, high)
                writer.add_image(f"val/scale_{name}/{index}", picture, iteration, dataformats="HWC")
    finally:
        model.train(was_training)
