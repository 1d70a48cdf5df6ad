"""Segmentation metrics from a confusion matrix, counted as the official Cityscapes script does."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch import distributed as dist

from sacseg.data.transforms import IGNORE_INDEX
from sacseg.utils.io import atomic_open

__all__ = ["ConfusionMatrix", "format_percent_table", "format_results", "save_results_json"]


class ConfusionMatrix:
    """A ``[K, K]`` pixel count matrix (rows: ground truth, columns: prediction) kept on a device.

    Pixels whose target equals ``ignore_index`` are not counted. Scores follow
    ``cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling``: a class's IoU is
    ``tp / (tp + fp + fn)`` and is NaN when that denominator is 0 (the class is absent from both
    prediction and ground truth); means skip NaN entries.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, device: torch.device | str | None = None) -> None:
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} is a valid class id for num_classes={num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        """Set every count back to zero."""
        self.matrix.zero_()

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Count one batch: ``pred`` and ``target`` are integer tensors ``[N, H, W]`` or ``[H, W]``.

        ``target`` holds class ids in ``[0, K)`` or ``ignore_index``; ``pred`` holds ids in
        ``[0, K)`` wherever the target is not ignored.
        """
        if pred.shape != target.shape:
            raise ValueError(f"pred and target shapes differ: pred {tuple(pred.shape)}, target {tuple(target.shape)}")
        if pred.dim() not in (2, 3):
            raise ValueError(f"pred and target must be [N, H, W] or [H, W], got shape {tuple(pred.shape)}")
        for name, t in (("pred", pred), ("target", target)):
            if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
                raise ValueError(f"{name} must hold integer class ids, got dtype {t.dtype}")
        k = self.num_classes
        pred = pred.to(self.matrix.device, torch.int64)
        target = target.to(self.matrix.device, torch.int64)
        valid = target != self.ignore_index
        t, p = target[valid], pred[valid]
        bad_t = (t < 0) | (t >= k)
        if bool(bad_t.any()):
            raise ValueError(
                f"target holds ids outside [0, {k}) other than ignore_index={self.ignore_index}: "
                f"{torch.unique(t[bad_t])[:10].tolist()}"
            )
        bad_p = (p < 0) | (p >= k)
        if bool(bad_p.any()):
            raise ValueError(f"pred holds ids outside [0, {k}) on counted pixels: {torch.unique(p[bad_p])[:10].tolist()}")
        self.matrix += torch.bincount(k * t + p, minlength=k * k).reshape(k, k)

    def reduce(self) -> None:
        """Sum the matrix over all processes when torch.distributed is initialised (else no-op).

        Call it once, after the last ``update`` on every process: each call adds the other
        processes' counts again.
        """
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)

    def compute(self) -> dict[str, Any]:
        """Scores as plain Python numbers.

        Returns a dict with ``"iou"`` and ``"acc"`` (per-class lists of length K; ``acc`` is the
        per-class recall ``tp / (tp + fn)``; NaN where undefined), ``"miou"`` and ``"mean_acc"``
        (means over the non-NaN entries; NaN if none), ``"pixel_acc"`` (correct / counted pixels)
        and ``"num_pixels"``.
        """
        m = self.matrix.detach().to("cpu", torch.float64)
        tp = m.diagonal()
        gt = m.sum(dim=1)
        union = gt + m.sum(dim=0) - tp
        nan = torch.full_like(tp, math.nan)
        iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
        acc = torch.where(gt > 0, tp / gt.clamp(min=1), nan)
        total = float(m.sum())
        return {
            "iou": iou.tolist(),
            "acc": acc.tolist(),
            "miou": _nanmean(iou),
            "mean_acc": _nanmean(acc),
            "pixel_acc": float(tp.sum()) / total if total > 0 else math.nan,
            "num_pixels": int(total),
        }


def _nanmean(values: Tensor) -> float:
    kept = values[~values.isnan()]
    return float(kept.mean()) if kept.numel() else math.nan


def _check_names(results: Mapping[str, Any], class_names: Sequence[str]) -> None:
    if len(class_names) != len(results["iou"]):
        raise ValueError(f"{len(class_names)} class names given for {len(results['iou'])} classes in the results")


def format_results(results: Mapping[str, Any], class_names: Sequence[str]) -> str:
    """The per-class table (class, IoU, Acc in percent; "nan" for absent classes) and the means."""
    _check_names(results, class_names)
    table = format_percent_table(
        ("IoU", "Acc"), list(zip(class_names, zip(results["iou"], results["acc"]))),
        [("mean", (results["miou"], results["mean_acc"]))],
    )  # fmt: skip
    return table + f"\npixel accuracy {_pct(results['pixel_acc']).strip()}  ({results['num_pixels']} pixels)"


def format_percent_table(
    columns: Sequence[str],
    rows: Sequence[tuple[str, Sequence[float | None]]],
    means: Sequence[tuple[str, Sequence[float | None]]],
) -> str:
    """A table of fractions printed in percent: a header (``class`` and ``columns``), ``rows``, a rule,
    then the ``means`` rows; NaN and None print as "nan"."""
    width = max([len("class"), *(len(name) for name, _ in [*rows, *means])])
    rule = "-" * (width + 8 * len(columns))

    def line(name: str, values: Sequence[Any]) -> str:
        return "  ".join([f"{name:<{width}}", *values])

    header = line("class", [f"{c:>6}" for c in columns])
    body = [line(name, [_pct(v) for v in values]) for name, values in rows]
    tail = [line(name, [_pct(v) for v in values]) for name, values in means]
    return "\n".join([header, rule, *body, rule, *tail])


def _pct(value: float | None) -> str:
    return f"{'nan':>6}" if value is None or math.isnan(value) else f"{100.0 * value:6.2f}"


def save_results_json(
    results: Mapping[str, Any],
    path: str | os.PathLike[str],
    class_names: Sequence[str],
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write the scores atomically as JSON: means, then ``"classes": {name: {"iou", "acc"}}``.

    Fractions in ``[0, 1]``; NaN is written as ``null`` so the file is standard JSON. ``extra``
    (e.g. the checkpoint and the inference options) is stored under ``"meta"``.
    """
    _check_names(results, class_names)
    doc: dict[str, Any] = {
        "miou": _none_if_nan(results["miou"]),
        "mean_acc": _none_if_nan(results["mean_acc"]),
        "pixel_acc": _none_if_nan(results["pixel_acc"]),
        "num_pixels": results["num_pixels"],
        "classes": {
            name: {"iou": _none_if_nan(iou), "acc": _none_if_nan(acc)}
            for name, iou, acc in zip(class_names, results["iou"], results["acc"])
        },
    }
    if extra is not None:
        doc["meta"] = dict(extra)
    with atomic_open(path, "w", encoding="utf-8") as handle:
        json.dump(doc, handle, indent=2, allow_nan=False)
        handle.write("\n")


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else value
