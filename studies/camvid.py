"""The CamVid study: the five rows of the paper's Table 1 (baseline, the "-only" schemes, SAC-single/-multiple) at CPU scale.

A dilated ResNet-18 (output stride 8; from scratch, or ``--backbone-weights`` a torchvision
resnet18 state dict) trained with ``sacseg.engine.train.train`` on CamVid ``train`` at half
resolution (240x180, a copy resized once into ``--work``: images bilinear with antialiasing, labels
nearest), validated on the half-resolution ``val`` copy; the checkpoint with the best validation
mIoU is kept. Baseline, SAC-single and SAC-multiple start from the same weights (same seed: the
models draw their shared layers in the same order). SAC-single-only and SAC-multiple-only start from
the trained baseline's best checkpoint and train only their scale regressors
(``baseline_checkpoint`` -> ``sacseg.models.load_baseline_and_freeze``).

Each selected checkpoint is then evaluated on ``--eval-split`` of ``--data-root`` (default ``val``)
and, with ``--test-root``, on ``test/`` + ``testannot/`` there, against the full-resolution labels:
the image is resized to half resolution (antialiased), the logits back to full resolution.
Single-scale, and multi-scale + flip (``sacseg.engine.inference.predict``: scales 0.75, 1, 1.25 of
the half-resolution input, and their mirror images, softmax averaged). mIoU and pixel accuracy over
the 11 classes, void ignored.

Writes ``<out>/camvid.json`` (every number) and ``<out>/camvid_predictions.png``; prints the table.

    python -m studies.camvid --data-root ../shared/data/camvid --out docs/results   # ~65 min on 2 cores
    python -m studies.camvid --data-root ../shared/data/camvid --quick --out /tmp/cv  # smoke test
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Subset

from benchmarks._report import format_table, run_record, write_json
from studies._study import Downscaled, Job, load_trained, pct, run_jobs, train_and_load
from sacseg.data import CamVid
from sacseg.data.camvid import CLASSES
from sacseg.engine.evaluate import evaluate
from sacseg.engine.inference import predict_with_scales
from sacseg.viz import colorize, denormalize, save_report_grid

NUM_CLASSES = len(CLASSES)
# Table 1's rows, in its order: (title, model, trained from the baseline's weights).
VARIANTS: tuple[tuple[str, str, bool], ...] = (
    ("baseline", "fcn_resnet18", False),
    ("SAC-single-only", "sac_single_resnet18", True),
    ("SAC-multiple-only", "sac_multiple_resnet18", True),
    ("SAC-single", "sac_single_resnet18", False),
    ("SAC-multiple", "sac_multiple_resnet18", False),
)
MS_SCALES: tuple[float, ...] = (0.75, 1.0, 1.25)

# Sized from measured per-iteration costs on one core of this machine (batch 8, 176x176 crops,
# ResNet-18 at output stride 8, the default fast SAC path): baseline 2.45 s, SAC-single 2.45 s,
# SAC-multiple 3.2 s; two threads in one process are slower than one (3.8-5.4 s), so two
# single-threaded workers run side by side, assumed each at its single-process speed on a quiet
# machine. Worker 1: baseline then SAC-single (~63 min with validations every 175 iterations and the
# final single + 6-pass multi-scale evaluations); worker 2: SAC-multiple, then the two "-only" runs
# (350 iterations of the regressors only: 0.9 s and 1.85 s; ~62 min). --test-root adds ~11 min (233 images, every model).
FULL: dict[str, Any] = {
    "factor": 0.5,
    "crop": 176,
    "batch": 8,
    "iterations": 700,
    "only_iterations": 350,
    "val_every": 175,
    "lr": 0.02,
    "limit": None,
}
QUICK: dict[str, Any] = {
    "factor": 0.25,
    "crop": 64,
    "batch": 4,
    "iterations": 4,
    "only_iterations": 2,
    "val_every": 2,
    "lr": 0.02,
    "limit": 8,
}
_PICTURE_ROWS = 3


def reduced_copy(root: Path, splits: Sequence[str], factor: float, dest: Path, limit: int | None = None) -> Path:
    """A CamVid folder at ``dest`` with ``splits`` of ``root`` resized by ``factor`` (made once).

    Images are resized bilinearly with antialiasing (PIL), labels (raw values, void included) by
    nearest neighbour. ``limit`` keeps the first images of each split only. An existing complete
    copy is reused; the copy is written under a temporary name and renamed, so a crash leaves none.
    """
    if not 0 < factor <= 1:
        raise ValueError(f"factor must be in (0, 1], got {factor}")
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    for split in splits:
        pairs = CamVid(root, split).pairs[:limit]
        (tmp / split).mkdir()
        (tmp / f"{split}annot").mkdir()
        for image_path, label_path in pairs:
            with Image.open(image_path) as image, Image.open(label_path) as label:
                size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
                image.convert("RGB").resize(size, Image.Resampling.BILINEAR).save(tmp / split / image_path.name)
                label.resize(size, Image.Resampling.NEAREST).save(tmp / f"{split}annot" / label_path.name)
    os.replace(tmp, dest)
    return dest


def _dataset(root: Path, split: str, limit: int | None) -> torch.utils.data.Dataset:
    dataset = CamVid(root, split)
    return dataset if limit is None else Subset(dataset, range(min(limit, len(dataset))))


def evaluate_split(model: torch.nn.Module, root: Path, split: str, factor: float, limit: int | None) -> dict[str, Any]:
    """Single-scale and multi-scale + flip scores of ``model`` (run at ``factor`` of the resolution) on a split."""
    loader = DataLoader(_dataset(root, split, limit), batch_size=1)
    wrapped = Downscaled(model, factor)
    scores = {}
    for name, options in (("single", {}), ("ms_flip", {"scales": MS_SCALES, "flip": True})):
        start = time.perf_counter()
        results = evaluate(wrapped, loader, NUM_CLASSES, **options).compute()
        scores[name] = {
            key: results[key] for key in ("miou", "pixel_acc", "mean_acc", "iou", "num_pixels")
        } | {"seconds": time.perf_counter() - start}
    return scores


def _job(settings: dict[str, Any], p: dict[str, Any], eval_root: str, eval_split: str, test_root: str | None) -> dict[str, Any]:
    model, summary = train_and_load(settings)
    result = {"train": summary, "eval": evaluate_split(model, Path(eval_root), eval_split, p["factor"], p["limit"])}
    if test_root is not None:
        result["test"] = evaluate_split(model, Path(test_root), "test", p["factor"], p["limit"])
    return result


def _settings(title: str, model: str, from_baseline: bool, p: Mapping[str, Any], data: Path, work: Path,
              backbone_weights: str | None) -> dict[str, Any]:  # fmt: skip
    iterations = p["only_iterations"] if from_baseline else p["iterations"]
    return {
        "model": model,
        "num_classes": NUM_CLASSES,
        "output_stride": 8,
        "backbone_weights": None if from_baseline else backbone_weights,
        "baseline_checkpoint": str(work / "baseline" / "best.pt") if from_baseline else None,
        "upsample": "deconv",
        "dataset": "camvid",
        "data_root": str(data),
        "crop_size": p["crop"],
        "scale_min": 0.75,
        "scale_max": 1.25,
        "batch_size": p["batch"],
        "iterations": iterations,
        "lr": p["lr"],
        "schedule": "poly",
        # From scratch, the first steps throw scale coefficients onto the regressor's clip bound (0.25
        # or 4), where ReLU + clamp pass no gradient and SAC trains as a fixed-dilation model.
        # Clipping the global gradient norm at 1 (every model gets it) and, for the models trained
        # whole, the regressors at a tenth of the lr keep the maps inside the bounds
        # (studies/probe_scale_regressor.py). The "-only" runs train nothing but the regressors,
        # from a trained network: the run's lr is theirs.
        "grad_clip": 1.0,
        "scale_lr_mult": 1.0 if from_baseline else 0.1,
        "seed": 0,
        "workers": 0,
        "amp": False,
        "device": "cpu",
        "threads": 1,
        "val_every": min(p["val_every"], iterations),
        "checkpoint_every": iterations,
        "log_every": max(1, iterations // 20),
        "out_dir": str(work / title),
    }


def table(runs: Mapping[str, Mapping[str, Any]], key: str, markdown: bool = False) -> str:
    """Rows of Table 1: single-scale and multi-scale + flip mIoU and pixel accuracy on ``key`` ("eval"/"test")."""
    headers = ["model", "mIoU", "pixel acc", "mIoU MS+flip", "pixel acc MS+flip", "best val mIoU (half res, selection)"]
    rows = [
        [title, pct(r[key]["single"]["miou"]), pct(r[key]["single"]["pixel_acc"]), pct(r[key]["ms_flip"]["miou"]),
         pct(r[key]["ms_flip"]["pixel_acc"]), pct(r["train"]["best_val_miou"])]
        for title, r in runs.items()
    ]  # fmt: skip
    return format_table(headers, rows, markdown)


def _picture(settings: Mapping[str, Mapping[str, Any]], root: Path, split: str, factor: float, path: Path) -> dict[str, Any]:
    """Eval-split images (spread over the split), the three trained models' predictions, ground truth
    and the classifier scale maps; returns min / mean / max of every scale map over those images."""
    titles = ("baseline", "SAC-single", "SAC-multiple")
    models = {t: Downscaled(load_trained(settings[t]), factor) for t in titles}
    dataset = CamVid(root, split)
    rows = []
    stats: dict[str, dict[str, list[float]]] = {}
    for index in sorted({len(dataset) * k // _PICTURE_ROWS for k in range(_PICTURE_ROWS)}):
        image, target = dataset[index]
        cells: list[Any] = [denormalize(image)]
        maps = []
        for title, model in models.items():
            probs, scales = predict_with_scales(model, image[None])
            cells.append(colorize(probs.argmax(1)[0], dataset.palette))
            for name, scale in scales.items():
                stats.setdefault(f"{title} {name}", {"min": [], "mean": [], "max": []})
                for key in ("min", "mean", "max"):
                    stats[f"{title} {name}"][key].append(float(getattr(scale, key)()))
            if "classifier" in scales:
                maps.append(scales["classifier"][0, 0])
        rows.append(cells + [colorize(target, dataset.palette)] + maps)
    save_report_grid(rows, path, ["image", *titles, "ground truth", "SAC-single scale", "SAC-multiple scale"])
    return {
        name: {"min": min(v["min"]), "mean": sum(v["mean"]) / len(v["mean"]), "max": max(v["max"])}
        for name, v in stats.items()
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line, checked: data folders must exist before hours of training start."""
    parser = argparse.ArgumentParser(prog="python -m studies.camvid", description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", type=Path, required=True, help="CamVid folder with train/, trainannot/, val/, valannot/")
    parser.add_argument("--eval-split", default="val", choices=("train", "val", "test"), help="split of --data-root to report")
    parser.add_argument("--test-root", type=Path, help="a folder with test/ and testannot/: also evaluate the selected checkpoints there")
    parser.add_argument("--backbone-weights", help="a torchvision resnet18 state dict (default: from scratch)")
    parser.add_argument("--out", type=Path, default=Path("docs/results"), help="where camvid.json and the PNG go")
    parser.add_argument("--work", type=Path, default=Path("runs/study_camvid"), help="training runs and the resized copy")
    parser.add_argument("--quick", action="store_true", help="a smoke test of a minute or two (not a result)")
    parser.add_argument("--jobs", type=int, default=2, help="training processes at once (one thread each)")
    args = parser.parse_args(argv)
    for split in ("train", "val", args.eval_split):
        try:
            CamVid(args.data_root, split)
        except (FileNotFoundError, ValueError) as err:
            parser.error(f"--data-root {args.data_root}: {err}")
    if args.test_root is not None:
        try:
            CamVid(args.test_root, "test")
        except (FileNotFoundError, ValueError) as err:
            parser.error(f"--test-root {args.test_root}: {err}")
    if args.backbone_weights is not None and not Path(args.backbone_weights).is_file():
        parser.error(f"--backbone-weights: file not found: {args.backbone_weights}")
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    record = run_record("studies.camvid", list(argv) if argv is not None else sys.argv[1:])
    p = dict(QUICK if args.quick else FULL)
    start = time.perf_counter()
    name = f"camvid_x{p['factor']}" + (f"_first{p['limit']}" if p["limit"] else "")
    reduced = reduced_copy(args.data_root, ("train", "val"), p["factor"], args.work / name, p["limit"])
    settings = {
        title: _settings(title, model, from_baseline, p, reduced, args.work, args.backbone_weights)
        for title, model, from_baseline in VARIANTS
    }
    test_root = None if args.test_root is None else str(args.test_root)
    order = ("SAC-multiple", "baseline", "SAC-single", "SAC-single-only", "SAC-multiple-only")  # longest first
    jobs = [
        Job(title, _job, (settings[title], p, str(args.data_root), args.eval_split, test_root),
            after=("baseline",) if title.endswith("-only") else ())
        for title in order
    ]  # fmt: skip
    results = run_jobs(jobs, args.jobs)
    runs = {title: results[title] for title, _, _ in VARIANTS}
    args.out.mkdir(parents=True, exist_ok=True)
    picture = args.out / "camvid_predictions.png"
    scale_stats = _picture(settings, args.data_root, args.eval_split, p["factor"], picture)
    doc = {
        "study": "camvid",
        "quick": args.quick,
        **record,
        "wall_seconds": time.perf_counter() - start,
        "settings": {**p, "ms_scales": list(MS_SCALES), "eval_split": args.eval_split,
                     "test_root": test_root, "backbone_weights": args.backbone_weights,
                     "train": {t: {k: v for k, v in s.items() if k not in ("data_root", "out_dir", "baseline_checkpoint")}
                               for t, s in settings.items()}},  # fmt: skip
        "picture": picture.name,
        "scale_stats_on_picture_images": scale_stats,
        "runs": runs,
    }
    write_json(doc, args.out / "camvid.json")
    print(f"CamVid {args.eval_split} ({args.data_root}), full-resolution labels:")
    print(table(runs, "eval"))
    if test_root is not None:
        print(f"CamVid test ({test_root}):")
        print(table(runs, "test"))
    print(f"wrote {args.out / 'camvid.json'} and {picture} in {doc['wall_seconds']:.0f} s")
    return doc


if __name__ == "__main__":
    main()
