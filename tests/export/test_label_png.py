"""Label-id PNG exports, and our mIoU against the official Cityscapes evaluator on real frames."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sacseg.data import Cityscapes
from sacseg.evaluation.metrics import ConfusionMatrix
from sacseg.export.label_png import cityscapes_result_path, export_cityscapes_prediction, save_label_png


def _perturb(target: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A plausible but wrong prediction: shifted labels, blocks of other classes, no ignore ids.

    Only classes of the frame are used, so classes absent from it stay absent from both sides
    (NaN IoU, left out of the mean).
    """
    present = torch.unique(target[target != 255])
    pred = torch.roll(target, shifts=(9, -14), dims=(0, 1))
    h, w = pred.shape
    for _ in range(40):
        bh, bw = (int(v) for v in torch.randint(40, 250, (2,), generator=generator))
        top = int(torch.randint(0, h - bh, (1,), generator=generator))
        left = int(torch.randint(0, w - bw, (1,), generator=generator))
        pred[top : top + bh, left : left + bw] = present[torch.randint(0, len(present), (1,), generator=generator)]
    ignored = pred == 255
    pred[ignored] = present[torch.randint(0, len(present), (int(ignored.sum()),), generator=generator)]
    return pred


def test_result_path_follows_the_evaluator_pattern(tmp_path: Path) -> None:
    path = cityscapes_result_path("/x/leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png", tmp_path)
    assert path == tmp_path / "frankfurt" / "frankfurt_000000_000294_pred_labelIds.png"
    with pytest.raises(ValueError, match="not a Cityscapes image name.*img_01.png"):
        cityscapes_result_path("img_01.png", tmp_path)


def test_label_png_round_trip(tmp_path: Path) -> None:
    labels = torch.randint(0, 19, (23, 41), generator=torch.Generator().manual_seed(0))
    to_label = torch.arange(19) + 7
    save_label_png(labels, tmp_path / "a.png", lambda t: to_label[t])
    with Image.open(tmp_path / "a.png") as img:
        assert img.mode == "L" and img.size == (41, 23)
        back = torch.from_numpy(np.array(img)).long()
    assert torch.equal(back, labels + 7)
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        save_label_png(labels + 250, tmp_path / "b.png")
    with pytest.raises(ValueError, match=r"\(2, 23, 41\)"):
        save_label_png(labels.expand(2, -1, -1), tmp_path / "c.png")


def test_label_png_in_16_bits_keeps_ids_above_255(tmp_path: Path) -> None:
    labels = torch.tensor([[0, 254, 255], [256, 299, 65535]])
    save_label_png(labels, tmp_path / "a.png", bits=16)
    with Image.open(tmp_path / "a.png") as img:
        assert img.mode.startswith("I")  # I;16 (or I): a 16-bit grey PNG
        back = np.array(img)
    np.testing.assert_array_equal(back, labels.numpy())
    with pytest.raises(ValueError, match=r"\[0, 65535\]"):
        save_label_png(labels + 1, tmp_path / "b.png", bits=16)


# every other frame by default (both cities); all 8 under `make test-slow`
@pytest.mark.parametrize("step", [2, pytest.param(1, marks=pytest.mark.slow)])
def test_miou_matches_official_cityscapes_evaluator(shared_data: Path, tmp_path: Path, monkeypatch, step: int) -> None:
    root = shared_data / "cityscapes_sample"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    monkeypatch.setenv("CITYSCAPES_EXPORT_DIR", str(tmp_path))
    evaluator = pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")
    # NumPy 2.4 removed np.in1d, which the evaluator still calls in some branches
    monkeypatch.setattr(evaluator.np, "in1d", evaluator.np.isin, raising=False)
    export_file = tmp_path / "resultPixelLevelSemanticLabeling.json"
    # args is read from the environment at import time, which may have happened elsewhere
    monkeypatch.setattr(evaluator.args, "exportFile", str(export_file))
    monkeypatch.setattr(evaluator.args, "evalInstLevelScore", False)
    monkeypatch.setattr(evaluator.args, "JSONOutput", True)
    monkeypatch.setattr(evaluator.args, "quiet", True)

    # our side: the loader's official labelId -> trainId table, the export's trainId -> labelId
    dataset = Cityscapes(root, "train")
    assert len(dataset) == 8
    generator = torch.Generator().manual_seed(0)
    cm = ConfusionMatrix(len(dataset.classes))
    predictions, ground_truths = [], []
    for index in range(0, len(dataset), step):
        image_path, label_path = dataset.pairs[index]
        _, target = dataset.load(index)
        target = target.long()
        pred = _perturb(target, generator)
        cm.update(pred, target)
        to_label_id = Cityscapes.train_id_to_label_id
        predictions.append(str(export_cityscapes_prediction(pred, image_path, tmp_path / "results", to_label_id)))
        ground_truths.append(str(label_path))

    try:
        official = evaluator.evaluateImgLists(predictions, ground_truths, evaluator.args)
    except SystemExit as exc:
        pytest.fail(f"the official evaluator exited: {exc}")
    ours = cm.compute()
    print(f"mIoU ours {ours['miou']:.10f}, official {official['averageScoreClasses']:.10f}")
    assert 0.2 < ours["miou"] < 0.9  # the perturbation leaves a non-trivial score
    assert any(np.isnan(iou) for iou in ours["iou"])  # and the NaN rule is exercised
    assert ours["miou"] == pytest.approx(official["averageScoreClasses"], abs=1e-6)
    for name, iou in zip(dataset.classes, ours["iou"]):
        theirs = official["classScores"][name]
        assert (np.isnan(iou) and np.isnan(theirs)) or iou == pytest.approx(theirs, abs=1e-9), name
    assert json.loads(export_file.read_text())["averageScoreClasses"] == pytest.approx(ours["miou"], abs=1e-6)
