"""Render docs/results.md (tables, scale-vs-size scatters) from the studies' raw JSON in docs/results/.

    python -m studies.make_results                      # docs/results/*.json -> docs/results.md
    python -m studies.make_results --results DIR --out FILE

Two parts. The paper's two-stage protocol: ``scalescenes.json`` (studies/scalescenes.py) and
``camvid.json`` (studies/camvid.py), then ``reading.md``, the human reading of those numbers, included
verbatim only where it exists (written by hand from the full runs; never generated). The earlier
from-scratch studies: ``scalescenes_from_scratch.json`` and ``camvid_from_scratch.json`` with their
reading ``reading_from_scratch.md``. The scatters ``<stem>_scale_vs_size.png`` are written next to
the JSON. Results of a ``--quick`` run are rendered under a SMOKE TEST banner.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks._report import format_table
from sacseg.utils.io import atomic_open
from studies._study import mean_std, number_stat, paired_differences, paired_stat, pct, pct_stat
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
_MAPS = (("SAC-single", "classifier"), ("SAC-multiple", "classifier"), ("SAC-multiple", "res5"))


def _load(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from err


def _training_seconds(doc: Mapping[str, Any]) -> float | None:
    """Seconds of training summed over a two-stage study's runs (each as long as the invocation that
    trained it took), or None for a study of another kind."""
    if doc.get("protocol") != "two-stage":
        return None
    runs = [r for per_seed in doc["runs"].values() for r in per_seed.values()]
    return doc["stage1"]["train"]["train_seconds"] + sum(r["train"]["train_seconds"] for r in runs)


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
                        f"finished in the work folder; training summed over every run, whichever invocation trained "
                        f"it: {training / 60:.0f} min (of one process each; two ran at once in stage 2)")  # fmt: skip
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
    """Each object's mean scale coefficient against its size, per SAC map, all seeds (log size axis)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(_MAPS), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(_MAPS), squeeze=False)[0]
    edges = doc["bucket_edges_px"]
    for ax, (title, name) in zip(axes, _MAPS):
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
        f"regressors at {s2['scale_lr_mult']} of it, validated at iteration 0 too; seeds {', '.join(str(x) for x in s['seeds'])} "
        f'("-only" rows and ablations: seed {s["seeds"][0]}); evaluated on {s["test_images"]} held-out scenes '
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
        f"regressors at {s2['scale_lr_mult']} of it, validated at iteration 0 too; seeds {', '.join(str(x) for x in s['seeds'])} "
        f'("-only" rows and ablations: seed {s["seeds"][0]}). Evaluated against full-resolution labels; '
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
        *_scalescenes(_load(folder / "scalescenes.json"), folder, link),
        *_camvid(_load(folder / "camvid.json"), folder, link),
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
