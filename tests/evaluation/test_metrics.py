"""ConfusionMatrix against hand counts, the Cityscapes NaN rule, text/JSON output, distributed reduce."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sacseg.evaluation.metrics import ConfusionMatrix, format_results, save_results_json

# 4 classes; class 3 never appears in target or prediction. 255 = ignore.
TARGET = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
PRED = torch.tensor([[0, 1, 1, 1], [2, 0, 3, 1]])  # the two ignored pixels predict 3 and 1
# rows = ground truth, columns = prediction, ignored pixels left out
HAND = torch.tensor([[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])


def test_matrix_matches_hand_count() -> None:
    cm = ConfusionMatrix(4)
    cm.update(PRED, TARGET)
    assert torch.equal(cm.matrix, HAND)
    cm.update(PRED[None], TARGET[None])  # [N, H, W] accumulates
    assert torch.equal(cm.matrix, 2 * HAND)
    cm.reset()
    assert int(cm.matrix.sum()) == 0


def test_scores_and_absent_class_is_nan_and_skipped() -> None:
    cm = ConfusionMatrix(4)
    cm.update(PRED, TARGET)
    r = cm.compute()
    # class 0: tp 1, fn 1, fp 1 -> 1/3; class 1: tp 2, fp 1 -> 2/3; class 2: tp 1, fn 1 -> 1/2
    expected_iou = [1 / 3, 2 / 3, 1 / 2]
    assert r["iou"][:3] == pytest.approx(expected_iou)
    assert math.isnan(r["iou"][3]) and math.isnan(r["acc"][3])
    assert r["acc"][:3] == pytest.approx([1 / 2, 1.0, 1 / 2])
    assert r["miou"] == pytest.approx(sum(expected_iou) / 3)
    assert r["mean_acc"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    assert r["pixel_acc"] == pytest.approx(4 / 6)
    assert r["num_pixels"] == 6


def test_predicted_only_class_scores_zero_not_nan() -> None:
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([[0, 2]]), torch.tensor([[0, 0]]))
    r = cm.compute()
    assert r["iou"][2] == 0.0 and math.isnan(r["acc"][2])
    assert math.isnan(r["iou"][1])
    assert r["miou"] == pytest.approx((0.5 + 0.0) / 2)


def test_empty_matrix_gives_nan_means() -> None:
    r = ConfusionMatrix(2).compute()
    assert math.isnan(r["miou"]) and math.isnan(r["pixel_acc"]) and math.isnan(r["mean_acc"])


def test_bad_inputs_raise() -> None:
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        cm.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"target .*\[5\]"):
        cm.update(torch.zeros(2, 2, dtype=torch.long), torch.tensor([[0, 5], [255, 1]]))
    with pytest.raises(ValueError, match="target .*-1"):
        cm.update(torch.zeros(1, 2, dtype=torch.long), torch.tensor([[0, -1]]))
    with pytest.raises(ValueError, match="pred .*7"):
        cm.update(torch.tensor([[7, 0]]), torch.tensor([[0, 0]]))
    with pytest.raises(ValueError, match="dtype"):
        cm.update(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="ignore_index"):
        ConfusionMatrix(3, ignore_index=1)


def test_format_and_json(tmp_path: Path) -> None:
    cm = ConfusionMatrix(4)
    cm.update(PRED, TARGET)
    r = cm.compute()
    names = ["road", "car", "sky", "train"]
    text = format_results(r, names)
    assert "car" in text and "66.67" in text and "nan" in text.splitlines()[5]
    path = tmp_path / "sub" / "results.json"
    save_results_json(r, path, names, extra={"checkpoint": "x.pt"})
    doc = json.loads(path.read_text())
    assert doc["miou"] == pytest.approx(r["miou"])
    assert doc["classes"]["train"] == {"iou": None, "acc": None}
    assert doc["classes"]["car"]["iou"] == pytest.approx(2 / 3)
    assert doc["meta"] == {"checkpoint": "x.pt"}
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]  # no temp file left
    with pytest.raises(ValueError, match="3 class names"):
        format_results(r, names[:3])


def _reduce_worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        cm = ConfusionMatrix(3)
        # rank 0 sees one pixel of class 0 right, rank 1 two pixels of class 2 predicted as 1
        if rank == 0:
            cm.update(torch.tensor([[0]]), torch.tensor([[0]]))
        else:
            cm.update(torch.tensor([[1, 1]]), torch.tensor([[2, 2]]))
        cm.reduce()
        torch.save(cm.matrix, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two processes start and join a gloo group
def test_reduce_sums_over_two_gloo_processes(tmp_path: Path) -> None:
    mp.spawn(_reduce_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    expected = torch.tensor([[1, 0, 0], [0, 0, 0], [0, 2, 0]])
    for rank in (0, 1):
        assert torch.equal(torch.load(tmp_path / f"rank{rank}.pt"), expected)


def test_reduce_without_distributed_is_noop() -> None:
    cm = ConfusionMatrix(4)
    cm.update(PRED, TARGET)
    cm.reduce()
    assert torch.equal(cm.matrix, HAND)
