"""Tests for ``sacseg cityscapes-eval``: the official Cityscapes evaluator run as installed, on the real sample."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sacseg.checkpoint import atomic_torch_save
from sacseg.cli import main
from sacseg.config import TrainConfig
from sacseg.factory import build_model_from_config

pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")
FRAME = "frankfurt_000000_000294"


@pytest.fixture
def sample(shared_data: Path) -> Path:
    root = shared_data / "cityscapes_sample"
    if not (root / "gtFine" / "val").is_dir():
        pytest.skip(f"{root}/gtFine/val not found")
    return root


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_ground_truth_as_prediction_scores_100_and_writes_only_into_out(
    sample: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gt = sample / "gtFine" / "val" / "frankfurt" / f"{FRAME}_gtFine_labelIds.png"
    (tmp_path / "pred" / "frankfurt").mkdir(parents=True)
    shutil.copy(gt, tmp_path / "pred" / "frankfurt" / f"{FRAME}_pred_labelIds.png")
    before = _listing(sample)
    had_in1d = hasattr(np, "in1d")

    out = tmp_path / "out"
    assert main(["cityscapes-eval", str(tmp_path / "pred"), "--gt-root", str(sample), "--out", str(out)]) == 0
    printed = capsys.readouterr().out

    assert hasattr(np, "in1d") == had_in1d  # the NumPy 2 shim is gone again
    assert _listing(sample) == before and [p.name for p in out.iterdir()] == ["resultPixelLevelSemanticLabeling.json"]
    doc = json.loads((out / "resultPixelLevelSemanticLabeling.json").read_text())
    present = {"road", "sidewalk", "building", "fence", "pole", "traffic sign", "vegetation", "sky", "person", "car"}
    scores = {name: doc["classScores"][name] for name in present}
    assert scores == dict.fromkeys(present, 1.0) and doc["averageScoreClasses"] == 1.0
    assert math.isnan(doc["classScores"]["bus"])  # absent from both: left out of the mean
    assert doc["classInstScores"]["car"] == 1.0  # the iIoU ran (it is what needs np.in1d)
    assert "car                100.00  100.00" in printed and "mean               100.00  100.00" in printed
    assert f"results: {out / 'resultPixelLevelSemanticLabeling.json'}" in printed


def test_agrees_with_sacseg_eval_on_the_same_predictions(
    tiny_config: Callable[..., TrainConfig], sample: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An untrained network's outputs are all but constant, so make it one: "road" everywhere (some
    # IoU > 0, classes in the ground truth at 0, the others NaN). Predict its labelIds, score them both ways.
    cfg = tiny_config(tmp_path, num_classes=19, dataset="cityscapes", data_root=str(sample), val_split="val")
    model = build_model_from_config(cfg)
    torch.nn.init.zeros_(model.classifier.weight)
    torch.nn.init.zeros_(model.classifier.bias)
    model.classifier.bias.data[0] = 1.0
    checkpoint = tmp_path / "model.pt"
    atomic_torch_save({"model": model.state_dict(), "config": dataclasses.asdict(cfg)}, checkpoint)
    images = sample / "leftImg8bit" / "val"
    assert (
        main(["predict", "--checkpoint", str(checkpoint), str(images), "--out", str(tmp_path / "pred"), "--format", "cityscapes"])
        == 0
    )
    assert main(["eval", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "ours.json")]) == 0
    out = tmp_path / "official"
    assert main(["cityscapes-eval", str(tmp_path / "pred"), "--gt-root", str(sample), "--out", str(out)]) == 0
    printed = capsys.readouterr().out

    ours = json.loads((tmp_path / "ours.json").read_text())
    official = json.loads((out / "resultPixelLevelSemanticLabeling.json").read_text())
    assert ours["classes"]["road"]["iou"] > 0.1 and ours["classes"]["car"]["iou"] == 0.0 and ours["classes"]["bus"]["iou"] is None
    assert official["averageScoreClasses"] == pytest.approx(ours["miou"], abs=1e-9)
    for name, scores in ours["classes"].items():
        theirs = official["classScores"][name]
        assert (scores["iou"] is None and math.isnan(theirs)) or theirs == pytest.approx(scores["iou"], abs=1e-9), name
    # both print mIoU in percent, to the same digits ("mean" rows of sacseg eval's and the official table)
    means = [line for line in printed.splitlines() if line.startswith("mean ") and "categories" not in line]
    assert len(means) == 2 and all(f"{100 * ours['miou']:6.2f}" in line for line in means)


def test_a_missing_prediction_names_the_frame(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt_dir = tmp_path / "cs" / "gtFine" / "val" / "ulm"
    gt_dir.mkdir(parents=True)
    Image.fromarray(np.full((4, 8), 7, np.uint8)).save(gt_dir / "ulm_000001_000019_gtFine_labelIds.png")
    (tmp_path / "pred").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["cityscapes-eval", str(tmp_path / "pred"), "--gt-root", str(tmp_path / "cs"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"sacseg cityscapes-eval: error: no prediction for ground truth {gt_dir}/ulm_000001_000019_gtFine_labelIds.png" in err
    assert not (tmp_path / "out").exists()
