"""The ScaleScenes study: baseline vs SAC-single vs SAC-multiple over seeds, by object size, scale vs size.

Trains the three models (ResNet-18 from scratch, output stride 8, the same schedule, seeds 0..2:
for a given seed the three start from the same backbone and classifier weights) with
``sacseg.engine.train.train``, then on held-out scenes (``ScaleScenes(seed=2)``) measures:

- mIoU and pixel accuracy over all pixels;
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
  and scale, each with the linear effect of the ranked row removed) separates the two.

Writes ``<out>/scalescenes.json`` (every number, per seed, and the per-object (size, scale) pairs) and
``<out>/scalescenes_predictions.png``; prints the table. Training runs go to ``--work``.

    python -m studies.scalescenes --out docs/results          # full study (~45 min, 2 cores)
    python -m studies.scalescenes --quick --out /tmp/ss_quick  # smoke test (~1-2 min)
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
from studies._study import Job, load_trained, mean_std, number_stat, pct_stat, run_jobs, train_and_load
from sacseg.data import ScaleScenes
from sacseg.engine.inference import predict_with_scales
from sacseg.engine.metrics import ConfusionMatrix
from sacseg.viz import colorize, denormalize, save_report_grid

MODELS: dict[str, str] = {
    "baseline": "fcn_resnet18",
    "SAC-single": "sac_single_resnet18",
    "SAC-multiple": "sac_multiple_resnet18",
}
BUCKETS: tuple[str, ...] = ("small", "medium", "large")
TEST_SEED = 2  # train/val/test scenes come from seeds 0/1/2 (sacseg.engine.train's convention)

# Full study, sized from measured per-iteration costs on one core of this machine (batch 8, 96x96
# crops, ResNet-18 at output stride 8, the default fast SAC path): baseline 0.65 s, SAC-single 0.65 s,
# SAC-multiple 1.02 s, plus ~0.04 s of scene generation. 9 runs x 700 iterations on two
# single-threaded workers (assumed each at its single-process speed on a quiet machine): ~45 min;
# evaluation ~1 min.
FULL: dict[str, Any] = {
    "seeds": (0, 1, 2),
    "iterations": 700,
    "train_images": 512,
    "val_images": 16,
    "test_images": 64,
    "size": 128,
    "crop": 96,
    "batch": 8,
}
QUICK: dict[str, Any] = {
    "seeds": (0, 1),
    "iterations": 3,
    "train_images": 8,
    "val_images": 2,
    "test_images": 4,
    "size": 64,
    "crop": 48,
    "batch": 4,
}
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


def partial_spearman(
    sizes: Sequence[float], scales: Sequence[float], control: Sequence[float]
) -> dict[str, float | int | None]:
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


def _settings(model: str, seed: int, p: Mapping[str, Any], work: Path) -> dict[str, Any]:
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
        "iterations": p["iterations"],
        # Nothing is pre-trained and steps are few: a larger lr than the paper's, decayed (poly).
        "lr": 0.02,
        "schedule": "poly",
        # From scratch, the first steps throw scale coefficients onto the regressor's clip bound (0.25
        # or 4), where ReLU + clamp pass no gradient and SAC trains as a fixed-dilation model.
        # Clipping the global gradient norm at 1 (typical norms early on: 6-15; every model gets it)
        # and the regressors at a tenth of the lr keep the maps inside the bounds
        # (studies/probe_scale_regressor.py: without the lower lr SAC-multiple's res5 map sat on a
        # bound all run). scale_lr_mult does nothing to the baseline, which has no regressor.
        "grad_clip": 1.0,
        "scale_lr_mult": 0.1,
        "seed": seed,
        "workers": 0,
        "amp": False,
        "device": "cpu",
        "threads": 1,
        "val_every": p["iterations"],
        "checkpoint_every": p["iterations"],
        "log_every": max(1, p["iterations"] // 10),
        "out_dir": str(work / f"{model}_seed{seed}"),
    }


def evaluate_run(model: torch.nn.Module, test_set: ScaleScenes) -> dict[str, Any]:
    """Overall and per-bucket scores and per-object (size, scale) pairs of one trained model."""
    k = len(test_set.classes)
    edges = bucket_edges(test_set.radius_range)
    overall = ConfusionMatrix(k)
    buckets = [ConfusionMatrix(k) for _ in BUCKETS]
    pairs: dict[str, list[tuple[float, float, int, float]]] = {}
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
    scores = overall.compute()
    by_bucket = {name: restricted_scores(m) for name, m in zip(BUCKETS, buckets)}
    correlation = {name: spearman([r[0] for r in rows], [r[1] for r in rows]) for name, rows in pairs.items()}
    partial = {
        name: partial_spearman([r[0] for r in rows], [r[1] for r in rows], [r[3] for r in rows])
        for name, rows in pairs.items()
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
        # [size px, mean scale, visible pixels, centre row px] per object
        "objects": {name: [[round(s, 3), round(c, 4), a, round(y, 1)] for s, c, a, y in rows] for name, rows in pairs.items()},
    }


def _job(settings: dict[str, Any], test_params: dict[str, Any]) -> dict[str, Any]:
    model, summary = train_and_load(settings)
    start = time.perf_counter()
    result = evaluate_run(model, ScaleScenes(test_params["test_images"], size=test_params["size"], seed=TEST_SEED))
    return {"train": summary, "eval_seconds": time.perf_counter() - start, **result}


def _aggregate(runs: Mapping[str, Mapping[int, Mapping[str, Any]]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for title, per_seed in runs.items():
        seeds = list(per_seed.values())
        entry: dict[str, Any] = {
            "miou": mean_std([r["miou"] for r in seeds]),
            "pixel_acc": mean_std([r["pixel_acc"] for r in seeds]),
            "buckets": {
                b: {key: mean_std([r["buckets"][b][key] for r in seeds]) for key in ("miou", "pixel_acc")}
                for b in BUCKETS
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


def _picture(work: Path, seed: int, p: Mapping[str, Any], path: Path) -> None:
    """Test scenes, each model's prediction, the ground truth and the SAC scale maps (first seed)."""
    test_set = ScaleScenes(min(_PICTURE_ROWS, p["test_images"]), size=p["size"], seed=TEST_SEED)
    models = {title: load_trained(_settings(name, seed, p, work)) for title, name in MODELS.items()}
    rows = []
    for image, target in DataLoader(test_set, batch_size=1):
        cells: list[Any] = [denormalize(image[0])]
        maps: list[Any] = []
        for title, model in models.items():
            probs, scales = predict_with_scales(model, image)
            cells.append(colorize(probs.argmax(1)[0], test_set.palette))
            maps += [scales[name][0, 0] for name in ("classifier", "res5") if name in scales]
        rows.append(cells + [colorize(target[0], test_set.palette)] + maps)
    titles = ["image", *models, "ground truth", "SAC-single scale", "SAC-multiple scale", "SAC-multiple res5 scale"]
    save_report_grid(rows, path, titles)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m studies.scalescenes", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/results"), help="where scalescenes.json and the PNG go")
    parser.add_argument("--work", type=Path, default=Path("runs/study_scalescenes"), help="training runs (checkpoints, logs)")
    parser.add_argument("--quick", action="store_true", help="a smoke test of a minute or two (not a result)")
    parser.add_argument("--jobs", type=int, default=2, help="training processes at once (one thread each)")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the seeds (default 0 1 2; quick: 0 1)")
    parser.add_argument("--iterations", type=int, help="override the training iterations per run")
    args = parser.parse_args(argv)
    params = dict(QUICK if args.quick else FULL)
    if args.seeds:
        params["seeds"] = tuple(args.seeds)
    if args.iterations is not None:
        if args.iterations < 1:
            parser.error("--iterations must be >= 1")
        params["iterations"] = args.iterations
    record = run_record("studies.scalescenes", list(argv) if argv is not None else sys.argv[1:])
    start = time.perf_counter()

    jobs = [
        Job(f"{title} seed {seed}", _job, (_settings(name, seed, params, args.work), params))
        for seed in params["seeds"]
        for title, name in sorted(MODELS.items(), key=lambda item: item[0] != "SAC-multiple")  # longest first
    ]
    results = run_jobs(jobs, args.jobs)
    runs = {title: {seed: results[f"{title} seed {seed}"] for seed in params["seeds"]} for title in MODELS}
    summary = _aggregate(runs)
    edges = bucket_edges(ScaleScenes(0, size=params["size"]).radius_range)
    args.out.mkdir(parents=True, exist_ok=True)
    picture = args.out / "scalescenes_predictions.png"
    _picture(args.work, params["seeds"][0], params, picture)
    doc = {
        "study": "scalescenes",
        "quick": args.quick,
        **record,
        "wall_seconds": time.perf_counter() - start,
        "settings": {**params, "models": MODELS, "test_seed": TEST_SEED,
                     "train": {k: v for k, v in _settings("MODEL", 0, params, args.work).items()
                               if k not in ("model", "seed", "out_dir")}},  # fmt: skip
        "bucket_edges_px": list(edges),
        "picture": picture.name,
        "summary": summary,
        "runs": runs,
    }
    write_json(doc, args.out / "scalescenes.json")
    print(summary_table(summary))
    print(f"size buckets (radius, px): small < {edges[0]:.1f} <= medium < {edges[1]:.1f} <= large")
    print(f"wrote {args.out / 'scalescenes.json'} and {picture} in {doc['wall_seconds']:.0f} s")
    return doc


if __name__ == "__main__":
    main()
