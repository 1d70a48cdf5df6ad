"""Render docs/results.md (tables, scale-vs-size scatters) from the studies' raw JSON in docs/results/.

    python -m studies.make_results                      # docs/results/*.json -> docs/results.md
    python -m studies.make_results --results DIR --out FILE

Two parts. The paper's two-stage protocol: ``scalescenes.json`` (studies/scalescenes.py) and
``camvid.json`` (studies/camvid.py), then ``reading.md``, the human reading of those numbers, included
verbatim only where it exists (written by hand from the full runs; never generated). The earlier
from-scratch studies: ``scalescenes_from_scratch.json`` and ``camvid_from_scratch.json`` with their
reading ``reading_from_scratch.md``. The scatters ``<stem>_scale_vs_size.png`` and the scale-robustness
curves ``<study>_robustness.png`` are written next to the JSON; after the two-stage studies, a table of
issue 27's claims with their numbers, whose verdicts the reading gives. Results of a ``--quick`` run are
rendered under a SMOKE TEST banner.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks._report import format_table
from sacseg.utils.io import atomic_open
from studies._study import (
    ABLATIONS,
    ROWS,
    mean_scale_table,
    mean_std,
    number_stat,
    paired_differences,
    paired_stat,
    pct,
    pct_stat,
    robustness_tables,
    t_interval,
)
from studies.camvid import table as camvid_table
from studies.scalescenes import BUCKETS, class_table, difference_table, summary_table

# The paper's own numbers (Zhang et al., ICCV 2017), ResNet-101 pre-trained on ImageNet; MS: multi-scale fusion.
PAPER_TABLE1: tuple[tuple[str, str], ...] = (
    ("Baseline (ResNet-101)", "74.0"), ("SAC-single-only", "74.5"), ("SAC-multiple-only", "74.8"),
    ("SAC-single", "75.9"), ("SAC-multiple", "76.5"), ("SAC-single + MS", "78.2"), ("SAC-multiple + MS", "78.7"),
)  # fmt: skip
PAPER_TABLE3: tuple[tuple[str, str, str], ...] = (
    ("Baseline (ResNet-101)", "39.75", "79.36"), ("SAC-single-only", "40.32", "79.81"),
    ("SAC-multiple-only", "40.87", "79.86"), ("SAC-single", "41.68", "80.64"), ("SAC-multiple", "42.38", "80.86"),
    ("SAC-single + MS", "43.65", "81.33"), ("SAC-multiple + MS", "44.30", "81.86"),
)  # fmt: skip
_MAPS = (
    ("SAC-single", "classifier"), ("SAC-multiple", "classifier"), ("SAC-multiple", "res5"),
    ("DCN-single", "classifier"), ("DCN-multiple", "classifier"), ("DCN-multiple", "res5"),
)  # fmt: skip
_KINDS = (("last", "the end of the schedule (every run's last checkpoint)"), ("selected", "the selected checkpoints"))


def _load(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from err


def _training_seconds(doc: Mapping[str, Any]) -> float | None:
    """Seconds of training summed over a two-stage study's runs, each its iterations at the cost per
    iteration of the call that finished it (a study resumed across sessions trained in several), or
    None for a study of another kind."""
    if doc.get("protocol") != "two-stage":
        return None
    groups = {"stage 1": [doc["stage1"]["train"]]}
    groups |= {title: [r["train"] for r in per_seed.values()] for title, per_seed in doc["runs"].items()}
    total = 0.0
    for title, trains in groups.items():
        # A run whose last call trained nothing (stopped between its last checkpoint and its summary)
        # costs its row's mean over the runs that measured one.
        costs = [_seconds_per_iteration(train) for train in trains]
        row_cost = mean_std(costs)["mean"]
        for train, cost in zip(trains, costs):
            cost = row_cost if cost is None else cost
            if cost is None:
                raise ValueError(f"{title}: no run measured its cost per iteration (every last call trained 0 iterations)")
            total += cost * train["iterations"]
    return total


def _threads(doc: Mapping[str, Any]) -> str:
    """Threads per training process, from the runs' own settings where the JSON has them."""
    settings = doc["settings"]
    if "stage1" not in settings:
        return f"{doc['machine']['torch_threads_per_job']} thread per training process"
    stage1 = settings["stage1"]["threads"]
    stage2 = ", ".join(str(t) for t in sorted({s["threads"] for s in settings["stage2"].values()}))
    return f"stage 1 (alone) on {stage1} thread{'s' if stage1 > 1 else ''}, stage 2 on {stage2} per training process"


def _provenance(doc: Mapping[str, Any]) -> str:
    machine = doc["machine"]
    lines = [
        f"- command: `{doc['command']}`",
        f"- date: {doc['date']}, git revision `{doc['git_revision']}`, wall time {doc['wall_seconds'] / 60:.1f} min"
        + (f" (estimated beforehand: {doc['estimated_wall_seconds'] / 60:.0f} min)" if "estimated_wall_seconds" in doc else ""),
        f"- machine: {machine['cores']} cores ({machine['processor']}, {machine['platform']}), torch {machine['torch']}, "
        f"Python {machine['python']}, {_threads(doc)}",
    ]
    training = _training_seconds(doc)
    if training is not None:
        # A resumed study reuses the runs an earlier invocation finished: its wall time alone would
        # understate what the results cost.
        lines.insert(2, f"- the wall time is that of the invocation that wrote the JSON, which reuses the runs already "
                        f"finished in the work folder; training summed over every run, each at the cost per iteration "
                        f"of the invocation that finished it: {training / 60:.0f} min (of one process each; two ran at once in stage 2)")  # fmt: skip
    if doc["quick"]:
        lines.insert(0, "> **SMOKE TEST (`--quick`)**: a few iterations on tiny data to check that the script runs. "
                        "These numbers say nothing about SAC; run the command without `--quick`.\n")  # fmt: skip
    return "\n".join(lines)


def _stage2_curves(doc: Mapping[str, Any]) -> list[str]:
    """Every stage-2 row's validation mIoU at each validation (mean +- std over seeds), the iterations
    its best-checkpoint selection kept, and its last validation's paired difference to the control.

    The tables above score the selected checkpoints; where a row's selection kept iteration 0 (stage
    1's weights) in every seed, they cannot tell it from the control, and the end of the common
    schedule (the paper's protocol: a fixed number of iterations) is the comparison left.
    """
    runs = doc["runs"]
    iterations = [it for it, _ in next(iter(next(iter(runs.values())).values()))["train"]["validations"]]
    end = paired_differences(runs, lambda r: r["train"]["validations"][-1][1])
    headers = ["row (seeds)", *(f"it {it}" for it in iterations), "selected iteration", "last - control"]
    rows = []
    for title, per_seed in runs.items():
        curves = [dict(r["train"]["validations"]) for r in per_seed.values()]
        rows.append([
            f"{title} ({', '.join(per_seed)})",
            *(pct_stat(mean_std([c[it] for c in curves if it in c])) for it in iterations),
            ", ".join(str(r["train"]["best_iteration"]) for r in per_seed.values()),
            paired_stat(end.get(title)),
        ])  # fmt: skip
    return [
        "Validation mIoU along stage 2 (the validation set the selection used, percent; mean +- std over seeds), "
        "the iteration each seed's selection kept, and the last validation's paired difference to the control:",
        "",
        format_table(headers, rows, markdown=True),
        "",
    ]


def scatter(doc: Mapping[str, Any], path: Path) -> None:
    """Each object's mean scale coefficient against its size, per SAC (and DCN) map, all seeds (log size axis)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    maps = [(title, name) for title, name in _MAPS if title in doc["runs"]]
    fig = Figure(figsize=(4.2 * len(maps), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(maps), squeeze=False)[0]
    edges = doc["bucket_edges_px"]
    for ax, (title, name) in zip(axes, maps):
        for seed, run in doc["runs"].get(title, {}).items():
            rows = run["objects"].get(name, [])
            ax.scatter([r[0] for r in rows], [r[1] for r in rows], s=6, alpha=0.5, label=f"seed {seed}")
        for edge in edges:
            ax.axvline(edge, color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel("object size (drawn radius, px)")
        ax.set_ylabel("mean scale coefficient over the object")
        rho = doc["summary"].get(title, {}).get("spearman", {}).get(name)
        ax.set_title(f"{title}, {name} map: Spearman rho {number_stat(rho)}", fontsize=9)
        ax.legend(fontsize=7, loc="best")
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=100)


def robustness_picture(doc: Mapping[str, Any], path: Path) -> None:
    """mIoU against the input rescale factor, for the end of the schedule and the selected checkpoints
    (columns): one line per row (mean over its seeds, +- std shaded) for mIoU and each size bucket's where
    scored; each row's paired mIoU difference to the control (its 95% interval shaded); each scale map's
    mean (log-log; dotted, a map that follows the rescale)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scores = [s for s in ("miou", *(f"{b} miou" for b in BUCKETS)) if s in _scores(doc)]
    fig = Figure(figsize=(6.0 * len(_KINDS), 3.8 * (len(scores) + 2)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(scores) + 2, len(_KINDS), squeeze=False)
    for column, (kind, caption) in enumerate(_KINDS):
        summary, when = doc["robustness"][kind], caption.split(" (")[0]
        colours = {title: f"C{i % 10}" for i, title in enumerate(summary["rows"])}  # a row keeps its colour
        for ax, score in zip(axes[:, column], scores):
            for title, entry in summary["rows"].items():
                _band(ax, entry["by_factor"], lambda e, score=score: _spread(e["scores"][score]), title, 100, colours[title])
            ax.set_ylabel(f"{score.replace('miou', 'mIoU')} (%)")
            ax.set_title(f"{score.replace('miou', 'mIoU')}, {when}", fontsize=9)
        ax = axes[-2, column]
        for title, by_factor in summary["differences_to_control"].items():
            _band(ax, by_factor, lambda e: _interval(e["miou"]), title, 100, colours[title])
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_ylabel("mIoU - control (points)")
        ax.set_title(f"paired difference to the control (95% interval), {when}", fontsize=9)
        ax = axes[-1, column]
        for title, entry in summary["rows"].items():
            for name in entry["scale_slope"]:
                _band(ax, entry["by_factor"], lambda e, name=name: _spread(e["mean_scale"][name]), f"{title}, {name}", 1,
                      colours[title], "--" if name == "res5" else "-")  # fmt: skip
        factors = [float(f) for f in next(iter(summary["rows"].values()))["by_factor"]]
        ax.plot(factors, factors, "k:", linewidth=1, label="follows the rescale")
        ax.set_yscale("log", base=2)
        ax.set_ylabel("scale map's mean")
        ax.set_title(f"scale maps, {when}", fontsize=9)
        for ax in axes[:, column]:
            ax.set_xscale("log", base=2)
            ax.set_xticks(factors, [f"{f:g}" for f in factors])
            ax.set_xlabel("input rescale factor")
            ax.legend(fontsize=6, loc="best")
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=90)


def _spread(stat: Mapping[str, float | None]) -> tuple[float, float, float] | None:
    """A ``mean_std``'s mean and mean -+ std (the std as 0 with one seed)."""
    if stat["mean"] is None:
        return None
    std = stat["std"] or 0.0
    return stat["mean"], stat["mean"] - std, stat["mean"] + std


def _interval(diff: Mapping[str, Any]) -> tuple[float, float, float] | None:
    """A paired difference's mean and 95% interval (the mean itself with one seed)."""
    if diff["mean"] is None:
        return None
    interval = t_interval(list(diff["per_seed"].values())) or [diff["mean"], diff["mean"]]
    return diff["mean"], interval[0], interval[1]


def _band(ax: Any, by_factor: Mapping[str, Any], value: Callable[[Any], tuple[float, float, float] | None],
          label: str, unit: float, colour: str, style: str = "-") -> None:  # fmt: skip
    """One line of ``value(entry)``'s first number against the factor, the band between the other two
    shaded; all times ``unit``."""
    factors = [float(f) for f in by_factor]
    nan = (math.nan, math.nan, math.nan)
    mean, low, high = zip(*[[unit * v for v in (value(entry) or nan)] for entry in by_factor.values()])
    ax.plot(factors, mean, style, marker="o", markersize=3, linewidth=1, color=colour, label=label)
    ax.fill_between(factors, low, high, color=colour, alpha=0.15, linewidth=0)


def _robustness(doc: Mapping[str, Any], folder: Path, link: str) -> list[str]:
    """The scale-robustness curves (picture, written now) and tables of a study, where it has them."""
    if "robustness" not in doc:
        return []
    name = f"{doc['study']}_robustness.png"
    robustness_picture(doc, folder / name)
    buckets = [b for b in BUCKETS if f"{b} miou" in _scores(doc)]
    out = [
        "Scale robustness: every run scored single-scale with its input resized by each factor (1: the resolution "
        "it trained at) and its prediction resized back to the labels; percent, mean +- std over the seeds in "
        "brackets; differences in points, paired by seed: mean +- std [95% interval] (each seed's).",
        "",
        f"![mIoU against the input rescale factor]({link}/{name})",
        "",
    ]
    for kind, caption in _KINDS:
        summary = doc["robustness"][kind]
        out += [f"mIoU, {caption}:", "", *robustness_tables(summary, markdown=True)]
        for bucket in buckets:
            out += [f"{bucket} objects' mIoU, {caption}:", "", *robustness_tables(summary, f"{bucket} miou", markdown=True)]
        if any(entry["scale_slope"] for entry in summary["rows"].values()):
            out += [f"Each scale map's mean at each factor, {caption} (a DCN row's: the isotropic stretch of its "
                    "offsets); the slope of its log against the factor's is 1 for a map that follows the rescale "
                    "(the paper's premise), 0 for one that ignores it:", "",
                    mean_scale_table(summary, markdown=True), ""]  # fmt: skip
    return out


def _scores(doc: Mapping[str, Any]) -> list[str]:
    """The scores a study's rescaled evaluations hold (``miou``, ``pixel_acc``, ``<bucket> miou``)."""
    first = next(iter(doc["robustness"]["last"]["rows"].values()))
    return list(next(iter(first["by_factor"].values()))["scores"])


def _costs(doc: Mapping[str, Any]) -> list[str]:
    """Seconds per training iteration of every stage-2 row: measured (each run's training time over its
    iterations, validations included, mean +- std over the seeds; a resumed run counts its last
    invocation's time over that invocation's iterations) and the study's estimate of it."""
    estimates = doc["settings"].get("seconds_per_iteration", {})
    models = {title: f"{model} {kind}" for title, model, kind in ROWS}
    models |= {title: f"{model} {kind}" for rows in ABLATIONS.values() for title, model, kind, _ in rows}
    rows = []
    for title, per_seed in doc["runs"].items():
        measured = mean_std([_seconds_per_iteration(r["train"]) for r in per_seed.values()])
        estimate = estimates.get(models.get(title, ""))
        rows.append([title, number_stat(measured), "-" if estimate is None else f"{estimate:.2f}"])
    return [
        "Cost of a training iteration (seconds, one thread, two runs at once):",
        "",
        format_table(["row", "measured", "the study's estimate"], rows, markdown=True),
        "",
    ]


def _seconds_per_iteration(train: Mapping[str, Any]) -> float | None:
    """A run's training seconds over the iterations they trained (a summary without
    ``trained_iterations`` counts all of the run's); None when its last call trained none (its seconds
    were evaluation and saving only)."""
    trained = train.get("trained_iterations", train["iterations"])
    return train["train_seconds"] / trained if trained > 0 else None


def _beyond_noise(by_factor: Mapping[str, Any]) -> str:
    """The factors at which a paired mIoU difference's 95% interval excludes 0, with its mean (points)."""
    resolved = []
    for factor, diffs in by_factor.items():
        interval = t_interval(list(diffs["miou"]["per_seed"].values()))
        if interval is not None and (interval[0] > 0 or interval[1] < 0):
            resolved.append(f"x{factor} {100 * diffs['miou']['mean']:+.1f}")
    return ", ".join(resolved) or "none"


def _ms_flip_numbers(doc: Mapping[str, Any]) -> str:
    """SAC-multiple - control at the end of the schedule: single-scale, MS+flip, and rescaled to the MS scales."""
    if "eval_last" not in doc["summary"]:
        return "-"
    diff = doc["summary"]["eval_last"]["differences_to_control"].get("SAC-multiple", {})
    at = doc["robustness"]["last"]["differences_to_control"].get("SAC-multiple", {})
    return (f"SAC-multiple - control: single {paired_stat(diff.get('single'))}, MS+flip {paired_stat(diff.get('ms_flip'))}; "
            f"x0.75 {paired_stat(at.get('0.75', {}).get('miou'))}, x1.25 {paired_stat(at.get('1.25', {}).get('miou'))}")  # fmt: skip


def _beats_control_numbers(doc: Mapping[str, Any]) -> str:
    control = doc["robustness"]["last"]["differences_to_control"]
    return "; ".join(f"{t}: {_beyond_noise(control[t])}" for t in ("SAC-single", "SAC-multiple") if t in control) or "-"


def _beats_dcn_numbers(doc: Mapping[str, Any]) -> str:
    rivals = doc["robustness"]["last"]["rivals"]
    return "; ".join(f"{pair} at x1 {paired_stat(by_factor['1']['miou'])}, beyond noise: {_beyond_noise(by_factor)}"
                     for pair, by_factor in rivals.items()) or "-"  # fmt: skip


def _slopes(prefix: str) -> Callable[[Mapping[str, Any]], str]:
    """The scale maps' :func:`~studies._study.scale_slope` of the whole-trained rows titled ``prefix...``."""

    def numbers(doc: Mapping[str, Any]) -> str:
        rows = doc["robustness"]["last"]["rows"]
        return "; ".join(f"{t}, {name} {number_stat(slope)}" for t, entry in rows.items()
                         if t.startswith(prefix) and not t.endswith("-only")
                         for name, slope in entry["scale_slope"].items()) or "-"  # fmt: skip

    return numbers


#: Issue 27's claims: the claim, what measures it, and its numbers from a study's JSON (the end of the
#: schedule). The verdicts are the reading's, written by hand (``reading.md``).
_CLAIMS: tuple[tuple[str, str, Callable[[Mapping[str, Any]], str]], ...] = (
    ("SAC-multiple's lead under multi-scale + flip testing (CamVid) is robustness to input scale",
     "paired to the control: single-scale, MS+flip, and at the MS scales 0.75 and 1.25", _ms_flip_numbers),
    ("SAC beats the control away from the training scale",
     "the factors where the paired mIoU difference's 95% interval excludes 0", _beats_control_numbers),
    ("SAC's scale coefficient follows the rescale (the paper's premise)",
     "slope of log(scale map's mean) against log(factor): 1 follows, 0 ignores", _slopes("SAC-")),
    ("SAC beats deformable convolution in the same places",
     "SAC-x - DCN-x, paired by seed, at x1 and where the 95% interval excludes 0", _beats_dcn_numbers),
    ("DCN's offsets stretch with the rescale", "the same slope, of DCN's isotropic stretch", _slopes("DCN-")),
)  # fmt: skip


def _claims(scalescenes: Mapping[str, Any] | None, camvid: Mapping[str, Any] | None) -> list[str]:
    """Issue 27's claims table: each claim, its measure, each study's numbers, and a verdict cell for the reading."""
    docs = [doc if doc is not None and "robustness" in doc else None for doc in (scalescenes, camvid)]
    rows = [[claim, measure, *("not run yet" if doc is None else numbers(doc) for doc in docs), "_(reading)_"]
            for claim, measure, numbers in _CLAIMS]  # fmt: skip
    return [
        "### Claims under test: scale robustness and the deformable rival",
        "",
        "Generated from the JSON; the verdicts are the reading's. Intervals: the 95% interval of the mean "
        "paired difference, mean +- t(0.975, n - 1) * std / sqrt(n) over the n seeds' differences (Student's t).",
        "",
        format_table(["claim", "measure", "ScaleScenes", "CamVid", "verdict"], rows, markdown=True),
        "",
    ]


def _scatter_name(doc: Mapping[str, Any]) -> str:
    return ("scalescenes" if doc.get("protocol") == "two-stage" else "scalescenes_from_scratch") + "_scale_vs_size.png"


def _size_intro(doc: Mapping[str, Any]) -> list[str]:
    edges = doc["bucket_edges_px"]
    return [
        "Percentages, mean +- sample std over seeds. Size buckets by the object's drawn radius: "
        f"small < {edges[0]:.1f} px <= medium < {edges[1]:.1f} px <= large (the terciles of the generator's "
        "log-uniform radius distribution). A bucket's mIoU and accuracy count only the pixels of objects in "
        "that bucket (every other pixel ignored; IoU averaged over the classes present). Spearman rho: "
        "each visible object's size against its mean scale coefficient (map resized to the image); "
        "partial rho: the same with the object's centre row partialled out (objects lower in a scene are "
        "drawn larger, so a map that only learned the row would also correlate with size).",
        "",
        summary_table(doc["summary"], markdown=True),
        "",
    ]


def _size_scales(doc: Mapping[str, Any], folder: Path, link: str) -> list[str]:
    """Mean scale by bucket, the scatter (written now) and the picture of a ScaleScenes study."""
    scatter(doc, folder / _scatter_name(doc))
    out = [
        "Mean scale coefficient of the objects of each size bucket (mean +- std over seeds):",
        "",
        format_table(["model, map", *BUCKETS], [
            [f"{title}, {name}", *(number_stat(e["mean_scale_by_bucket"][name][b]) for b in BUCKETS)]
            for title, e in doc["summary"].items() for name in e["mean_scale_by_bucket"]
        ], markdown=True),
        "",
        f"![scale coefficient against object size]({link}/{_scatter_name(doc)})",
        "",
    ]  # fmt: skip
    if (folder / doc["picture"]).is_file():
        out += [f"![held-out scenes, predictions, ground truth, scale maps]({link}/{doc['picture']})", ""]
    return out


def _seeds(settings: Mapping[str, Any]) -> str:
    """Which seeds each stage-2 row ran, as the study's settings say."""
    seeds = ", ".join(str(x) for x in settings["seeds"])
    more = settings.get("more_seeds") or []
    rows = ", ".join(["the control", *settings.get("more_rows", [])])
    extra = f"; {rows} also {', '.join(str(x) for x in more)}" if more else ""
    return f'seeds {seeds}{extra} ("-only" rows and ablations: seed {settings["seeds"][0]})'


def _scalescenes(doc: Mapping[str, Any] | None, folder: Path, link: str) -> list[str]:
    out = ["### ScaleScenes: what SAC adds to a trained baseline, by object size", ""]
    if doc is None:
        return out + ["Not run yet: `make study-scalescenes` (`python -m studies.scalescenes --out docs/results`).", ""]
    s = doc["settings"]
    s2 = next(iter(s["stage2"].values()))
    stage1 = doc["stage1"]
    return out + [
        _provenance(doc),
        f"- stage 1: the baseline (ResNet-18 from scratch, output stride 8), {s['stage1_iterations']} iterations of batch "
        f"{s['batch']} ({s['crop']}x{s['crop']} crops of {s['size']}x{s['size']} scenes, {s['train_images']} training scenes), "
        f"lr {s['stage1_lr']} (poly); validation mIoU by iteration: "
        + ", ".join(f"{it}: {100 * v:.1f}" for it, v in stage1["train"]["validations"])
        + f"; selected: iteration {stage1['train']['best_iteration']}, held-out mIoU {pct(stage1['miou'])}.",
        f"- stage 2, every row from stage 1's weights: {s['stage2_iterations']} iterations, lr {s['stage2_lr']} (poly), "
        f"regressors at {s2['scale_lr_mult']} of it, validated at iteration 0 too; {_seeds(s)}; evaluated on {s['test_images']} held-out scenes "
        f"(generator seed {s['test_seed']}).",
        "",
        *_size_intro(doc),
        "IoU per class (mean +- std over seeds):",
        "",
        class_table(doc["summary"], markdown=True),
        "",
        "Paired difference to the control of the same seed (points of mIoU; per seed in brackets):",
        "",
        difference_table(doc["differences_to_control"], markdown=True),
        "",
        *_stage2_curves(doc),
        *_size_scales(doc, folder, link),
        *_robustness(doc, folder, link),
        *_costs(doc),
    ]


def _scalescenes_from_scratch(doc: Mapping[str, Any] | None, folder: Path, link: str) -> list[str]:
    out = ["### ScaleScenes from scratch: baseline vs SAC-single vs SAC-multiple, by object size", ""]
    if doc is None:
        return out + ["No from-scratch results here.", ""]
    s = doc["settings"]
    return out + [
        _provenance(doc),
        f"- setting: ResNet-18 from scratch, output stride 8, {s['iterations']} iterations of batch {s['batch']} "
        f"({s['crop']}x{s['crop']} crops of {s['size']}x{s['size']} scenes, {s['train_images']} training scenes), "
        f"seeds {', '.join(str(x) for x in s['seeds'])}; evaluated on {s['test_images']} held-out scenes "
        f"(generator seed {s['test_seed']}); the scenes of that revision (textures in random colours only).",
        "",
        *_size_intro(doc),
        *_size_scales(doc, folder, link),
    ]


def _camvid(doc: Mapping[str, Any] | None, folder: Path, link: str) -> list[str]:
    out = ["### CamVid: Table 1's rows from one trained baseline", ""]
    if doc is None:
        return out + [
            "Not run yet: `make study-camvid` (`python -m studies.camvid --data-root ../shared/data/camvid --out docs/results`).",
            "",
        ]
    s = doc["settings"]
    s2 = next(iter(s["stage2"].values()))
    stage1 = doc["stage1"]
    curve = ", ".join(f"{it}: {100 * v:.1f}" for it, v in stage1["train"]["validations"])
    out += [
        _provenance(doc),
        f"- stage 1: the FCN baseline, dilated ResNet-18, output stride 8, backbone weights: "
        f"{s['backbone_weights'] or 'none (from scratch)'}; CamVid train at {s['factor']}x resolution, {s['crop']}x{s['crop']} "
        f"crops, batch {s['batch']}, {s['stage1_iterations']} iterations, lr {s['stage1_lr']} (poly). Validation mIoU "
        f"(at {s['factor']}x resolution) by iteration: {curve}; selected: iteration {stage1['train']['best_iteration']}, "
        f"`{s['eval_split']}` mIoU {pct(stage1['eval']['single']['miou'])} (MS+flip {pct(stage1['eval']['ms_flip']['miou'])}).",
        f"- stage 2, every row from stage 1's weights: {s['stage2_iterations']} iterations, lr {s['stage2_lr']} (poly), "
        f"regressors at {s2['scale_lr_mult']} of it, validated at iteration 0 too; {_seeds(s)}. Evaluated against full-resolution labels; "
        f"multi-scale = scales {', '.join(str(x) for x in s['ms_scales'])} of the reduced input and their mirror images.",
        "",
    ]
    for key, where in (("eval", f"`{s['eval_split']}`"), ("test", f"the test split (`{s['test_root']}`)")):
        if key not in doc["summary"]:
            continue
        out += [f"On {where}, the selected checkpoints (percent; mean +- std over the seeds in brackets; differences "
                "paired by seed):", "", camvid_table(doc["summary"][key], markdown=True), ""]  # fmt: skip
        if key + "_last" in doc["summary"]:
            out += [f"On {where}, the end of the schedule (every run's last checkpoint, iteration {s['stage2_iterations']}; "
                    f"stage 1's at {s['stage1_iterations']}: {_stage1_last(doc, key)}):", "",
                    camvid_table(doc["summary"][key + "_last"], markdown=True), ""]  # fmt: skip
    out += _stage2_curves(doc)
    out += _robustness(doc, folder, link)
    out += _costs(doc)
    if (folder / doc["picture"]).is_file():
        caption = "CamVid images, predictions, ground truth, scale maps" + (
            " (end of the schedule)" if "eval_last" in doc["summary"] else ""
        )
        out += [f"![{caption}]({link}/{doc['picture']})", ""]
    return out


def _stage1_last(doc: Mapping[str, Any], key: str) -> str:
    scores = doc["stage1"].get(key + "_last")
    if scores is None:
        return "not scored"
    return f"mIoU {pct(scores['single']['miou'])}, MS+flip {pct(scores['ms_flip']['miou'])}"


def _camvid_from_scratch(doc: Mapping[str, Any] | None, folder: Path, link: str) -> list[str]:
    out = ["### CamVid from scratch: the five rows of Table 1, each trained on its own", ""]
    if doc is None:
        return out + ["No from-scratch results here.", ""]
    s = doc["settings"]
    headers = ["model", "mIoU", "pixel acc", "mIoU MS+flip", "pixel acc MS+flip", "best val mIoU (half res, selection)"]
    rows = [
        [title, pct(r["eval"]["single"]["miou"]), pct(r["eval"]["single"]["pixel_acc"]), pct(r["eval"]["ms_flip"]["miou"]),
         pct(r["eval"]["ms_flip"]["pixel_acc"]), pct(r["train"]["best_val_miou"])]
        for title, r in doc["runs"].items()
    ]  # fmt: skip
    out += [
        _provenance(doc),
        f"- setting: dilated ResNet-18, output stride 8, backbone weights: {s['backbone_weights'] or 'none (from scratch)'}; "
        f"CamVid train at {s['factor']}x resolution, {s['crop']}x{s['crop']} crops, batch {s['batch']}, {s['iterations']} "
        f"iterations (the -only rows: {s['only_iterations']} iterations of the scale regressors on the trained baseline), "
        "best checkpoint by validation mIoU; evaluated against full-resolution labels.",
        "",
        f"On `{s['eval_split']}`:",
        "",
        format_table(headers, rows, markdown=True),
        "",
    ]
    if (folder / doc["picture"]).is_file():
        out += [f"![CamVid images, predictions, ground truth, scale maps]({link}/{doc['picture']})", ""]
    return out


def _reading(path: Path, missing: str) -> list[str]:
    return [path.read_text(encoding="utf-8").strip() if path.is_file() else missing, ""]


def render(folder: Path, markdown_dir: Path | None = None) -> str:
    """The Markdown of docs/results.md from the JSON files in ``folder`` (writes the scatter PNG there).

    Pictures are linked relative to ``markdown_dir``, the folder the Markdown goes to (default:
    ``folder``'s parent).
    """
    link = Path(os.path.relpath(folder, markdown_dir if markdown_dir is not None else folder.parent)).as_posix()
    scalescenes, camvid = _load(folder / "scalescenes.json"), _load(folder / "camvid.json")
    lines = [
        "# Results: SAC's claims at CPU scale",
        "",
        f"_Generated by `python -m studies.make_results` from `{folder.name}/*.json`; do not edit by hand "
        f"(the readings live in `{folder.name}/reading.md` and `{folder.name}/reading_from_scratch.md`)._",
        "",
        "Claims under test (paper, Tables 1 and 3, Figure 4): SAC beats the fixed-receptive-field baseline; the "
        "\"-only\" variants (baseline weights, only the scale regressors trained) already help; SAC-multiple "
        "helps more than SAC-single; the learned scale coefficients grow with object size.",
        "",
        "## The paper's protocol: every row from one trained baseline",
        "",
        "The paper starts every row of Table 1 from the same ImageNet ResNet-101, and the \"-only\" rows from "
        "the trained baseline. ImageNet weights cannot be had here, so a baseline trained in stage 1 stands in: "
        "stage 2 continues it (the control) and starts every SAC row from its weights, with one schedule.",
        "",
        *_scalescenes(scalescenes, folder, link),
        *_camvid(camvid, folder, link),
        *_claims(scalescenes, camvid),
        "### Reading",
        "",
        *_reading(folder / "reading.md", "_Not written yet: the reading of the two-stage results goes in "
                  f"`{folder.name}/reading.md`, by hand, from the full runs' numbers._"),
        "## From scratch (the earlier studies)",
        "",
        "Every row trained from random weights on its own; kept for comparison.",
        "",
        *_scalescenes_from_scratch(_load(folder / "scalescenes_from_scratch.json"), folder, link),
        *_camvid_from_scratch(_load(folder / "camvid_from_scratch.json"), folder, link),
        "### Reading of the from-scratch results",
        "",
        *_reading(folder / "reading_from_scratch.md", "_No reading._"),
        "## The paper's numbers, for context",
        "",
        "ResNet-101 pre-trained on ImageNet, 500x500 crops, batch 8 on 4 GPUs; not comparable in scale with the "
        "CPU studies above, only in direction.",
        "",
        "Table 1 (Cityscapes val):",
        "",
        format_table(["method", "mIoU (%)"], [list(r) for r in PAPER_TABLE1], markdown=True),
        "",
        "Table 3 (ADE20K val, SAC rows):",
        "",
        format_table(["method", "mIoU (%)", "pixel acc (%)"], [list(r) for r in PAPER_TABLE3], markdown=True),
        "",
    ]  # fmt: skip
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m studies.make_results", description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=Path("docs/results"), help="folder of the raw JSON files")
    parser.add_argument("--out", type=Path, default=Path("docs/results.md"))
    args = parser.parse_args(argv)
    if not args.results.is_dir():
        raise FileNotFoundError(f"results folder not found: {args.results}")
    text = render(args.results, args.out.parent)
    with atomic_open(args.out, "w", encoding="utf-8") as handle:
        handle.write(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
