"""The official Cityscapes pixel-level evaluator run on a prediction folder, as installed (NumPy 2 included)."""

from __future__ import annotations

import contextlib
import fnmatch
import io
import os
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sacseg.evaluation.metrics import format_percent_table
from sacseg.utils.optional import import_optional

__all__ = ["RESULT_FILE", "cityscapes_official_eval", "format_official_results"]

RESULT_FILE = "resultPixelLevelSemanticLabeling.json"
_GT_SUFFIX = "_gtFine_labelIds.png"


@contextlib.contextmanager
def _numpy_in1d() -> Iterator[None]:
    """``np.in1d`` for the duration of the block when this NumPy lacks it (removed in 2.4).

    cityscapesscripts (2.2) still calls ``np.in1d`` for its instance-level scores; ``np.isin``
    computes the same for the flat arrays it passes. Nothing is left behind afterwards.
    """
    if hasattr(np, "in1d"):
        yield
        return
    np.in1d = np.isin  # type: ignore[attr-defined]
    try:
        yield
    finally:
        del np.in1d  # type: ignore[attr-defined]


def _ground_truths(gt_root: Path, split: str) -> list[Path]:
    folder = gt_root / "gtFine" / split
    if not folder.is_dir():
        raise FileNotFoundError(f"ground-truth folder not found: {folder} (expected GT_ROOT/gtFine/{split}/<city>/)")
    found = sorted(folder.glob(f"*/*{_GT_SUFFIX}"))
    if not found:
        raise FileNotFoundError(f"no *{_GT_SUFFIX} files in {folder}/<city>/")
    return found


def _predictions(pred_dir: Path, ground_truths: list[Path]) -> list[Path]:
    """The prediction of every ground-truth frame: the one PNG under ``pred_dir`` named ``<city>_<seq>_<frame>*.png``
    (the official ``getPrediction`` rule), with errors naming the frame instead of the evaluator's ``sys.exit``."""
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"prediction folder not found: {pred_dir}")
    pngs = [Path(root, name) for root, _, names in os.walk(pred_dir) for name in names if name.endswith(".png")]
    by_name: dict[str, list[Path]] = {}
    for path in pngs:
        by_name.setdefault(path.name, []).append(path)
    chosen = []
    for gt in ground_truths:
        frame = gt.name[: -len(_GT_SUFFIX)]
        matches = [p for name in fnmatch.filter(by_name, f"{frame}*.png") for p in by_name[name]]
        if len(matches) != 1:
            what = "no prediction" if not matches else f"{len(matches)} predictions ({', '.join(map(str, matches[:3]))})"
            raise ValueError(f"{what} for ground truth {gt} in {pred_dir}: expected one {frame}*.png")
        chosen.append(matches[0])
    return chosen


def _evaluator_args(module: types.ModuleType, export_file: Path, instance_scores: bool, quiet: bool) -> Any:
    """A fresh copy of the evaluator's settings object: its defaults, with paths pointing into our output only."""
    args = module.CArgs()
    vars(args).update(vars(module.args))  # avgClassSize, printRow, normalized, ...
    vars(args).update(
        exportFile=str(export_file), JSONOutput=True, quiet=quiet, evalInstLevelScore=instance_scores,
        evalPixelAccuracy=False, evalLabels=[], colorized=False, bold="", nocol="",
        predictionPath=None, predictionWalk=None,
    )  # fmt: skip
    return args


def cityscapes_official_eval(
    pred_dir: str | os.PathLike[str],
    gt_root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    split: str = "val",
    instance_scores: bool = True,
    quiet: bool = True,
) -> dict[str, Any]:
    """Score the labelId PNGs under ``pred_dir`` with ``cityscapesscripts``' ``evaluateImgLists``.

    Ground truth: every ``gt_root/gtFine/<split>/<city>/*_gtFine_labelIds.png`` (and, with
    ``instance_scores``, its ``_gtFine_instanceIds.png`` for the iIoU). Each frame's prediction is the
    one ``<city>_<seq>_<frame>*.png`` anywhere under ``pred_dir`` (``sacseg predict --format
    cityscapes`` writes them). The evaluator's JSON goes to ``out_dir/resultPixelLevelSemanticLabeling.json``
    and nothing is written elsewhere (the evaluator's own default is inside the data set folder).
    Its console report is printed unless ``quiet``.

    Returns the evaluator's result dict (``averageScoreClasses``, ``classScores``, ...: fractions,
    NaN for a class absent from prediction and ground truth). A missing or ambiguous prediction
    raises ValueError naming the frame; any other stop of the evaluator raises RuntimeError with its message.
    """
    evaluator = import_optional(
        "cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling", "cityscapes", "The official Cityscapes evaluation"
    )

    ground_truths = _ground_truths(Path(gt_root), split)
    predictions = _predictions(Path(pred_dir), ground_truths)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    args = _evaluator_args(evaluator, out / RESULT_FILE, instance_scores, quiet)
    report = io.StringIO()
    try:
        with _numpy_in1d(), contextlib.redirect_stdout(report):
            results = evaluator.evaluateImgLists([str(p) for p in predictions], [str(p) for p in ground_truths], args)
    except SystemExit as err:  # the evaluator's printError: "ERROR: ..." on stdout, then sys.exit(-1)
        errors = [line for line in report.getvalue().splitlines() if line.startswith("ERROR:")]
        raise RuntimeError(f"the official Cityscapes evaluator stopped: {errors[-1] if errors else err}") from None
    finally:
        if not quiet:
            print(report.getvalue(), end="")
    return results


def format_official_results(results: Mapping[str, Any]) -> str:
    """The evaluator's 19 class scores and its means as a table in percent (as ``sacseg eval`` prints)."""
    labels = import_optional("cityscapesscripts.helpers.labels", "cityscapes", "The official Cityscapes evaluation").labels
    names = [label.name for label in labels if not label.ignoreInEval]
    inst = results["classInstScores"]
    return format_percent_table(
        ("IoU", "iIoU"), [(name, (results["classScores"][name], inst[name])) for name in names],
        [
            ("mean", (results["averageScoreClasses"], results["averageScoreInstClasses"])),
            ("mean (categories)", (results["averageScoreCategories"], results["averageScoreInstCategories"])),
        ],
    )  # fmt: skip
