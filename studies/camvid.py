"""The CamVid study: the paper's protocol (Table 1) at CPU scale, every row from one trained baseline.

Stage 1 trains the FCN baseline (dilated ResNet-18, output stride 8; from scratch, or
``--backbone-weights`` a torchvision resnet18 state dict) with ``sacseg.training.train.train`` on
CamVid ``train`` at half resolution (240x180, a copy resized once into the work folder: images
bilinear with antialiasing, labels nearest) until its validation mIoU flattens (the poly schedule
decays to zero; the validation curve is in the JSON), validated on the half-resolution ``val`` copy;
its best checkpoint is the common start of stage 2, which runs with one schedule and number of
iterations for all: the control (the baseline continued), SAC-single-only and SAC-multiple-only (the
frozen baseline, only the regressors train, at a tenth of the lr), SAC-single and SAC-multiple
trained whole (regressors at a tenth of the lr), and their deformable rivals DCN-single and
DCN-multiple (``sacseg.models.DeformableFCN``, trained whole, offset/mask predictors at a tenth of the
lr). Seeds 0, 1, 2 for the control and the whole rows, and 3, 4, 5 too for the control and
SAC-multiple (``--more-seeds``, ``--more-rows``: its multi-scale lead, +0.6 +- 0.3 in three seeds, had
an interval holding 0), seed 0 for the "-only" rows. Every stage-2 row validates at iteration 0 too,
so the unchanged start can win the best-checkpoint selection. ``--ablations`` adds runs (``studies._study.ABLATIONS``): SAC
with its maps held at 1 trained like the control, the classifier's dilation, the regressors' lr.

Each selected checkpoint, and each run's last one (the end of the common schedule, the paper's own
protocol: a fixed number of iterations, no selection), is then evaluated on ``--eval-split`` of
``--data-root`` (default ``val``) and, with ``--test-root``, on ``test/`` + ``testannot/`` there,
against the full-resolution labels: the image is resized to half resolution (antialiased), the logits back to full resolution.
Single-scale, and multi-scale + flip (``sacseg.models.inference.predict``: scales 0.75, 1, 1.25 of
the half-resolution input, and their mirror images, softmax averaged). mIoU and pixel accuracy over
the 11 classes, void ignored; mean +- std over seeds and the paired difference to the control of the
same seed (mean +- std, each seed's, and the 95% interval of the mean: Student's t over the paired
differences). No number is selected on the test split.

Scale robustness: both checkpoints of every run are also scored single-scale on the eval split with
the image resized by each of ``RESCALE_FACTORS`` (0.5 to 2) times the half resolution they trained at,
the logits resized back to the full-resolution labels: mIoU by factor, paired to the control and
between each SAC row and its DCN rival, and each scale map's mean by factor (does the coefficient
follow the rescale?). Each is kept in its run's folder (``robustness[_last]_x<factor>.json``).

Resumable: runs live in the work folder (``--work``, default ``$SACSEG_STUDY_WORK/study_camvid`` or
``~/.cache/sacseg/study_camvid``); finished runs and their evaluations are reused, an interrupted
run resumes from its ``last.pt``. Writes ``<out>/camvid.json`` (every number, the stage-1 and
selected checkpoints) and ``<out>/camvid_predictions.png`` (the models at the end of the schedule);
prints the estimate first, then the tables.

    python -m studies.camvid --data-root ../shared/data/camvid --out docs/results   # ~4.2 h on 2 cores
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
from sacseg.data import CamVid
from sacseg.data.camvid import CLASSES
from sacseg.evaluation.evaluate import evaluate
from sacseg.evaluation.metrics import ConfusionMatrix
from sacseg.models.inference import predict_with_scales
from sacseg.options import InferenceOptions
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
    paired_differences,
    paired_stat,
    pct,
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

NUM_CLASSES = len(CLASSES)
MS_SCALES: tuple[float, ...] = (0.75, 1.0, 1.25)

# Seconds per training iteration, one thread, batch 8 of 176x176 crops of the half-resolution copy,
# validations included, two runs at once: measured in the full two-stage study of issue 27
# (docs/results/camvid.json, "Cost of a training iteration": each stage-2 run's seconds over the
# iterations it trained, mean over the seeds; the partner run varies, hence a spread of about 10%).
# Stage 1 runs alone on ``stage1_threads`` threads: two make a training step of the baseline 1.85
# times faster (2.77 s -> 1.47 s, one step of batch 8 at 176x176). Seconds to score one checkpoint on
# val, single + multi-scale + flip: 106-181 in that run, mean 143 (two at once); 2.3 times that on the
# 233 test images. Two workers: stage 1, then stage 2's runs longest first, each scored at its
# selected and its last checkpoint, single-scale, multi-scale + flip and at every rescale factor.
SECONDS_PER_ITERATION: dict[tuple[str, str], float] = {
    ("fcn_resnet18", "control"): 2.95, ("sac_single_resnet18", "whole"): 3.56,
    ("sac_multiple_resnet18", "whole"): 3.84, ("sac_single_resnet18", "only"): 1.41,
    ("sac_multiple_resnet18", "only"): 2.33, ("dcn_single_resnet18", "whole"): 3.52,
    ("dcn_multiple_resnet18", "whole"): 6.38,
}  # fmt: skip
STAGE1_SPEEDUP: dict[int, float] = {1: 1.0, 2: 1.85}
EVAL_SECONDS = 143.0
TEST_EVAL_FACTOR = 2.3
FULL: dict[str, Any] = {
    "factor": 0.5,
    "crop": 176,
    "batch": 8,
    "seeds": (0, 1, 2),
    # Six seeds in all for the control and MORE_SEED_ROWS (issue 27: SAC-multiple's lead under
    # multi-scale + flip, +0.6 +- 0.3 in three seeds); a finished run of the first three is reused.
    "more_seeds": (3, 4, 5),
    "stage1_iterations": 1000,
    "stage1_lr": 0.02,
    "stage1_validations": 10,
    "stage1_threads": 2,
    # Fine-tuning from trained weights: a quarter of stage 1's lr, decayed (poly) over one short schedule.
    "stage2_iterations": 200,
    "stage2_lr": 0.005,
    "limit": None,
}
QUICK: dict[str, Any] = {
    "factor": 0.25,
    "crop": 64,
    "batch": 4,
    "seeds": (0, 1),
    "more_seeds": (),
    "stage1_iterations": 4,
    "stage1_lr": 0.02,
    "stage1_validations": 2,
    "stage1_threads": 1,
    "stage2_iterations": 2,
    "stage2_lr": 0.005,
    "limit": 8,
}
#: The rows that run ``more_seeds`` too (with the control): the differences the study reports.
MORE_SEED_ROWS: tuple[str, ...] = ("SAC-multiple",)
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
    for name, options in (("single", InferenceOptions()), ("ms_flip", InferenceOptions(scales=MS_SCALES, flip=True))):
        start = time.perf_counter()
        results = evaluate(wrapped, loader, NUM_CLASSES, options=options).compute()
        scores[name] = {key: results[key] for key in ("miou", "pixel_acc", "mean_acc", "iou", "num_pixels")} | {
            "seconds": time.perf_counter() - start
        }
    return scores


def rescaled_scores(model: torch.nn.Module, factor: float, root: Path, split: str, p: Mapping[str, Any]) -> dict[str, Any]:
    """Single-scale scores of ``model`` on a split with each image resized to ``factor`` times the
    resolution it trained at (``p["factor"]`` of the full one), the logits resized back to the
    full-resolution labels; and each scale map's mean (over its positions, then the images)."""
    start = time.perf_counter()
    wrapped = Downscaled(model, p["factor"] * factor).eval()
    matrix = ConfusionMatrix(NUM_CLASSES)
    means: dict[str, list[float]] = {}
    with torch.no_grad():
        for image, target in DataLoader(_dataset(root, split, p["limit"]), batch_size=1):
            out = wrapped(image)
            matrix.update(out["out"].argmax(1), target)
            for name, scale in out["scales"].items():
                means.setdefault(name, []).append(float(scale.mean()))
    results = matrix.compute()
    return {key: results[key] for key in ("miou", "pixel_acc", "iou", "num_pixels")} | {
        "mean_scale": {name: sum(v) / len(v) for name, v in means.items()},
        "seconds": time.perf_counter() - start,
    }


def _job(settings: dict[str, Any], p: dict[str, Any], eval_root: str, eval_split: str, test_root: str | None) -> dict[str, Any]:
    """Train (or reuse) one run; score its selected checkpoint (``eval``, ``test``) and its last one, the
    end of the common schedule (``eval_last``, ``test_last``), on the eval split and the test root, and
    both on the eval split at every rescale factor (``robustness``, ``robustness_last``), or reuse those
    scores."""
    summary = train_once(settings)
    out = Path(settings["out_dir"])
    where = {"root": eval_root, "split": eval_split, "factor": p["factor"], "limit": p["limit"]}
    result: dict[str, Any] = {
        "train": summary,
        **rescaled_once(settings, summary, where,
                        lambda model, factor: rescaled_scores(model, factor, Path(eval_root), eval_split, p)),
    }  # fmt: skip
    for name, root, split in (("eval", eval_root, eval_split), ("test", test_root, "test")):
        if root is None:
            continue
        for suffix, checkpoint, iteration in (("", "best.pt", summary["best_iteration"]),
                                              ("_last", "last.pt", summary["iterations"])):  # fmt: skip
            if suffix and iteration == summary["best_iteration"]:
                result[name + suffix] = result[name]  # the selection kept the last checkpoint
                continue
            # The selected checkpoint's key keeps its name, so the scores already in work folders stay valid.
            key = {"root": root, "split": split, "factor": p["factor"], "limit": p["limit"], "ms_scales": list(MS_SCALES),
                   "best_iteration" if not suffix else "iteration": iteration}  # fmt: skip
            result[name + suffix] = evaluate_once(
                out, f"{name}{suffix}_scores", key,
                lambda root=root, split=split, checkpoint=checkpoint: evaluate_split(
                    load_trained(settings, checkpoint), Path(root), split, p["factor"], p["limit"]),
            )  # fmt: skip
    return result


def stage1_settings(p: Mapping[str, Any], data: Path, out_dir: Path, backbone_weights: str | None) -> dict[str, Any]:
    """Stage 1: the baseline on the reduced copy at ``data``, from scratch (or ``backbone_weights``)."""
    iterations = p["stage1_iterations"]
    return {
        "model": "fcn_resnet18",
        "num_classes": NUM_CLASSES,
        "output_stride": 8,
        "backbone_weights": backbone_weights,
        "upsample": "deconv",
        "dataset": "camvid",
        "data_root": str(data),
        "crop_size": p["crop"],
        "scale_min": 0.75,
        "scale_max": 1.25,
        "batch_size": p["batch"],
        "iterations": iterations,
        "lr": p["stage1_lr"],
        "schedule": "poly",
        # From scratch the first steps are large: the global gradient norm is clipped at 1, for every
        # run of both stages (one schedule).
        "grad_clip": 1.0,
        "seed": 0,
        "workers": 0,
        "precision": "fp32",
        "device": "cpu",
        # Stage 1 runs alone: the second core would otherwise idle.
        "threads": p["stage1_threads"],
        "val_every": max(1, iterations // p["stage1_validations"]),
        "checkpoint_every": max(1, iterations // p["stage1_validations"]),
        "log_every": max(1, iterations // 20),
        "out_dir": str(out_dir),
    }


def _score(run: Mapping[str, Any], key: str, mode: str, metric: str = "miou") -> float | None:
    return run[key][mode][metric] if key in run else None


def summary(runs: Mapping[str, Mapping[int, Mapping[str, Any]]], key: str) -> dict[str, Any]:
    """Mean +- std over seeds of mIoU and pixel accuracy (single, ms_flip), and paired differences to the control."""
    out: dict[str, Any] = {"rows": {}, "differences_to_control": {}}
    for title, per_seed in runs.items():
        out["rows"][title] = {
            f"{mode} {metric}": mean_std([_score(r, key, mode, metric) for r in per_seed.values()])
            for mode in ("single", "ms_flip") for metric in ("miou", "pixel_acc")
        } | {"seeds": list(per_seed)}  # fmt: skip
    for mode in ("single", "ms_flip"):
        for title, diff in paired_differences(runs, lambda r, mode=mode: _score(r, key, mode)).items():
            out["differences_to_control"].setdefault(title, {})[mode] = diff
    return out


def table(doc_summary: Mapping[str, Any], markdown: bool = False) -> str:
    """mIoU and pixel accuracy, single-scale and multi-scale + flip, mean +- std over seeds, and each
    row's paired difference to the control (mean +- std; per seed in brackets)."""
    headers = [
        "row (seeds)",
        "mIoU",
        "pixel acc",
        "mIoU MS+flip",
        "pixel acc MS+flip",
        "mIoU - control",
        "MS+flip mIoU - control",
    ]
    rows = []
    for title, entry in doc_summary["rows"].items():
        cells = [f"{title} ({', '.join(str(s) for s in entry['seeds'])})"]
        cells += [pct_stat(entry[k]) for k in ("single miou", "single pixel_acc", "ms_flip miou", "ms_flip pixel_acc")]
        for mode in ("single", "ms_flip"):
            cells.append(paired_stat(doc_summary["differences_to_control"].get(title, {}).get(mode)))
        rows.append(cells)
    return format_table(headers, rows, markdown)


def _picture(settings: Mapping[str, Mapping[str, Any]], root: Path, split: str, factor: float, path: Path) -> dict[str, Any]:
    """Eval-split images (spread over the split), the seed-0 predictions of the control, SAC-single and
    SAC-multiple at the end of the schedule (``last.pt``: where the selection kept stage 1's weights,
    the selected SAC models would show maps of 1), ground truth and the classifier scale maps; returns
    min / mean / max of every scale map over those images."""
    titles = tuple(settings)
    models = {t: Downscaled(load_trained(settings[t], "last.pt"), factor) for t in titles}
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
        name: {"min": min(v["min"]), "mean": sum(v["mean"]) / len(v["mean"]), "max": max(v["max"])} for name, v in stats.items()
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line, checked: data folders must exist before hours of training start."""
    parser = argparse.ArgumentParser(prog="python -m studies.camvid", description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", type=Path, required=True, help="CamVid folder with train/, trainannot/, val/, valannot/")
    parser.add_argument("--eval-split", default="val", choices=("train", "val", "test"), help="split of --data-root to report")
    parser.add_argument(
        "--test-root", type=Path, help="a folder with test/ and testannot/: also evaluate the selected checkpoints there"
    )
    parser.add_argument("--backbone-weights", help="a torchvision resnet18 state dict for stage 1 (default: from scratch)")
    parser.add_argument("--out", type=Path, default=Path("docs/results"), help="where camvid.json and the PNG go")
    parser.add_argument(
        "--work",
        type=Path,
        help="training runs and the resized copy (default: $SACSEG_STUDY_WORK/study_camvid or ~/.cache/sacseg/study_camvid)",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke test of a minute or two (not a result)")
    parser.add_argument("--jobs", type=int, default=2, help="training processes at once (one thread each)")
    parser.add_argument("--seeds", type=int, nargs="+", help="stage 2's seeds (default 0 1 2; quick: 0 1)")
    add_seed_options(parser, MORE_SEED_ROWS, FULL["more_seeds"])
    parser.add_argument(
        "--ablations", nargs="*", default=[], choices=sorted(ABLATIONS), help="extra runs, seed 0 (studies._study.ABLATIONS)"
    )
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
    if args.seeds:
        p["seeds"] = tuple(args.seeds)
    if args.more_seeds is not None:
        p["more_seeds"] = tuple(args.more_seeds)
    work = work_folder("study_camvid" + ("_quick" if args.quick else ""), args.work)
    plan = stage2_plan(p["seeds"], args.ablations, p["more_seeds"], args.more_rows)
    test_root = None if args.test_root is None else str(args.test_root)
    # Every run is scored twice, its selected checkpoint and the end of the schedule: single-scale and
    # multi-scale + flip (passes at 1 + 2 * sum(s^2) times a single pass's pixels), and at every rescale factor.
    single_pass = EVAL_SECONDS / (1 + 2 * sum(s * s for s in MS_SCALES))
    eval_seconds = 2 * (EVAL_SECONDS * (1 + (TEST_EVAL_FACTOR if test_root else 0)) + single_pass * rescale_cost())
    estimate = estimate_two_stage(p, plan, SECONDS_PER_ITERATION, eval_seconds, args.jobs, STAGE1_SPEEDUP[p["stage1_threads"]])
    print(f"estimated wall time on a quiet 2-core machine: {estimate / 60:.0f} min (work folder {work})", flush=True)
    start = time.perf_counter()
    name = f"camvid_x{p['factor']}" + (f"_first{p['limit']}" if p["limit"] else "")
    reduced = reduced_copy(args.data_root, ("train", "val"), p["factor"], work / name, p["limit"])
    stage1 = stage1_settings(p, reduced, work / "stage1_baseline_seed0", args.backbone_weights)
    common = (p, str(args.data_root), args.eval_split, test_root)
    two = run_two_stage(stage1, plan, p, work, _job, common, SECONDS_PER_ITERATION, args.jobs)
    runs, results = two.runs, two.results
    args.out.mkdir(parents=True, exist_ok=True)
    picture = args.out / "camvid_predictions.png"
    seed0 = p["seeds"][0]
    scale_stats = _picture({t: two.settings[(t, seed0)] for t in ("control", "SAC-single", "SAC-multiple")},
                           args.data_root, args.eval_split, p["factor"], picture)  # fmt: skip
    stages = two.record(private=("data_root", "out_dir"))
    robustness = robustness_summaries(runs)
    doc = {
        "study": "camvid",
        "protocol": "two-stage",
        "quick": args.quick,
        **record,
        "wall_seconds": time.perf_counter() - start,
        "estimated_wall_seconds": estimate,
        "work": str(work),
        "settings": {
            **p,
            "ms_scales": list(MS_SCALES),
            "eval_split": args.eval_split,
            "test_root": test_root,
            "backbone_weights": args.backbone_weights,
            "ablations": args.ablations,
            "more_rows": args.more_rows,
            "rescale_factors": list(RESCALE_FACTORS),
            "seconds_per_iteration": {f"{model} {kind}": v for (model, kind), v in SECONDS_PER_ITERATION.items()},
            "stage1": stages["stage1_settings"],
            "stage2": stages["stage2_settings"],
        },
        "stage1": stages["stage1"],
        "checkpoints": stages["checkpoints"],
        "picture": picture.name,
        "scale_stats_on_picture_images": scale_stats,
        "summary": {
            key + suffix: summary(runs, key + suffix)
            for key in ("eval", "test")
            if key == "eval" or test_root is not None
            for suffix in ("", "_last")
        },
        "robustness": robustness,
        "runs": runs,
    }
    write_json(doc, args.out / "camvid.json")
    s1 = results["stage 1"]
    print(f"stage 1 baseline: best val mIoU {pct(s1['train']['best_val_miou'])} at iteration {s1['train']['best_iteration']} "
          f"of {s1['train']['iterations']}; {args.eval_split} mIoU {pct(s1['eval']['single']['miou'])}")  # fmt: skip
    for key, where in (("eval", f"{args.eval_split} ({args.data_root})"), ("test", f"test ({test_root})")):
        if key in doc["summary"]:
            print(f"CamVid {where}, full-resolution labels, selected checkpoints:")
            print(table(doc["summary"][key]))
            print(f"the same, end of the schedule (iteration {p['stage2_iterations']}, no selection):")
            print(table(doc["summary"][key + "_last"]))
    print(f"{args.eval_split}, end of the schedule, mIoU at each input rescale factor (x1: {p['factor']} of full "
          "resolution), its paired difference to the control, scale maps' means:")  # fmt: skip
    print("\n".join([*robustness_tables(robustness["last"]), mean_scale_table(robustness["last"])]))
    print(f"wrote {args.out / 'camvid.json'} and {picture} in {doc['wall_seconds']:.0f} s (estimated {estimate:.0f} s)")
    return doc


if __name__ == "__main__":
    main()
