"""Shared machinery of the studies: training jobs run in parallel, resumable runs, statistics and number formats."""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import math
import multiprocessing
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from benchmarks._report import jsonable, write_json
from sacseg.checkpoint import load_checkpoint
from sacseg.config import config_from_dict
from sacseg.factory import load_trained_model
from sacseg.training.train import train

__all__ = [
    "ABLATIONS",
    "ROWS",
    "Downscaled",
    "Job",
    "TwoStage",
    "estimate_two_stage",
    "estimate_wall",
    "evaluate_once",
    "load_trained",
    "mean_std",
    "number_stat",
    "paired_differences",
    "pct",
    "pct_stat",
    "run_folder",
    "run_jobs",
    "run_two_stage",
    "stage2_plan",
    "stage2_settings",
    "train_once",
    "validation_curve",
    "work_folder",
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


def work_folder(name: str, given: Path | None) -> Path:
    """The study's work folder: ``given`` (``--work``), else ``$SACSEG_STUDY_WORK/<name>``, else
    ``~/.cache/sacseg/<name>``: outside the repository, so that a clean clone can run the study too."""
    if given is not None:
        return given
    root = os.environ.get("SACSEG_STUDY_WORK")
    return (Path(root) if root else Path.home() / ".cache" / "sacseg") / name


_VALIDATION = re.compile(r"iteration (\d+) validation mIoU ([-\d.naN]+)")


def validation_curve(out_dir: Path) -> list[list[float]]:
    """``[iteration, val mIoU as a fraction]`` of every validation in ``out_dir/train.log``, in order
    (lists, as they come back from the JSON)."""
    log = out_dir / "train.log"
    if not log.is_file():
        return []
    return [[int(m[1]), float(m[2]) / 100] for m in _VALIDATION.finditer(log.read_text(encoding="utf-8"))]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); delete it to recompute that run") from err


def train_once(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Train the run ``settings`` unless it already finished; its summary either way.

    A finished run leaves ``train_summary.json`` (its settings and summary) in its ``out_dir``; a
    later call with the same settings returns that summary without training, so an interrupted study
    continues where it stopped. An unfinished run with a ``last.pt`` is resumed from it (bit-exact on
    CPU); a folder without one is started afresh. A folder holding a run with other settings is
    refused (ValueError naming the folder and the keys that differ): nothing is overwritten silently.

    Summary: ``{"iterations", "best_val_miou", "best_iteration", "checkpoint" (the selected one,
    ``best.pt``), "validations" ([iteration, val mIoU] pairs), "train_seconds" (of the last call that
    trained), "final_loss"}``.
    """
    cfg = config_from_dict(settings, source="study")
    out = Path(cfg.out_dir)
    done = out / "train_summary.json"
    wanted = dataclasses.asdict(cfg)
    if done.is_file():
        saved = _read_json(done)
        _check_same(out, saved["settings"], wanted)
        return saved["summary"]
    resume = None
    if (out / "last.pt").is_file():
        _check_same(out, load_checkpoint(out / "last.pt")["config"], wanted)
        resume = "auto"
    start = time.perf_counter()
    summary = train(cfg, resume=resume, overwrite=resume is None)
    best = out / "best.pt"
    result = {
        "iterations": summary.iteration,
        "best_val_miou": summary.best_miou,
        "best_iteration": load_checkpoint(best)["iteration"],
        "checkpoint": str(best),
        "validations": validation_curve(out),
        "train_seconds": time.perf_counter() - start,
        "final_loss": summary.losses[-1] if summary.losses else None,
    }
    write_json({"settings": wanted, "summary": result}, done)
    return result


def _check_same(out: Path, saved: Mapping[str, Any], wanted: Mapping[str, Any]) -> None:
    changed = sorted(k for k in wanted if saved.get(k) != wanted[k])
    if changed:
        raise ValueError(
            f"{out} holds a run with other settings ({', '.join(changed)} differ): delete that folder to "
            "recompute it, or give the study another --work"
        )


def evaluate_once(out_dir: Path, name: str, key: Mapping[str, Any], compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``compute()``, kept in ``out_dir/<name>.json`` with ``key`` (what it depends on) and reused while
    ``key`` is unchanged: evaluations of a finished run are not repeated when a study resumes."""
    path = out_dir / f"{name}.json"
    if path.is_file():
        saved = _read_json(path)
        if saved.get("key") == jsonable(dict(key)):
            return saved["result"]
    result = compute()
    write_json({"key": dict(key), "result": result}, path)
    return result


#: Stage 2's rows: (title, model, kind). "control": the baseline continued; "whole": a SAC model from
#: the baseline's weights, everything trained (regressors at a tenth of the lr); "only": a SAC model
#: on the frozen baseline, only its regressors train (at a tenth of the lr).
ROWS: tuple[tuple[str, str, str], ...] = (
    ("control", "fcn_resnet18", "control"),
    ("SAC-single-only", "sac_single_resnet18", "only"),
    ("SAC-multiple-only", "sac_multiple_resnet18", "only"),
    ("SAC-single", "sac_single_resnet18", "whole"),
    ("SAC-multiple", "sac_multiple_resnet18", "whole"),
)
#: Ablations (``--ablations``), each seed 0, from the same stage-1 weights and schedule: name ->
#: [(title, model, kind, config overrides)].
ABLATIONS: dict[str, tuple[tuple[str, str, str, dict[str, Any]], ...]] = {
    # SAC with its maps held at 1 computes the control's function (tests/models/test_fcn.py): any gap
    # to the control is training noise, the floor any SAC gain must clear.
    "held": (("SAC-single held at 1", "sac_single_resnet18", "whole", {"min_scale": 1.0, "max_scale": 1.0}),),
    # The classifier's dilation (res5's, 4, by default): does SAC only undo a too-wide classifier?
    "dilation": (
        ("control, classifier dilation 1", "fcn_resnet18", "control", {"classifier_dilation": 1}),
        ("SAC-single, classifier dilation 1", "sac_single_resnet18", "whole", {"classifier_dilation": 1}),
    ),
    # The regressors at the full lr instead of a tenth.
    "scale_lr": (
        ("SAC-single, regressor at lr", "sac_single_resnet18", "whole", {"scale_lr_mult": 1.0}),
        ("SAC-single-only, regressor at lr", "sac_single_resnet18", "only", {"scale_lr_mult": 1.0}),
    ),
}


def stage2_settings(stage1: Mapping[str, Any], model: str, kind: str, seed: int, iterations: int, lr: float,
                    out_dir: Path, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """A stage-2 run: stage 1's data and augmentation, from its selected checkpoint, one schedule for every row.

    Every row validates at iteration 0 too (``val_at_start``), so the unchanged start can win the
    best-checkpoint selection (for the "-only" rows: the baseline itself, its maps at 1).
    """
    if kind not in ("control", "whole", "only"):
        raise ValueError(f"kind must be control, whole or only, got {kind!r}")
    start = str(Path(stage1["out_dir"]) / "best.pt")
    validations = max(1, iterations // 4)
    return {
        **stage1,
        "model": model,
        "backbone_weights": None,
        "init_checkpoint": None if kind == "only" else start,
        "baseline_checkpoint": start if kind == "only" else None,
        "iterations": iterations,
        "lr": lr,
        "scale_lr_mult": 0.1,
        # Stage 2's runs share the cores (one process each); stage 1, alone, may have had more threads.
        "threads": 1,
        "seed": seed,
        "val_every": validations,
        "val_at_start": True,
        "checkpoint_every": validations,
        "log_every": max(1, iterations // 10),
        "out_dir": str(out_dir),
        **(overrides or {}),
    }


def stage2_plan(seeds: Sequence[int], ablations: Sequence[str]) -> list[tuple[str, str, str, int, dict[str, Any]]]:
    """Stage 2's runs: ``(title, model, kind, seed, overrides)``; the control and the whole-trained SAC
    rows over ``seeds``, the "-only" rows and the ablations at the first seed only."""
    unknown = sorted(set(ablations) - set(ABLATIONS))
    if unknown:
        raise ValueError(f"unknown ablations {unknown}; valid: {', '.join(ABLATIONS)}")
    plan = [(title, model, kind, seed, {}) for title, model, kind in ROWS
            for seed in (seeds[:1] if kind == "only" else seeds)]  # fmt: skip
    plan += [(title, model, kind, seeds[0], dict(o)) for name in ablations for title, model, kind, o in ABLATIONS[name]]
    return plan


Plan = Sequence[tuple[str, str, str, int, Mapping[str, Any]]]


def estimate_two_stage(p: Mapping[str, Any], plan: Plan, seconds_per_iteration: Mapping[tuple[str, str], float],
                       eval_seconds: float, workers: int, stage1_speedup: float = 1.0) -> float:  # fmt: skip
    """Seconds for stage 1 (the baseline, ``stage1_speedup`` times faster than one thread) then ``plan``'s
    stage-2 runs on ``workers`` processes, from each ``(model, kind)``'s seconds per iteration (one
    thread) and the seconds one evaluation takes."""
    return estimate_wall(
        p["stage1_iterations"] * seconds_per_iteration[("fcn_resnet18", "control")] / stage1_speedup + eval_seconds,
        [p["stage2_iterations"] * seconds_per_iteration[(model, kind)] + eval_seconds for _, model, kind, _, _ in plan],
        workers,
    )


@dataclasses.dataclass
class TwoStage:
    """What :func:`run_two_stage` ran: each stage-2 run's settings by ``(title, seed)``, every job's result
    by name (``"stage 1"``, ``"<title> seed <seed>"``), and the stage-2 results as ``runs[title][seed]``."""

    stage1: dict[str, Any]
    settings: dict[tuple[str, int], dict[str, Any]]
    results: dict[str, Any]
    runs: dict[str, dict[int, Any]]

    def record(self, private: Sequence[str]) -> dict[str, Any]:
        """The JSON's record of both stages: their settings (without the keys in ``private`` and the
        checkpoints they start from), stage 1's result and every selected checkpoint."""
        hidden = {*private, "init_checkpoint", "baseline_checkpoint"}
        return {
            "stage1_settings": {k: v for k, v in self.stage1.items() if k not in private},
            "stage2_settings": {
                f"{t} seed {sd}": {k: v for k, v in s.items() if k not in hidden} for (t, sd), s in self.settings.items()
            },
            "stage1": self.results["stage 1"],
            "checkpoints": {
                "stage 1": self.results["stage 1"]["train"]["checkpoint"],
                **{f"{t} seed {sd}": self.results[f"{t} seed {sd}"]["train"]["checkpoint"] for t, sd in self.settings},
            },
        }


def run_two_stage(stage1: dict[str, Any], plan: Plan, p: Mapping[str, Any], work: Path,
                  job: Callable[..., Any], job_args: tuple[Any, ...],
                  seconds_per_iteration: Mapping[tuple[str, str], float], workers: int) -> TwoStage:  # fmt: skip
    """Stage 1 (``stage1``'s settings), then every run of ``plan`` from its selected checkpoint, as
    ``job(settings, *job_args)`` on ``workers`` processes, the longest first."""
    settings = {
        (title, seed): stage2_settings(stage1, model, kind, seed, p["stage2_iterations"], p["stage2_lr"],
                                       work / "stage2" / run_folder(title, seed), overrides)
        for title, model, kind, seed, overrides in plan
    }  # fmt: skip
    costs = {(title, seed): seconds_per_iteration[(model, kind)] for title, model, kind, seed, _ in plan}
    jobs = [Job("stage 1", job, (stage1, *job_args))] + [
        Job(f"{title} seed {seed}", job, (settings[(title, seed)], *job_args), after=("stage 1",))
        for title, seed in sorted(settings, key=lambda key: -costs[key])
    ]
    results = run_jobs(jobs, workers)
    runs: dict[str, dict[int, Any]] = {}
    for title, seed in settings:
        runs.setdefault(title, {})[seed] = results[f"{title} seed {seed}"]
    return TwoStage(stage1, settings, results, runs)


def run_folder(title: str, seed: int) -> str:
    """A run's folder name under the study's work folder: ``SAC-single, regressor at lr`` seed 0 ->
    ``sac-single_regressor_at_lr_seed0``."""
    return re.sub(r"[^a-z0-9.-]+", "_", title.lower()).strip("_") + f"_seed{seed}"


def paired_differences(runs: Mapping[str, Mapping[int, Any]], score: Callable[[Any], float | None],
                       control: str = "control") -> dict[str, dict[str, Any]]:  # fmt: skip
    """For each row but ``control``: ``score(run) - score(control run)`` per seed the two share, and their
    mean +- std (a row with one seed is compared with the control of that seed)."""
    out: dict[str, dict[str, Any]] = {}
    for title, per_seed in runs.items():
        if title == control:
            continue
        diffs = {}
        for seed, run in per_seed.items():
            mine, theirs = score(run), score(runs[control][seed]) if seed in runs[control] else None
            if mine is not None and theirs is not None:
                diffs[seed] = mine - theirs
        out[title] = {"per_seed": diffs, **mean_std(list(diffs.values()))}
    return out


def estimate_wall(first: float, jobs: Sequence[float], workers: int) -> float:
    """Seconds for a job of ``first`` seconds, then ``jobs`` on ``workers`` processes, longest first
    (as ``run_jobs`` starts them)."""
    ends = [first] * workers
    for seconds in sorted(jobs, reverse=True):
        i = ends.index(min(ends))
        ends[i] += seconds
    return max(ends)


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
        small = (
            images if size == (h, w) else F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
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


def paired_stat(diff: Mapping[str, Any] | None, missing: str = "-") -> str:
    """A :func:`paired_differences` entry of fractions as ``"mean +- std (+a, +b, ...)"`` percentage
    points, each seed's difference in brackets; ``missing`` when there is none."""
    if diff is None or diff["mean"] is None:
        return missing
    seeds = ", ".join(f"{100 * v:+.1f}" for v in diff["per_seed"].values())
    return f"{pct(diff['mean'], diff['std'])} ({seeds})"


def number_stat(stat: Mapping[str, float | None] | None) -> str:
    """A ``mean_std`` result as ``"mean +- std"`` with two decimals; "-" when missing."""
    if stat is None or stat["mean"] is None:
        return "-"
    return f"{stat['mean']:.2f}" + ("" if stat["std"] is None else f" +- {stat['std']:.2f}")
