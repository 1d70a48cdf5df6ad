"""The studies' core computations (two-stage plan, resumable runs, paired differences, size buckets, scale vs size) and command lines."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks._report import format_table, write_json
from sacseg.config import config_from_dict
from sacseg.evaluation.metrics import ConfusionMatrix
from sacseg.models import build_model
from studies import camvid as study_camvid
from studies import scalescenes as study_scalescenes
from studies._study import (
    ABLATIONS,
    Downscaled,
    Job,
    estimate_wall,
    evaluate_once,
    mean_std,
    paired_differences,
    run_folder,
    run_jobs,
    stage2_plan,
    stage2_settings,
    train_once,
    validation_curve,
    work_folder,
)  # fmt: skip
from studies.make_results import _stage2_curves, render
from studies.scalescenes import (
    bucket_edges,
    bucket_index,
    bucket_targets,
    object_scales,
    partial_spearman,
    restricted_scores,
    spearman,
)


def test_bucket_edges_are_log_terciles() -> None:
    low, high = 2.0, 30.0
    e1, e2 = bucket_edges((low, high))
    assert math.log(e1) - math.log(low) == pytest.approx(math.log(high) - math.log(e2))
    assert math.log(e2) - math.log(e1) == pytest.approx(math.log(e1) - math.log(low))
    # Log-uniform draws fall in the three buckets about equally often.
    sizes = np.exp(np.random.default_rng(0).uniform(math.log(low), math.log(high), 30000))
    counts = np.bincount([bucket_index(s, (e1, e2)) for s in sizes], minlength=3)
    assert np.allclose(counts / counts.sum(), 1 / 3, atol=0.02)
    assert [bucket_index(s, (e1, e2)) for s in (low, e1 - 1e-9, e1, e2 - 1e-9, e2, high)] == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="radius_range"):
        bucket_edges((3.0, 3.0))


def _scene() -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """A 4x6 target with a small (id 1, class 3), a medium (id 2, class 4) and a large object (id 3, class 5)."""
    instances = torch.tensor(
        [[1, 0, 2, 2, 3, 3],
         [0, 0, 2, 2, 3, 3],
         [0, 0, 0, 0, 3, 3],
         [0, 0, 0, 0, 3, 3]]
    )  # fmt: skip
    target = torch.where(instances == 0, torch.tensor(2), instances + 2)  # road elsewhere
    records = [
        {"id": 1, "class": 3, "size": 2.0, "center": (0.0, 0.0)},
        {"id": 2, "class": 4, "size": 7.0, "center": (2.5, 0.5)},
        {"id": 3, "class": 5, "size": 20.0, "center": (4.5, 1.5)},
    ]
    return target, instances, records


def test_bucket_targets_keep_only_each_buckets_objects() -> None:
    target, instances, records = _scene()
    small, medium, large = bucket_targets(target, instances, records, (4.9, 12.2))
    assert (small != 255).sum() == 1 and small[0, 0] == 3
    assert (medium != 255).sum() == 4 and set(medium[medium != 255].tolist()) == {4}
    assert (large != 255).sum() == 8 and set(large[large != 255].tolist()) == {5}
    with pytest.raises(ValueError, match="differ in shape"):
        bucket_targets(target, instances[:2], records, (4.9, 12.2))


def test_restricted_scores_count_only_the_buckets_pixels() -> None:
    target, instances, records = _scene()
    pred = target.clone()
    pred[0, 0] = 2  # the small object is missed (labelled road)
    pred[0, 2] = 3  # one medium pixel called "stripes"
    pred[instances == 0] = 6  # background wrong everywhere: must not matter to any bucket
    matrices = [ConfusionMatrix(7) for _ in range(3)]
    for matrix, restricted in zip(matrices, bucket_targets(target, instances, records, (4.9, 12.2))):
        matrix.update(pred, restricted)
    small, medium, large = (restricted_scores(m) for m in matrices)
    assert small["pixel_acc"] == 0.0 and small["miou"] == 0.0
    assert medium["pixel_acc"] == pytest.approx(3 / 4)
    # Only class 4 has ground truth in the medium bucket: IoU 3 / (3 + 1 missed), the stray pixel's
    # class (3) is not averaged in.
    assert medium["miou"] == pytest.approx(3 / 4)
    assert large["pixel_acc"] == 1.0 and large["miou"] == 1.0


def test_object_scales_and_spearman() -> None:
    _target, instances, records = _scene()
    records = records + [{"id": 4, "class": 6, "size": 9.0, "center": (1.0, 3.0)}]  # fully occluded: no visible pixel
    growing = instances.double() * 0.5 + 0.25  # mean scale grows with the object id (= with size)
    rows = object_scales(instances, records, growing)
    assert [(s, a, y) for s, _, a, y in rows] == [(2.0, 1, 0.0), (7.0, 4, 0.5), (20.0, 8, 1.5)]
    assert [r[1] for r in rows] == pytest.approx([0.75, 1.25, 1.75])
    rho = spearman([r[0] for r in rows], [r[1] for r in rows])
    assert rho["rho"] == pytest.approx(1.0) and rho["objects"] == 3
    shrinking = object_scales(instances, records, 4.0 - growing)
    assert spearman([r[0] for r in shrinking], [r[1] for r in shrinking])["rho"] == pytest.approx(-1.0)
    assert spearman([1.0, 2.0], [1.0, 2.0])["rho"] is None  # too few objects
    assert spearman([1.0, 2.0, 3.0], [1.0, 1.0, 1.0])["rho"] is None  # a constant map has no ranks


def test_partial_spearman_removes_a_shared_cause() -> None:
    rng = np.random.default_rng(0)
    row = rng.uniform(0, 100, 400)
    size = row + rng.normal(0, 10, 400)  # larger lower down, as in the scenes
    by_row = row + rng.normal(0, 10, 400)  # a scale map that only learned the row
    assert spearman(size, by_row)["rho"] > 0.8
    assert abs(partial_spearman(size, by_row, row)["rho"]) < 0.1
    by_size = size + rng.normal(0, 1, 400)  # one that follows the size itself
    result = partial_spearman(size, by_size, row)
    assert result["rho"] > 0.8 and result["p"] < 1e-10 and result["objects"] == 400
    # Agrees with the textbook formula from the three pairwise Spearman correlations.
    r_xy, r_xz, r_yz = (spearman(a, b)["rho"] for a, b in ((size, by_row), (size, row), (by_row, row)))
    textbook = (r_xy - r_xz * r_yz) / math.sqrt((1 - r_xz**2) * (1 - r_yz**2))
    assert partial_spearman(size, by_row, row)["rho"] == pytest.approx(textbook, abs=1e-9)
    assert partial_spearman([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [3.0, 1.0, 2.0])["rho"] is None  # too few
    assert partial_spearman([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0])["rho"] is None
    with pytest.raises(ValueError, match="differ in number"):
        partial_spearman([1.0], [1.0, 2.0], [1.0])


def test_mean_std_table_and_json(tmp_path: Path) -> None:
    assert mean_std([0.5, 0.7, float("nan")]) == {"mean": pytest.approx(0.6), "std": pytest.approx(0.1414, abs=1e-4)}
    assert mean_std([0.5]) == {"mean": 0.5, "std": None}
    text = format_table(["a", "b"], [["x", "1.0"], ["longer", "22.5"]])
    assert text.splitlines()[2].startswith("x     ") and text.splitlines()[3].endswith("22.5")
    write_json({"v": float("nan"), "k": {1: [float("inf"), 2.0]}}, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == {"v": None, "k": {"1": [None, 2.0]}}


def test_run_jobs_order_and_errors() -> None:
    jobs = [Job("a", mean_std, ([1.0, 3.0],)), Job("b", mean_std, ([2.0],), after=("a",))]
    assert run_jobs(jobs, 1)["a"]["mean"] == 2.0
    with pytest.raises(ValueError, match="listed before"):
        run_jobs(jobs[::-1], 1)
    with pytest.raises(ValueError, match="unknown job"):
        run_jobs([Job("c", mean_std, ([1.0],), after=("zzz",))], 2)
    with pytest.raises(ValueError, match="in a cycle"):
        run_jobs([Job("x", mean_std, ([1.0],), after=("y",)), Job("y", mean_std, ([1.0],), after=("x",))], 2)


def test_run_jobs_in_worker_processes() -> None:
    jobs = [Job("a", mean_std, ([1.0, 3.0],)), Job("b", mean_std, ([2.0, 4.0],), after=("a",))]
    assert {k: v["mean"] for k, v in run_jobs(jobs, 2).items()} == {"a": 2.0, "b": 3.0}


def test_downscaled_runs_the_model_at_the_reduced_size() -> None:
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> dict:
            seen.append(tuple(x.shape[-2:]))
            return {"out": x[:, :2], "scales": {}}

    out = Downscaled(Probe(), 0.5)(torch.ones(1, 3, 36, 48))
    assert seen == [(18, 24)] and out["out"].shape == (1, 2, 36, 48)
    assert torch.allclose(out["out"], torch.ones(()))
    with pytest.raises(ValueError, match="factor"):
        Downscaled(Probe(), 0.0)


def test_baseline_and_sac_models_start_from_the_same_weights() -> None:
    """The studies rely on it: with the same seed, the layers the three models share are drawn alike."""
    states = []
    for name in ("fcn_resnet18", "sac_single_resnet18", "sac_multiple_resnet18"):
        torch.manual_seed(0)
        states.append(build_model(name, 7).state_dict())
    for state in states[1:]:
        shared = [k for k in states[0] if k in state]
        assert len(shared) == len(states[0])
        assert all(torch.equal(states[0][k], state[k]) for k in shared)


def _fake_camvid(root: Path, splits: dict[str, int], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, count in splits.items():
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (36, 48, 3), dtype=np.uint8)).save(root / split / f"f{i:03d}.png")
            Image.fromarray(rng.integers(0, 12, (36, 48), dtype=np.uint8)).save(root / f"{split}annot" / f"f{i:03d}.png")
    return root


def test_camvid_arguments_check_the_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _fake_camvid(tmp_path / "camvid", {"train": 2, "val": 2})
    tests = _fake_camvid(tmp_path / "held_out", {"test": 2})
    args = study_camvid.parse_args(["--data-root", str(data), "--test-root", str(tests)])
    assert args.eval_split == "val" and args.test_root == tests and args.jobs == 2
    with pytest.raises(SystemExit):
        study_camvid.parse_args(["--data-root", str(data), "--test-root", str(data)])  # no test/ there
    assert "--test-root" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        study_camvid.parse_args(["--data-root", str(data), "--eval-split", "test"])
    assert "test" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        study_camvid.parse_args(["--data-root", str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit):
        study_camvid.parse_args(["--data-root", str(data), "--backbone-weights", str(tmp_path / "r18.pth")])


def test_camvid_reduced_copy(tmp_path: Path) -> None:
    data = _fake_camvid(tmp_path / "camvid", {"train": 3, "val": 1})
    dest = study_camvid.reduced_copy(data, ("train", "val"), 0.5, tmp_path / "half", limit=2)
    assert sorted(p.name for p in (dest / "train").iterdir()) == ["f000.png", "f001.png"]
    with Image.open(dest / "trainannot" / "f000.png") as label, Image.open(data / "trainannot" / "f000.png") as full:
        small, big = np.array(label), np.array(full)
    assert small.shape == (18, 24)
    assert set(np.unique(small)) <= set(np.unique(big))  # nearest neighbour: no invented label value
    with Image.open(dest / "val" / "f000.png") as image:
        assert image.size == (24, 18)


@pytest.mark.slow
def test_camvid_quick_study_evaluates_the_test_root(tmp_path: Path) -> None:
    data = _fake_camvid(tmp_path / "camvid", {"train": 4, "val": 2})
    tests = _fake_camvid(tmp_path / "held_out", {"test": 3}, seed=1)
    doc = study_camvid.main(["--data-root", str(data), "--test-root", str(tests), "--quick", "--jobs", "1",
                             "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")])  # fmt: skip
    labelled = sum(int((np.array(Image.open(p)) != 11).sum()) for p in (tests / "testannot").iterdir())
    assert set(doc["runs"]) == {"control", "SAC-single-only", "SAC-multiple-only", "SAC-single", "SAC-multiple"}
    assert set(doc["runs"]["control"]) == {0, 1} and set(doc["runs"]["SAC-single-only"]) == {0}
    for per_seed in doc["runs"].values():
        for run in per_seed.values():
            assert run["test"]["single"]["num_pixels"] == labelled == run["test_last"]["single"]["num_pixels"]
            if run["train"]["best_iteration"] == run["train"]["iterations"]:
                assert run["eval_last"] == run["eval"]  # the selection kept the last checkpoint: scored once
            assert 0.0 <= run["eval"]["ms_flip"]["pixel_acc"] <= 1.0
            assert Path(run["train"]["checkpoint"]).is_file()
    assert Path(doc["checkpoints"]["stage 1"]).is_file() and doc["estimated_wall_seconds"] > 0
    assert set(doc["summary"]["test"]["differences_to_control"]["SAC-single"]["single"]["per_seed"]) == {0, 1}
    assert set(doc["summary"]) == {"eval", "eval_last", "test", "test_last"}
    # A run whose selection kept an earlier checkpoint has its last one scored apart, at the schedule's end.
    scored_apart = list((tmp_path / "work").rglob("eval_last_scores.json"))
    assert scored_apart  # stage 2 validates at iteration 0 too: some selections keep an earlier checkpoint
    for path in scored_apart:
        expected = 2 if path.parent.parent.name == "stage2" else 4  # QUICK: stage 2, stage 1 iterations
        assert json.loads(path.read_text())["key"]["iteration"] == expected, path
    saved = json.loads((tmp_path / "out" / "camvid.json").read_text())
    assert saved["quick"] is True and saved["settings"]["test_root"] == str(tests)
    assert (tmp_path / "out" / "camvid_predictions.png").is_file()
    assert "SMOKE TEST" in render(tmp_path / "out")


@pytest.mark.slow
def test_scalescenes_quick_study(tmp_path: Path) -> None:
    doc = study_scalescenes.main(["--quick", "--jobs", "1", "--seeds", "0", "--ablations", "held",
                                  "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")])  # fmt: skip
    run = doc["runs"]["SAC-multiple"][0]
    assert set(run["spearman"]) == set(run["partial_spearman_given_row"]) == {"classifier", "res5"}
    assert sum(b["num_pixels"] for b in run["buckets"].values()) > 0
    assert doc["runs"]["control"][0]["spearman"] == {}
    # SAC with its maps held at 1 computes the control's function: the same scores, to rounding.
    assert doc["runs"]["SAC-single held at 1"][0]["miou"] == pytest.approx(doc["runs"]["control"][0]["miou"], abs=0.01)
    assert "ScaleScenes" in render(tmp_path / "out")


def test_stage2_plan_rows_seeds_and_ablations() -> None:
    plan = stage2_plan((0, 1, 2), [])
    seeds = {title: sorted(seed for t, _, _, seed, _ in plan if t == title) for title, _, _, _, _ in plan}
    assert seeds == {"control": [0, 1, 2], "SAC-single-only": [0], "SAC-multiple-only": [0],
                     "SAC-single": [0, 1, 2], "SAC-multiple": [0, 1, 2]}  # fmt: skip
    with_ablations = stage2_plan((0, 1, 2), list(ABLATIONS))
    extra = [row for row in with_ablations if row not in plan]
    assert len(extra) == sum(len(v) for v in ABLATIONS.values()) and all(row[3] == 0 for row in extra)
    with pytest.raises(ValueError, match="unknown ablations"):
        stage2_plan((0,), ["bogus"])


def test_stage2_settings_start_every_row_from_stage_1(tmp_path: Path) -> None:
    stage1 = {**_TINY, "out_dir": str(tmp_path / "s1")}
    start = str(tmp_path / "s1" / "best.pt")
    control = stage2_settings(stage1, "fcn_resnet18", "control", 1, 8, 0.005, tmp_path / "c")
    only = stage2_settings(stage1, "sac_single_resnet18", "only", 0, 8, 0.005, tmp_path / "o")
    held = stage2_settings(
        stage1, "sac_single_resnet18", "whole", 0, 8, 0.005, tmp_path / "h", {"min_scale": 1.0, "max_scale": 1.0}
    )
    assert control["init_checkpoint"] == start and control["baseline_checkpoint"] is None and control["seed"] == 1
    assert only["baseline_checkpoint"] == start and only["init_checkpoint"] is None
    assert all(s["val_at_start"] and s["lr"] == 0.005 and s["iterations"] == 8 and s["scale_lr_mult"] == 0.1
               for s in (control, only, held))  # fmt: skip
    assert held["min_scale"] == held["max_scale"] == 1.0
    for settings in (control, only, held):
        config_from_dict(settings, source="test")  # valid training configs
    with pytest.raises(ValueError, match="kind"):
        stage2_settings(stage1, "fcn_resnet18", "other", 0, 8, 0.005, tmp_path / "x")


def test_paired_differences_and_estimate() -> None:
    runs = {"control": {0: 0.50, 1: 0.40}, "SAC": {0: 0.55, 1: 0.43}, "SAC-only": {0: 0.45}}
    diffs = paired_differences(runs, lambda r: r)
    assert diffs["SAC"]["per_seed"] == {0: pytest.approx(0.05), 1: pytest.approx(0.03)}
    assert diffs["SAC"]["mean"] == pytest.approx(0.04) and diffs["SAC"]["std"] == pytest.approx(0.01414, abs=1e-4)
    assert diffs["SAC-only"]["per_seed"] == {0: pytest.approx(-0.05)} and diffs["SAC-only"]["std"] is None
    assert "control" not in diffs
    assert estimate_wall(10.0, [3.0, 5.0, 4.0], 2) == 17.0  # 10 | 10, then 5, 4, 3 to the earlier-free worker
    assert estimate_wall(10.0, [], 2) == 10.0


def test_work_folder_and_run_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert work_folder("study_x", tmp_path / "given") == tmp_path / "given"
    monkeypatch.setenv("SACSEG_STUDY_WORK", str(tmp_path / "root"))
    assert work_folder("study_x", None) == tmp_path / "root" / "study_x"
    monkeypatch.delenv("SACSEG_STUDY_WORK")
    assert work_folder("study_x", None) == Path.home() / ".cache" / "sacseg" / "study_x"
    assert run_folder("SAC-single, regressor at lr", 0) == "sac-single_regressor_at_lr_seed0"
    assert run_folder("control", 2) == "control_seed2"


_TINY = {
    "model": "fcn_resnet18", "num_classes": 7, "dataset": "scale_scenes", "scale_scenes_train_images": 2,
    "scale_scenes_val_images": 1, "scale_scenes_size": 64, "crop_size": 48, "batch_size": 2, "iterations": 2,
    "lr": 0.01, "schedule": "poly", "workers": 0, "precision": "fp32", "device": "cpu", "threads": 1, "val_every": 1,
    "checkpoint_every": 1, "log_every": 1,
}  # fmt: skip


def test_train_once_reuses_a_finished_run_and_refuses_other_settings(tmp_path: Path) -> None:
    settings = {**_TINY, "out_dir": str(tmp_path / "run")}
    first = train_once(settings)
    assert first["iterations"] == 2 and Path(first["checkpoint"]).is_file()
    assert [it for it, _ in first["validations"]] == [1, 2] == [it for it, _ in validation_curve(tmp_path / "run")]
    stamp = (tmp_path / "run" / "last.pt").stat().st_mtime_ns
    assert train_once(settings) == first  # nothing trained again
    assert (tmp_path / "run" / "last.pt").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match=r"other settings \(lr differ\)"):
        train_once({**settings, "lr": 0.02})
    # An interrupted run (a last.pt, no summary) with other settings is refused too, not resumed.
    (tmp_path / "run" / "train_summary.json").unlink()
    with pytest.raises(ValueError, match=r"other settings \(iterations differ\)"):
        train_once({**settings, "iterations": 3})
    calls = []

    def compute() -> dict:
        calls.append(1)
        return {"miou": 0.5}

    assert evaluate_once(tmp_path / "run", "scores", {"split": "val"}, compute) == {"miou": 0.5}
    assert evaluate_once(tmp_path / "run", "scores", {"split": "val"}, compute) == {"miou": 0.5} and len(calls) == 1
    evaluate_once(tmp_path / "run", "scores", {"split": "test"}, compute)
    assert len(calls) == 2


def test_camvid_summary_and_table() -> None:
    def run(miou: float) -> dict:
        scores = {"miou": miou, "pixel_acc": 0.8}
        return {"eval": {"single": scores, "ms_flip": {**scores, "miou": miou + 0.01}}}

    runs = {"control": {0: run(0.40), 1: run(0.42)}, "SAC-single": {0: run(0.41), 1: run(0.45)}}
    result = study_camvid.summary(runs, "eval")
    assert result["rows"]["control"]["single miou"]["mean"] == pytest.approx(0.41)
    assert result["differences_to_control"]["SAC-single"]["ms_flip"]["mean"] == pytest.approx(0.02)
    text = study_camvid.table(result)
    assert "SAC-single (0, 1)" in text and "2.0 +- 1.4 (+1.0, +3.0)" in text


def test_stage2_curves_give_the_selection_and_the_last_validation_paired_to_the_control() -> None:
    def run(curve: list[tuple[int, float]]) -> dict[str, Any]:
        best = max(curve, key=lambda v: v[1])
        return {"train": {"validations": [list(v) for v in curve], "best_iteration": best[0]}}

    doc = {"runs": {
        "control": {"0": run([(0, 0.50), (100, 0.40), (200, 0.45)]), "1": run([(0, 0.50), (100, 0.42), (200, 0.47)])},
        "SAC-single": {"0": run([(0, 0.50), (100, 0.52), (200, 0.46)]), "1": run([(0, 0.50), (100, 0.41), (200, 0.46)])},
    }}  # fmt: skip
    table = "\n".join(_stage2_curves(doc))
    assert "| row (seeds) | it 0 | it 100 | it 200 | selected iteration | last - control |" in table
    assert "| control (0, 1) | 50.0 +- 0.0 | 41.0 +- 1.4 | 46.0 +- 1.4 | 0, 0 | - |" in table
    assert "| SAC-single (0, 1) | 50.0 +- 0.0 | 46.5 +- 7.8 | 46.0 +- 0.0 | 100, 0 | 0.0 +- 1.4 (+1.0, -1.0) |" in table
