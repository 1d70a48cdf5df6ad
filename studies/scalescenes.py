"""The ScaleScenes study: what SAC adds on top of a trained baseline, by object size, and scale vs size.

The paper's protocol at CPU scale (as ``studies/camvid.py``): stage 1 trains the FCN baseline
(ResNet-18 from scratch, output stride 8) on generated scenes until its validation mIoU flattens;
stage 2 starts every row from its selected weights with one schedule: the control (the baseline
continued), SAC-single-only and SAC-multiple-only (only the regressors train, at a tenth of the lr),
SAC-single and SAC-multiple trained whole (regressors at a tenth of the lr), and their deformable
rivals DCN-single and DCN-multiple (``sacseg.models.DeformableFCN``: DCNv2 layers in SAC's places, trained
whole, offset/mask predictors at a tenth of the lr); seeds 0, 1, 2 for the control and the whole
rows, and 3, 4, 5 too for the control, SAC-single and SAC-multiple (``--more-seeds``, ``--more-rows``:
six seeds, where three left their differences within the seeds' spread), seed 0 for the "-only" rows;
every row validates at iteration 0 too, so the unchanged start can win the selection. ``--ablations``
adds the runs of ``studies._study.ABLATIONS``. The selected checkpoints are then scored on held-out
scenes (``ScaleScenes(seed=2)``):

- mIoU and pixel accuracy over all pixels, IoU per class, and the paired difference to the control
  of the same seed;
- by object size: an object's size is its drawn radius ``r`` (``ds.objects(i)``; its visible area is
  about ``pi r^2``); radii are drawn log-uniformly in ``[r_min, r_max]`` (2 to 30 px at 128x128), so the
  fixed bucket edges ``r_min * (r_max / r_min) ** (1/3)`` and ``** (2/3)`` (4.9 and 12.2 px) are the
  terciles of the generator's size distribution: small / medium / large. For each bucket a confusion
  matrix counts only the pixels of objects in that bucket (every other pixel is ignored); the bucket's
  mIoU is the mean IoU of that restricted matrix over the classes with ground-truth pixels in it (false
  positives therefore count only inside the bucket's objects), and its pixel accuracy is the fraction
  of those pixels labelled right;
- the Spearman rank correlation (``scipy.stats.spearmanr``) between each visible object's size and its
  mean scale coefficient: the scale map resized (bilinear) to the image and averaged over the object's
  visible pixels; for SAC-single the classifier's map, for SAC-multiple the classifier's and res5's.
  In these scenes, as on a road, objects lower in the image are drawn larger (perspective), so size
  and vertical position are confounded: a map that only learned "lower is larger" would also
  correlate with size. The partial Spearman correlation given the object's centre row (ranks of size
  and scale, each with the linear effect of the ranked row removed) separates the two. A DCN row's
  map is the isotropic stretch of its offsets (``sacseg.nn.deformation_scale``);
- scale robustness: the selected and the last checkpoint (the end of the schedule) of every run, on
  the same scenes resized by each of ``RESCALE_FACTORS`` (0.5 to 2; the prediction resized back to the
  labels, objects kept in the bucket of their drawn size): mIoU overall and by bucket, the paired
  difference to the control and between each SAC row and its DCN rival, and each scale map's mean, with
  the slope of its log against the factor's (1 if the coefficient follows the rescale, the paper's premise).

Paired differences are reported as mean +- std over the seeds, each seed's, and the 95% interval of
their mean (Student's t over the paired differences, ``studies._study.t_interval``).

Resumable: runs live in the work folder (``--work``, default ``$SACSEG_STUDY_WORK/study_scalescenes``
or ``~/.cache/sacseg/study_scalescenes``); finished runs and their evaluations are reused, an
interrupted run resumes from its ``last.pt``. Writes ``<out>/scalescenes.json`` (every number, per
seed, the per-object (size, scale) pairs, the checkpoints; ``robustness``: the rescaled scores) and
``<out>/scalescenes_predictions.png``; each rescaled evaluation is kept in its run's folder
(``robustness[_last]_x<factor>.json``), so adding the curves to a finished study trains nothing.

    python -m studies.scalescenes --out docs/results            # full study (estimate printed first)
    python -m studies.scalescenes --quick --out /tmp/ss_quick    # smoke test (~2 min)
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch.utils.data import DataLoader

from benchmarks._report import format_table, run_record, write_json
from sacseg.data import ScaleScenes
from sacseg.evaluation.metrics import ConfusionMatrix
from sacseg.models.inference import predict_with_scales
from sacseg.viz import colorize, denormalize, save_report_grid
from studies._study import (
    ABLATIONS,
    RESCALE_FACTORS,
    Downscaled,
    add_seed_options,
    estimate_two_stage,
    evaluate_once,
    load_trained,
    mean_scale_table,
    mean_std,
    number_stat,
    paired_differences,
    paired_stat,
    pct_stat,
    rescale_cost,
    rescaled_once,
    robustness_summaries,
    robustness_tables,
    run_two_stage,
    stage2_plan,
    train_once,
    work_folder,
)  # fmt: skip

BUCKETS: tuple[str, ...] = ("small", "medium", "large")
TEST_SEED = 2  # train/val/test scenes come from seeds 0/1/2 (sacseg.training.train's convention)

# Seconds per training iteration of each model, one thread, batch 8 of 96x96 crops of 128x128 scenes,
# validations included, and seconds to score one model on the 64 test scenes: measured in the full
# two-stage study of issue 27 (docs/results/scalescenes.json, "Cost of a training iteration": each
# stage-2 run's seconds over the iterations it trained, two runs at once, mean over the seeds; stage 1,
# alone, 716 s for its 1000). Two single-threaded workers: stage 1 alone, then stage 2's runs
# longest first.
SECONDS_PER_ITERATION: dict[tuple[str, str], float] = {
    ("fcn_resnet18", "control"): 0.83, ("sac_single_resnet18", "whole"): 0.86,
    ("sac_multiple_resnet18", "whole"): 1.30, ("sac_single_resnet18", "only"): 0.32,
    ("sac_multiple_resnet18", "only"): 0.82, ("dcn_single_resnet18", "whole"): 0.96,
    ("dcn_multiple_resnet18", "whole"): 1.47,
}  # fmt: skip
EVAL_SECONDS = 6.0
FULL: dict[str, Any] = {
    "seeds": (0, 1, 2),
    # Six seeds in all for the control and MORE_SEED_ROWS (issue 27: three could not tell their
    # differences from noise); a finished run of the first three is reused.
    "more_seeds": (3, 4, 5),
    "stage1_iterations": 1000,
    "stage1_lr": 0.02,
    "stage2_iterations": 800,
    "stage2_lr": 0.005,
    "validations": 5,
    "train_images": 512,
    "val_images": 16,
    "test_images": 64,
    "size": 128,
    "crop": 96,
    "batch": 8,
}
QUICK: dict[str, Any] = {
    "seeds": (0, 1),
    "more_seeds": (),
    "stage1_iterations": 3,
    "stage1_lr": 0.02,
    "stage2_iterations": 2,
    "stage2_lr": 0.005,
    "validations": 1,
    "train_images": 8,
    "val_images": 2,
    "test_images": 4,
    "size": 64,
    "crop": 48,
    "batch": 4,
}
#: The rows that run ``more_seeds`` too (with the control): the differences the study reports.
MORE_SEED_ROWS: tuple[str, ...] = ("SAC-single", "SAC-multiple")
_PICTURE_ROWS = 3


def bucket_edges(radius_range: tuple[float, float]) -> tuple[float, float]:
    """The two size edges splitting log-uniform radii in ``radius_range`` into equally likely terciles."""
    low, high = radius_range
    if not 0 < low < high:
        raise ValueError(f"radius_range must satisfy 0 < low < high, got {radius_range}")
    ratio = high / low
    return low * ratio ** (1 / 3), low * ratio ** (2 / 3)


def bucket_index(size: float, edges: tuple[float, float]) -> int:
    """0 (small, ``size < edges[0]``), 1 (medium) or 2 (large, ``size >= edges[1]``)."""
    return int(size >= edges[0]) + int(size >= edges[1])


def bucket_targets(
    target: torch.Tensor, instances: torch.Tensor, records: Sequence[Mapping[str, Any]], edges: tuple[float, float],
    ignore_index: int = 255,
) -> list[torch.Tensor]:  # fmt: skip
    """One copy of ``target [H, W]`` per bucket with every pixel outside that bucket's objects ignored.

    ``instances [H, W]`` holds object ids (0 = no object) matching ``records``' ``"id"``.
    """
    if target.shape != instances.shape:
        raise ValueError(f"target {tuple(target.shape)} and instances {tuple(instances.shape)} differ in shape")
    lookup = torch.full((int(instances.max()) + 1,), -1, dtype=torch.long)
    for record in records:
        if record["id"] < len(lookup):
            lookup[record["id"]] = bucket_index(record["size"], edges)
    bucket_of_pixel = lookup[instances]  # -1 where there is no object
    return [torch.where(bucket_of_pixel == b, target, torch.full_like(target, ignore_index)) for b in range(3)]


def restricted_scores(matrix: ConfusionMatrix) -> dict[str, Any]:
    """mIoU over the classes with ground-truth pixels, and pixel accuracy, of a restricted confusion matrix."""
    results = matrix.compute()
    counts = matrix.matrix.sum(dim=1).tolist()
    present = [iou for iou, n in zip(results["iou"], counts) if n > 0]
    return {
        "miou": sum(present) / len(present) if present else math.nan,
        "pixel_acc": results["pixel_acc"],
        "num_pixels": results["num_pixels"],
    }


def object_scales(
    instances: torch.Tensor, records: Sequence[Mapping[str, Any]], scale_map: torch.Tensor
) -> list[tuple[float, float, int, float]]:
    """``(size, mean scale over the object's visible pixels, visible pixels, centre row)`` per visible object.

    ``instances [H, W]`` (0 = no object), ``scale_map [H, W]`` at the same size.
    """
    if instances.shape != scale_map.shape:
        raise ValueError(f"instances {tuple(instances.shape)} and scale map {tuple(scale_map.shape)} differ in shape")
    ids = instances.flatten()
    n = int(ids.max()) + 1
    sums = torch.zeros(n, dtype=torch.float64).index_add_(0, ids, scale_map.flatten().double())
    counts = torch.bincount(ids, minlength=n)
    rows = []
    for record in records:
        k = record["id"]
        if k < n and counts[k] > 0:
            rows.append((float(record["size"]), float(sums[k] / counts[k]), int(counts[k]), float(record["center"][1])))
    return rows


def spearman(sizes: Sequence[float], scales: Sequence[float]) -> dict[str, float | int | None]:
    """Spearman's rho and two-sided p-value between sizes and scales (None with fewer than 3 objects)."""
    if len(sizes) != len(scales):
        raise ValueError(f"{len(sizes)} sizes for {len(scales)} scales")
    if len(sizes) < 3 or len(set(scales)) < 2:
        return {"rho": None, "p": None, "objects": len(sizes)}
    result = stats.spearmanr(sizes, scales)
    return {"rho": float(result.statistic), "p": float(result.pvalue), "objects": len(sizes)}


def partial_spearman(sizes: Sequence[float], scales: Sequence[float], control: Sequence[float]) -> dict[str, float | int | None]:
    """Spearman's rho between sizes and scales with ``control`` partialled out, and its p-value.

    The ranks of ``sizes`` and of ``scales`` are each regressed (least squares, with intercept) on
    the ranks of ``control``; rho is the Pearson correlation of the two residuals, its p-value the
    t test with ``n - 3`` degrees of freedom. None with fewer than 4 objects or a constant input.
    """
    if not len(sizes) == len(scales) == len(control):
        raise ValueError(f"{len(sizes)} sizes, {len(scales)} scales and {len(control)} controls differ in number")
    n = len(sizes)
    if n < 4 or min(len(set(sizes)), len(set(scales)), len(set(control))) < 2:
        return {"rho": None, "p": None, "objects": n}
    ranks = np.stack([stats.rankdata(v) for v in (sizes, scales, control)])
    design = np.stack([np.ones(n), ranks[2]], axis=1)
    residuals = [r - design @ np.linalg.lstsq(design, r, rcond=None)[0] for r in ranks[:2]]
    norms = [float(np.linalg.norm(r)) for r in residuals]
    if min(norms) <= 1e-9 * n:  # the control explains one of them entirely (up to rounding)
        return {"rho": None, "p": None, "objects": n}
    rho = float(np.clip(residuals[0] @ residuals[1] / (norms[0] * norms[1]), -1.0, 1.0))
    dof = n - 3
    p = 0.0 if abs(rho) == 1.0 else float(2 * stats.t.sf(abs(rho) * math.sqrt(dof / (1 - rho * rho)), dof))
    return {"rho": rho, "p": p, "objects": n}


def stage_settings(model: str, seed: int, p: Mapping[str, Any], out_dir: Path, stage: int = 1) -> dict[str, Any]:
    """The training config of one run of stage ``stage`` (1: the baseline from scratch; 2: from its weights)."""
    iterations = p["stage1_iterations"] if stage == 1 else p["stage2_iterations"]
    return {
        "model": model,
        "num_classes": len(ScaleScenes.classes),
        "output_stride": 8,
        "upsample": "deconv",
        "dataset": "scale_scenes",
        "scale_scenes_train_images": p["train_images"],
        "scale_scenes_val_images": p["val_images"],
        "scale_scenes_size": p["size"],
        "crop_size": p["crop"],
        "scale_min": 0.75,
        "scale_max": 1.25,
        "batch_size": p["batch"],
        "iterations": iterations,
        "lr": p["stage1_lr"] if stage == 1 else p["stage2_lr"],
        "schedule": "poly",
        # From scratch the first steps are large; clipping the global gradient norm at 1 keeps them in
        # hand (typical norms early on: 6-15). Every row of stage 2 gets it too: one schedule for all.
        "grad_clip": 1.0,
        "scale_lr_mult": 0.1,
        "seed": seed,
        "workers": 0,
        "precision": "fp32",
        "device": "cpu",
        "threads": 1,
        "val_every": max(1, iterations // p["validations"]),
        "checkpoint_every": max(1, iterations // p["validations"]),
        "log_every": max(1, iterations // 10),
        "out_dir": str(out_dir),
    }


def evaluate_run(model: torch.nn.Module, test_set: ScaleScenes) -> dict[str, Any]:
    """Overall and per-bucket scores and per-object (size, scale) pairs of one trained model."""
    k = len(test_set.classes)
    edges = bucket_edges(test_set.radius_range)
    overall = ConfusionMatrix(k)
    buckets = [ConfusionMatrix(k) for _ in BUCKETS]
    pairs: dict[str, list[tuple[float, float, int, float]]] = {}
    map_means: dict[str, list[float]] = {}
    loader = DataLoader(test_set, batch_size=1)
    with torch.no_grad():
        for index, (image, target) in enumerate(loader):
            probs, scale_maps = predict_with_scales(model, image)
            pred = probs.argmax(1)[0]
            overall.update(pred, target[0])
            instances, records = test_set.objects(index)
            for matrix, restricted in zip(buckets, bucket_targets(target[0], instances, records, edges)):
                matrix.update(pred, restricted)
            for name, scale in scale_maps.items():
                pairs.setdefault(name, []).extend(object_scales(instances, records, scale[0, 0]))
                map_means.setdefault(name, []).append(float(scale.mean()))
    scores = overall.compute()
    by_bucket = {name: restricted_scores(m) for name, m in zip(BUCKETS, buckets)}
    correlation = {name: spearman([r[0] for r in rows], [r[1] for r in rows]) for name, rows in pairs.items()}
    partial = {
        name: partial_spearman([r[0] for r in rows], [r[1] for r in rows], [r[3] for r in rows]) for name, rows in pairs.items()
    }
    mean_scale_by_bucket = {
        name: {b: mean_std([r[1] for r in rows if bucket_index(r[0], edges) == i])["mean"] for i, b in enumerate(BUCKETS)}
        for name, rows in pairs.items()
    }  # fmt: skip
    return {
        "miou": scores["miou"],
        "pixel_acc": scores["pixel_acc"],
        "iou": scores["iou"],
        "buckets": by_bucket,
        "spearman": correlation,
        "partial_spearman_given_row": partial,
        "mean_scale_by_bucket": mean_scale_by_bucket,
        # Each map's mean over the image, averaged over the images.
        "mean_scale": {name: sum(means) / len(means) for name, means in map_means.items()},
        # [size px, mean scale, visible pixels, centre row px] per object
        "objects": {name: [[round(s, 3), round(c, 4), a, round(y, 1)] for s, c, a, y in rows] for name, rows in pairs.items()},
    }


def rescaled_scores(model: torch.nn.Module, factor: float, test_set: ScaleScenes) -> dict[str, Any]:
    """:func:`evaluate_run` of ``model`` on the scenes resized by ``factor``, its prediction resized back to
    the labels (objects stay in the buckets of their drawn size): mIoU, pixel accuracy, the size buckets'
    scores and each scale map's mean (overall and by bucket)."""
    start = time.perf_counter()
    result = evaluate_run(Downscaled(model, factor), test_set)
    kept = ("miou", "pixel_acc", "buckets", "mean_scale", "mean_scale_by_bucket")
    return {"eval_seconds": time.perf_counter() - start, **{k: result[k] for k in kept}}


def _job(settings: dict[str, Any], p: dict[str, Any]) -> dict[str, Any]:
    """Train (or reuse) one run; score its selected checkpoint on the held-out scenes, and it and its last
    checkpoint at every rescale factor (or reuse those scores)."""
    summary = train_once(settings)
    scenes = {"test_images": p["test_images"], "size": p["size"], "test_seed": TEST_SEED}
    test_set = ScaleScenes(p["test_images"], size=p["size"], seed=TEST_SEED)

    def compute() -> dict[str, Any]:
        start = time.perf_counter()
        result = evaluate_run(load_trained(settings), test_set)
        return {"eval_seconds": time.perf_counter() - start, **result}

    return {
        "train": summary,
        **evaluate_once(
            Path(settings["out_dir"]), "test_scores", {**scenes, "best_iteration": summary["best_iteration"]}, compute
        ),
        **rescaled_once(settings, summary, scenes, lambda model, factor: rescaled_scores(model, factor, test_set)),
    }


def _aggregate(runs: Mapping[str, Mapping[int, Mapping[str, Any]]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for title, per_seed in runs.items():
        seeds = list(per_seed.values())
        entry: dict[str, Any] = {
            "miou": mean_std([r["miou"] for r in seeds]),
            "pixel_acc": mean_std([r["pixel_acc"] for r in seeds]),
            "iou": {c: mean_std([r["iou"][k] for r in seeds]) for k, c in enumerate(ScaleScenes.classes)},
            "buckets": {
                b: {key: mean_std([r["buckets"][b][key] for r in seeds]) for key in ("miou", "pixel_acc")} for b in BUCKETS
            },
            **{
                key: {name: mean_std([r[key][name]["rho"] for r in seeds]) for name in seeds[0][key]}
                for key in ("spearman", "partial_spearman_given_row")
            },
            "mean_scale_by_bucket": {
                name: {b: mean_std([r["mean_scale_by_bucket"][name][b] for r in seeds]) for b in BUCKETS}
                for name in seeds[0]["mean_scale_by_bucket"]
            },
        }
        summary[title] = entry
    return summary


def summary_table(summary: Mapping[str, Any], markdown: bool = False) -> str:
    """The study's table (percentages, mean +- std over seeds; Spearman's rho as a number)."""
    headers = ["model", "mIoU", "pixel acc", *(f"{b} mIoU" for b in BUCKETS), *(f"{b} acc" for b in BUCKETS),
               "rho classifier", "rho res5", "partial rho classifier", "partial rho res5"]  # fmt: skip
    rows = []
    for title, entry in summary.items():
        rows.append([
            title, pct_stat(entry["miou"]), pct_stat(entry["pixel_acc"]),
            *(pct_stat(entry["buckets"][b]["miou"]) for b in BUCKETS),
            *(pct_stat(entry["buckets"][b]["pixel_acc"]) for b in BUCKETS),
            *(number_stat(entry[key].get(name)) for key in ("spearman", "partial_spearman_given_row")
              for name in ("classifier", "res5")),
        ])  # fmt: skip
    return format_table(headers, rows, markdown)


def class_table(summary: Mapping[str, Any], markdown: bool = False) -> str:
    """IoU per class (percent, mean +- std over seeds) of every row."""
    classes = list(ScaleScenes.classes)
    rows = [[title, *(pct_stat(entry["iou"][c]) for c in classes)] for title, entry in summary.items()]
    return format_table(["model", *classes], rows, markdown)


def difference_table(differences: Mapping[str, Any], markdown: bool = False) -> str:
    """Paired differences to the control (points of mIoU): mean +- std and each seed's."""
    keys = ("miou", *(f"{b} miou" for b in BUCKETS))
    rows = []
    for title, by_key in differences.items():
        cells = [title]
        for key in keys:
            cells.append(paired_stat(by_key[key], missing="n/a"))
        rows.append(cells)
    return format_table(["row - control (per seed)", "mIoU", *(f"{b} mIoU" for b in BUCKETS)], rows, markdown)


def _picture(runs_settings: Mapping[str, Mapping[str, Any]], p: Mapping[str, Any], path: Path) -> None:
    """Test scenes, the seed-0 predictions of the control, SAC-single and SAC-multiple, the ground truth and the scale maps."""
    test_set = ScaleScenes(min(_PICTURE_ROWS, p["test_images"]), size=p["size"], seed=TEST_SEED)
    models = {title: load_trained(settings) for title, settings in runs_settings.items()}
    rows = []
    for image, target in DataLoader(test_set, batch_size=1):
        cells: list[Any] = [denormalize(image[0])]
        maps: list[Any] = []
        for model in models.values():
            probs, scales = predict_with_scales(model, image)
            cells.append(colorize(probs.argmax(1)[0], test_set.palette))
            maps += [scales[name][0, 0] for name in ("classifier", "res5") if name in scales]
        rows.append(cells + [colorize(target[0], test_set.palette)] + maps)
    titles = ["image", *models, "ground truth", "SAC-single scale", "SAC-multiple scale", "SAC-multiple res5 scale"]
    save_report_grid(rows, path, titles)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m studies.scalescenes", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/results"), help="where scalescenes.json and the PNG go")
    parser.add_argument(
        "--work", type=Path, help="training runs (default: $SACSEG_STUDY_WORK/study_scalescenes or ~/.cache/sacseg/...)"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke test of a minute or two (not a result)")
    parser.add_argument("--jobs", type=int, default=2, help="training processes at once (one thread each)")
    parser.add_argument("--seeds", type=int, nargs="+", help="override stage 2's seeds (default 0 1 2; quick: 0 1)")
    add_seed_options(parser, MORE_SEED_ROWS, FULL["more_seeds"])
    parser.add_argument("--ablations", nargs="*", default=[], choices=sorted(ABLATIONS), help="extra runs, seed 0")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    p = dict(QUICK if args.quick else FULL)
    if args.seeds:
        p["seeds"] = tuple(args.seeds)
    if args.more_seeds is not None:
        p["more_seeds"] = tuple(args.more_seeds)
    work = work_folder("study_scalescenes" + ("_quick" if args.quick else ""), args.work)
    record = run_record("studies.scalescenes", list(argv) if argv is not None else sys.argv[1:])
    plan = stage2_plan(p["seeds"], args.ablations, p["more_seeds"], args.more_rows)
    # Each run is scored on the test scenes once, and at every rescale factor at its selected and last checkpoints.
    estimate = estimate_two_stage(p, plan, SECONDS_PER_ITERATION, EVAL_SECONDS * (1 + 2 * rescale_cost()), args.jobs)
    print(f"estimated wall time on a quiet 2-core machine: {estimate / 60:.0f} min (work folder {work})", flush=True)
    start = time.perf_counter()
    stage1 = stage_settings("fcn_resnet18", 0, p, work / "stage1_baseline_seed0")
    two = run_two_stage(stage1, plan, p, work, _job, (p,), SECONDS_PER_ITERATION, args.jobs)
    runs = two.runs
    summary = _aggregate(runs)
    differences = {
        title: dict(zip(
            ("miou", *(f"{b} miou" for b in BUCKETS)),
            (paired_differences(runs, lambda r: r["miou"])[title],
             *(paired_differences(runs, lambda r, b=b: r["buckets"][b]["miou"])[title] for b in BUCKETS)),
        ))
        for title in runs if title != "control"
    }  # fmt: skip
    robustness = robustness_summaries(runs)
    edges = bucket_edges(ScaleScenes(0, size=p["size"]).radius_range)
    args.out.mkdir(parents=True, exist_ok=True)
    picture = args.out / "scalescenes_predictions.png"
    seed0 = p["seeds"][0]
    _picture({t: two.settings[(t, seed0)] for t in ("control", "SAC-single", "SAC-multiple")}, p, picture)
    stages = two.record(private=("out_dir",))
    doc = {
        "study": "scalescenes",
        "protocol": "two-stage",
        "quick": args.quick,
        **record,
        "wall_seconds": time.perf_counter() - start,
        "estimated_wall_seconds": estimate,
        "work": str(work),
        "settings": {
            **p,
            "ablations": args.ablations,
            "more_rows": args.more_rows,
            "rescale_factors": list(RESCALE_FACTORS),
            "seconds_per_iteration": {f"{model} {kind}": v for (model, kind), v in SECONDS_PER_ITERATION.items()},
            "test_seed": TEST_SEED,
            "stage1": stages["stage1_settings"],
            "stage2": stages["stage2_settings"],
        },
        "stage1": stages["stage1"],
        "checkpoints": stages["checkpoints"],
        "bucket_edges_px": list(edges),
        "picture": picture.name,
        "summary": summary,
        "differences_to_control": differences,
        "robustness": robustness,
        "runs": runs,
    }
    write_json(doc, args.out / "scalescenes.json")
    print(summary_table(summary))
    print(class_table(summary))
    print(difference_table(differences))
    print("end of the schedule, mIoU at each input rescale factor, its paired difference to the control, scale maps' means:")
    print("\n".join([*robustness_tables(robustness["last"]), mean_scale_table(robustness["last"])]))
    print(f"size buckets (radius, px): small < {edges[0]:.1f} <= medium < {edges[1]:.1f} <= large")
    print(f"wrote {args.out / 'scalescenes.json'} and {picture} in {doc['wall_seconds']:.0f} s (estimated {estimate:.0f} s)")
    return doc


if __name__ == "__main__":
    main()
