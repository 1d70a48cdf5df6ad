"""Shared machinery of the studies: training jobs run in parallel, resumable runs and evaluations, statistics and number formats."""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import functools
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
from scipy import stats
from torch import Tensor, nn
from torch.nn import functional as F

from benchmarks._report import format_table, jsonable, write_json
from sacseg.checkpoint import load_checkpoint
from sacseg.config import config_from_dict
from sacseg.factory import load_trained_model
from sacseg.training.train import train

__all__ = [
    "ABLATIONS",
    "RESCALE_FACTORS",
    "RIVALS",
    "ROWS",
    "Downscaled",
    "Job",
    "TwoStage",
    "add_seed_options",
    "estimate_two_stage",
    "estimate_wall",
    "evaluate_once",
    "factor_difference_table",
    "factor_table",
    "load_trained",
    "mean_scale_table",
    "mean_std",
    "number_stat",
    "paired_differences",
    "pct",
    "pct_stat",
    "rescale_cost",
    "rescaled_once",
    "robustness_summaries",
    "robustness_summary",
    "robustness_tables",
    "run_folder",
    "run_jobs",
    "run_two_stage",
    "scale_slope",
    "stage2_plan",
    "stage2_settings",
    "t_interval",
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
    ``best.pt``), "validations" ([iteration, val mIoU] pairs), "train_seconds" and "trained_iterations"
    (of the last call that trained: a resumed run's cost is that call's seconds over its iterations),
    "final_loss"}``.
    """
    cfg = config_from_dict(settings, source="study")
    out = Path(cfg.out_dir)
    done = out / "train_summary.json"
    wanted = dataclasses.asdict(cfg)
    if done.is_file():
        saved = _read_json(done)
        _check_same(out, saved["settings"], wanted)
        return saved["summary"]
    resume, first = None, 0
    if (out / "last.pt").is_file():
        last = load_checkpoint(out / "last.pt")
        _check_same(out, last["config"], wanted)
        resume, first = "auto", last["iteration"]
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
        "trained_iterations": summary.iteration - first,
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


#: Input rescale factors of the scale-robustness curves: the image resized by each (1: the resolution
#: the models trained at), the prediction resized back to the labels.
RESCALE_FACTORS: tuple[float, ...] = (0.5, 0.625, 0.75, 1.0, 1.25, 1.5, 2.0)


def rescale_cost(factors: Sequence[float] = RESCALE_FACTORS) -> float:
    """What scoring one checkpoint at every factor costs, in passes at factor 1 (a pass costs about its pixels)."""
    return sum(f * f for f in factors)


def rescaled_once(settings: Mapping[str, Any], summary: Mapping[str, Any], key: Mapping[str, Any],
                  score: Callable[[nn.Module, float], dict[str, Any]],
                  factors: Sequence[float] = RESCALE_FACTORS) -> dict[str, dict[str, Any]]:  # fmt: skip
    """The run's selected checkpoint (``"robustness"``) and its last one, the end of the schedule
    (``"robustness_last"``), scored by ``score(model, factor)`` at each factor: ``{kind: {"0.5": ...}}``.

    Each (checkpoint, factor) is kept by :func:`evaluate_once` in ``out_dir/<kind>_x<factor>.json``, its
    key ``key`` with the checkpoint's iteration and the factor: an interrupted evaluation resumes at the
    factor it stopped at, and adding the curves to a finished study reuses its trained runs. A
    checkpoint is loaded only if a factor needs it; the last one is scored apart only where the
    selection kept an earlier one.
    """
    out = Path(settings["out_dir"])
    result: dict[str, dict[str, Any]] = {}
    for kind, checkpoint, iteration in (("robustness", "best.pt", summary["best_iteration"]),
                                        ("robustness_last", "last.pt", summary["iterations"])):  # fmt: skip
        if kind == "robustness_last" and iteration == summary["best_iteration"]:
            result[kind] = result["robustness"]
            continue
        model = functools.cache(functools.partial(load_trained, settings, checkpoint))
        result[kind] = {
            f"{f:g}": evaluate_once(out, f"{kind}_x{f:g}", {**key, "iteration": iteration, "rescale": f},
                                    lambda f=f, model=model: score(model(), f))
            for f in factors
        }  # fmt: skip
    return result


def _flat_scores(entry: Mapping[str, Any]) -> dict[str, float]:
    """One rescaled evaluation's scores by name: ``miou``, ``pixel_acc`` and, where scored, ``<bucket> miou``."""
    return {"miou": entry["miou"], "pixel_acc": entry["pixel_acc"],
            **{f"{b} miou": scores["miou"] for b, scores in entry.get("buckets", {}).items()}}  # fmt: skip


def scale_slope(by_factor: Mapping[str, Mapping[str, Any]], name: str) -> float | None:
    """How scale map ``name``'s mean follows the rescale: the least-squares slope of its log against the
    log of the factor, over one run's rescaled evaluations (``{"0.5": {"mean_scale": {name: m}}, ...}``).
    1: the coefficient grows as the objects do (the paper's premise); 0: it ignores their size. None
    where a mean is not positive."""
    points = [(math.log(float(f)), e["mean_scale"][name]) for f, e in by_factor.items()]
    if len(points) < 2 or any(m is None or not m > 0 for _, m in points):
        return None
    xs, ys = [x for x, _ in points], [math.log(m) for _, m in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def robustness_summaries(runs: Mapping[str, Mapping[Any, Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    """:func:`robustness_summary` of the selected checkpoints (``"selected"``) and of the end of the schedule (``"last"``)."""
    return {"selected": robustness_summary(runs, "robustness"), "last": robustness_summary(runs, "robustness_last")}


def robustness_summary(runs: Mapping[str, Mapping[Any, Mapping[str, Any]]], kind: str) -> dict[str, Any]:
    """Every row's :func:`rescaled_once` scores of ``kind`` (``"robustness"`` or ``"robustness_last"``)
    over its seeds, by factor.

    ``rows[title]``: ``"seeds"``, and ``"by_factor"[factor]`` each score's (``miou``, ``pixel_acc``,
    ``<bucket> miou``) and each scale map's mean (``mean_scale``) as mean +- std over the seeds;
    ``"scale_slope"[map]``: :func:`scale_slope` mean +- std over the seeds.
    ``differences_to_control[title][factor][score]`` and ``rivals["SAC-x - DCN-x"][factor][score]``: the
    paired differences, seed by seed (:func:`paired_differences`). Rows without such scores are left out.
    """
    scored = {title: per_seed for title, per_seed in runs.items() if all(kind in r for r in per_seed.values())}
    rows: dict[str, Any] = {}
    for title, per_seed in scored.items():
        entries = [r[kind] for r in per_seed.values()]
        maps = next(iter(entries[0].values()))["mean_scale"]
        rows[title] = {
            "seeds": list(per_seed),
            "by_factor": {
                factor: {
                    "scores": {name: mean_std([_flat_scores(e[factor])[name] for e in entries]) for name in _flat_scores(first)},
                    "mean_scale": {name: mean_std([e[factor]["mean_scale"][name] for e in entries]) for name in maps},
                }
                for factor, first in entries[0].items()
            },
            "scale_slope": {name: mean_std([scale_slope(e, name) for e in entries]) for name in maps},
        }  # fmt: skip
    differences: dict[str, Any] = {}
    rivals: dict[str, Any] = {}
    first_row = next(iter(rows.values()), {"by_factor": {}})
    for factor, entry in first_row["by_factor"].items():
        for name in entry["scores"]:

            def score(run: Mapping[str, Any], factor: str = factor, name: str = name) -> float:
                return _flat_scores(run[kind][factor])[name]

            if "control" in scored:
                for title, diff in paired_differences(scored, score).items():
                    differences.setdefault(title, {}).setdefault(factor, {})[name] = diff
            for sac, dcn in RIVALS:
                if sac in scored and dcn in scored:
                    diff = paired_differences({dcn: scored[dcn], sac: scored[sac]}, score, control=dcn)[sac]
                    rivals.setdefault(f"{sac} - {dcn}", {}).setdefault(factor, {})[name] = diff
    return {"rows": rows, "differences_to_control": differences, "rivals": rivals}


#: Stage 2's rows: (title, model, kind). "control": the baseline continued; "whole": a SAC model from
#: the baseline's weights, everything trained (regressors at a tenth of the lr); "only": a SAC model
#: on the frozen baseline, only its regressors train (at a tenth of the lr). The DCN rows are the
#: deformable rival (``sacseg.models.DeformableFCN``: DCNv2 layers in SAC's places, starting as the baseline,
#: their offset/mask predictors at a tenth of the lr), trained whole like SAC.
ROWS: tuple[tuple[str, str, str], ...] = (
    ("control", "fcn_resnet18", "control"),
    ("SAC-single-only", "sac_single_resnet18", "only"),
    ("SAC-multiple-only", "sac_multiple_resnet18", "only"),
    ("SAC-single", "sac_single_resnet18", "whole"),
    ("SAC-multiple", "sac_multiple_resnet18", "whole"),
    ("DCN-single", "dcn_single_resnet18", "whole"),
    ("DCN-multiple", "dcn_multiple_resnet18", "whole"),
)
#: Each SAC row trained whole and the deformable row in the same places: the pairs compared seed by seed.
RIVALS: tuple[tuple[str, str], ...] = (("SAC-single", "DCN-single"), ("SAC-multiple", "DCN-multiple"))
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


def add_seed_options(parser: argparse.ArgumentParser, more_rows: Sequence[str], more_seeds: Sequence[int]) -> None:
    """A study's ``--more-seeds`` and ``--more-rows`` (see :func:`stage2_plan`), with its defaults."""
    whole = [title for title, _, kind in ROWS if kind == "whole"]
    parser.add_argument("--more-seeds", type=int, nargs="*",
                        help=f"seeds that the control and --more-rows also run (default {' '.join(map(str, more_seeds))}; "
                             "quick: none); none given: none")  # fmt: skip
    parser.add_argument("--more-rows", nargs="*", default=list(more_rows), choices=whole,
                        help=f"rows that also run --more-seeds, paired with the control (default {' '.join(more_rows)})")  # fmt: skip


def stage2_plan(seeds: Sequence[int], ablations: Sequence[str], more_seeds: Sequence[int] = (),
                more_rows: Sequence[str] = ()) -> list[tuple[str, str, str, int, dict[str, Any]]]:  # fmt: skip
    """Stage 2's runs: ``(title, model, kind, seed, overrides)``; the control and the whole-trained rows
    over ``seeds``, the control and the rows titled in ``more_rows`` over ``more_seeds`` too (the seeds
    a difference needs before it can be told from noise), the "-only" rows and the ablations at the
    first seed only."""
    unknown = sorted(set(ablations) - set(ABLATIONS))
    if unknown:
        raise ValueError(f"unknown ablations {unknown}; valid: {', '.join(ABLATIONS)}")
    whole = [title for title, _, kind in ROWS if kind == "whole"]
    if set(more_rows) - set(whole):
        raise ValueError(f"more_rows must be rows trained whole ({', '.join(whole)}), got {list(more_rows)}")
    if set(seeds) & set(more_seeds):
        raise ValueError(f"more_seeds {list(more_seeds)} repeat seeds of {list(seeds)}")
    plan: list[tuple[str, str, str, int, dict[str, Any]]] = []
    for title, model, kind in ROWS:
        row_seeds = list(seeds[:1] if kind == "only" else seeds)
        if more_rows and (title == "control" or title in more_rows):  # the control pairs with every seed
            row_seeds += more_seeds
        plan += [(title, model, kind, seed, {}) for seed in row_seeds]
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


def paired_differences(runs: Mapping[str, Mapping[Any, Any]], score: Callable[[Any], float | None],
                       control: str = "control") -> dict[str, dict[str, Any]]:  # fmt: skip
    """For each row but ``control``: ``score(run) - score(control run)`` per seed the two share, their
    mean +- std and the 95% interval of their mean (:func:`t_interval`; a row with one seed is compared
    with the control of that seed)."""
    out: dict[str, dict[str, Any]] = {}
    for title, per_seed in runs.items():
        if title == control:
            continue
        diffs = {}
        for seed, run in per_seed.items():
            mine, theirs = score(run), score(runs[control][seed]) if seed in runs[control] else None
            if mine is not None and theirs is not None:
                diffs[seed] = mine - theirs
        out[title] = {"per_seed": diffs, **mean_std(list(diffs.values())), "ci95": t_interval(list(diffs.values()))}
    return out


def t_interval(values: Sequence[float], level: float = 0.95) -> list[float] | None:
    """The ``level`` confidence interval of the mean of ``values`` (paired differences, one per seed):
    ``mean +- t(1 - (1 - level) / 2, n - 1) * std / sqrt(n)``, Student's t with ``n - 1`` degrees of
    freedom and the sample std, over the finite values; None below two of them."""
    kept = [float(v) for v in values if v is not None and math.isfinite(v)]
    stat = mean_std(kept)
    if stat["mean"] is None or stat["std"] is None:
        return None
    half = float(stats.t.ppf(1 - (1 - level) / 2, len(kept) - 1)) * stat["std"] / math.sqrt(len(kept))
    return [stat["mean"] - half, stat["mean"] + half]


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


def mean_std(values: Sequence[float | None]) -> dict[str, float | None]:
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
    """A :func:`paired_differences` entry of fractions as ``"mean +- std [low, high] (+a, +b, ...)"``
    percentage points: the 95% interval of the mean (:func:`t_interval`, from the seeds' differences,
    so entries written before it existed get one too; none with one seed) and each seed's difference;
    ``missing`` when there is none."""
    if diff is None or diff["mean"] is None:
        return missing
    values = list(diff["per_seed"].values())
    seeds = ", ".join(f"{100 * v:+.1f}" for v in values)
    interval = t_interval(values)
    bounds = "" if interval is None else f" [{100 * interval[0]:+.1f}, {100 * interval[1]:+.1f}]"
    return f"{pct(diff['mean'], diff['std'])}{bounds} ({seeds})"


def number_stat(stat: Mapping[str, float | None] | None) -> str:
    """A ``mean_std`` result as ``"mean +- std"`` with two decimals; "-" when missing."""
    if stat is None or stat["mean"] is None:
        return "-"
    return f"{stat['mean']:.2f}" + ("" if stat["std"] is None else f" +- {stat['std']:.2f}")


def _factors(by_row: Mapping[str, Any]) -> list[str]:
    """The rescale factors of a :func:`robustness_summary` part, in the order they were scored."""
    first = next(iter(by_row.values()), {})
    return list(first.get("by_factor", first))


def factor_table(summary: Mapping[str, Any], score: str = "miou", markdown: bool = False) -> str:
    """Each row's ``score`` (a :func:`robustness_summary`) at every rescale factor: percent, mean +- std
    over the seeds in brackets."""
    factors = _factors(summary["rows"])
    rows = [[f"{title} ({', '.join(str(s) for s in entry['seeds'])})",
             *(pct_stat(entry["by_factor"][f]["scores"][score]) for f in factors)]
            for title, entry in summary["rows"].items()]  # fmt: skip
    return format_table(["row (seeds)", *(f"x{f}" for f in factors)], rows, markdown)


def factor_difference_table(differences: Mapping[str, Any], score: str = "miou", markdown: bool = False,
                            label: str = "row - control") -> str:  # fmt: skip
    """Paired differences of ``score`` at every rescale factor (``differences_to_control`` or ``rivals`` of
    a :func:`robustness_summary`), each as :func:`paired_stat` writes it."""
    factors = _factors({t: {"by_factor": d} for t, d in differences.items()})
    rows = [[title, *(paired_stat(by_factor[f].get(score)) for f in factors)] for title, by_factor in differences.items()]
    return format_table([label, *(f"x{f}" for f in factors)], rows, markdown)


def mean_scale_table(summary: Mapping[str, Any], markdown: bool = False) -> str:
    """Each scale map's mean at every rescale factor (mean +- std over the seeds) and the slope of its
    log against the factor's (:func:`scale_slope`; 1: it follows the rescale)."""
    factors = _factors(summary["rows"])
    rows = [[f"{title}, {name}", *(number_stat(entry["by_factor"][f]["mean_scale"][name]) for f in factors),
             number_stat(slope)]
            for title, entry in summary["rows"].items() for name, slope in entry["scale_slope"].items()]  # fmt: skip
    return format_table(["row, map", *(f"x{f}" for f in factors), "log-log slope"], rows, markdown)


def robustness_tables(summary: Mapping[str, Any], score: str = "miou", markdown: bool = False) -> list[str]:
    """A :func:`robustness_summary`'s tables of ``score``, each followed by an empty line: by factor, its
    paired differences to the control, and between each SAC row and its DCN rival where both ran."""
    out = [factor_table(summary, score, markdown), "",
           factor_difference_table(summary["differences_to_control"], score, markdown), ""]  # fmt: skip
    if summary["rivals"]:
        out += [factor_difference_table(summary["rivals"], score, markdown, label="SAC - DCN"), ""]
    return out
