"""Shared machinery of the studies: training jobs run in parallel, resumable runs, statistics and number formats."""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from sacseg.engine.checkpoint import load_checkpoint, load_trained_model
from sacseg.engine.config import config_from_dict
from sacseg.engine.train import train

__all__ = [
    "Job",
    "run_jobs",
    "load_trained",
    "train_and_load",
    "mean_std",
    "pct",
    "pct_stat",
    "number_stat",
    "Downscaled",
]


@dataclasses.dataclass(frozen=True)
class Job:
    """One unit of work for ``run_jobs``: ``fn(*args)`` once every job named in ``after`` is done.

    ``fn`` must be a module-level function (it is pickled to a worker process) returning
    something picklable; ``args`` may name earlier jobs' results only through ``fn`` itself.
    """

    name: str
    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    after: tuple[str, ...] = ()


def run_jobs(jobs: Sequence[Job], workers: int) -> dict[str, Any]:
    """Run ``jobs`` respecting ``after``, ``workers`` at a time; returns ``{name: result}``.

    With ``workers == 1`` the jobs run one after the other in this process (in list order, which
    must already respect ``after``). Otherwise each runs in a fresh (spawned) process; jobs are
    started in list order as soon as their dependencies are done, so put the longest first.
    An exception in a job is raised here, naming the job, after the running ones finish.
    """
    names = [job.name for job in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"job names must be unique, got {names}")
    for job in jobs:
        unknown = [a for a in job.after if a not in names]
        if unknown:
            raise ValueError(f"job {job.name!r} waits for unknown job(s) {unknown}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    results: dict[str, Any] = {}
    if workers == 1:
        for job in jobs:
            missing = [a for a in job.after if a not in results]
            if missing:
                raise ValueError(f"job {job.name!r} is listed before {missing}, which it waits for")
            results[job.name] = _timed(job.name, job.fn, job.args, quiet=False)
        return results
    pending = list(jobs)
    running: dict[concurrent.futures.Future[Any], str] = {}
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        while pending or running:
            for job in [j for j in pending if all(a in results for a in j.after)]:
                if len(running) >= workers:
                    break
                pending.remove(job)
                running[pool.submit(_timed, job.name, job.fn, job.args, True)] = job.name
            if not running:
                stuck = ", ".join(j.name for j in pending)
                raise ValueError(f"jobs wait for each other in a cycle: {stuck}")
            done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                name = running.pop(future)
                try:
                    results[name] = future.result()
                except Exception as err:
                    raise RuntimeError(f"job {name!r} failed: {err}") from err
    return results


def _timed(name: str, fn: Callable[..., Any], args: tuple[Any, ...], quiet: bool) -> Any:
    start = time.perf_counter()
    print(f"[{time.strftime('%H:%M:%S')}] start {name}", flush=True)
    if quiet:
        # One thread per worker for evaluation too (training sets it from its config, then puts
        # the default back): two workers with two OpenMP threads each would fight over two cores.
        torch.set_num_threads(1)
        # Progress bars (stderr) of parallel workers garble each other; each run's train.log keeps
        # the progress, and an exception still reaches the parent through the future.
        with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
            result = fn(*args)
    else:
        result = fn(*args)
    print(f"[{time.strftime('%H:%M:%S')}] done  {name} in {time.perf_counter() - start:.0f} s", flush=True)
    return result


def load_trained(settings: Mapping[str, Any], checkpoint: str = "best.pt") -> nn.Module:
    """The model of the training run ``settings`` with the weights of ``<out_dir>/<checkpoint>``, in eval mode."""
    model, _ = load_trained_model(Path(settings["out_dir"]) / checkpoint)
    return model


def train_and_load(settings: Mapping[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """Train with the config ``settings`` via ``sacseg.engine.train.train``; return the model of
    ``best.pt`` (the best validation mIoU) in eval mode and a summary ``{"iterations",
    "best_val_miou", "best_iteration", "train_seconds", "final_loss"}``. A run already in the
    study's work folder is replaced: running a study again recomputes it."""
    cfg = config_from_dict(settings, source="study")
    start = time.perf_counter()
    summary = train(cfg, overwrite=True)
    seconds = time.perf_counter() - start
    best_iteration = load_checkpoint(Path(cfg.out_dir) / "best.pt")["iteration"]
    losses = summary["losses"]
    return load_trained(settings), {
        "iterations": summary["iteration"],
        "best_val_miou": summary["best_miou"],
        "best_iteration": best_iteration,
        "train_seconds": seconds,
        "final_loss": losses[-1] if losses else None,
    }


class Downscaled(nn.Module):
    """Run ``model`` on the input resized by ``factor`` (bilinear, antialiased), logits back at input size.

    ``images [N, 3, H, W]`` -> ``{"out": [N, K, H, W], "scales": the model's maps}``: a model
    trained at a reduced resolution, evaluated against full-resolution labels.
    """

    def __init__(self, model: nn.Module, factor: float) -> None:
        super().__init__()
        if not factor > 0:
            raise ValueError(f"factor must be > 0, got {factor}")
        self.model, self.factor = model, float(factor)

    def forward(self, images: Tensor) -> dict[str, Any]:
        h, w = images.shape[-2:]
        size = (max(1, round(h * self.factor)), max(1, round(w * self.factor)))
        small = images if size == (h, w) else F.interpolate(
            images, size=size, mode="bilinear", align_corners=False, antialias=True
        )
        out = self.model(small)
        logits = out["out"]
        if logits.shape[-2:] != (h, w):
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        return {"out": logits, "scales": out["scales"]}


def mean_std(values: Sequence[float]) -> dict[str, float | None]:
    """``{"mean", "std"}`` over the finite values (sample std, ``ddof=1``; None when undefined)."""
    kept = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not kept:
        return {"mean": None, "std": None}
    mean = sum(kept) / len(kept)
    std = math.sqrt(sum((v - mean) ** 2 for v in kept) / (len(kept) - 1)) if len(kept) > 1 else None
    return {"mean": mean, "std": std}


def pct(value: float | None, std: float | None = None) -> str:
    """A fraction as a percentage with one decimal, ``+- std`` when given; "n/a" for None/NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    text = f"{100 * value:.1f}"
    return text if std is None else f"{text} +- {100 * std:.1f}"


def pct_stat(stat: Mapping[str, float | None]) -> str:
    """A ``mean_std`` result of fractions as ``"mean +- std"`` percentages."""
    return pct(stat["mean"], stat["std"])


def number_stat(stat: Mapping[str, float | None] | None) -> str:
    """A ``mean_std`` result as ``"mean +- std"`` with two decimals; "-" when missing."""
    if stat is None or stat["mean"] is None:
        return "-"
    return f"{stat['mean']:.2f}" + ("" if stat["std"] is None else f" +- {stat['std']:.2f}")