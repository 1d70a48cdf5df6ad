"""The studies' core computations (two-stage plan, seeds, resumable runs and evaluations, paired differences and their
intervals, size buckets, scale vs size, scale robustness, the results page's new parts) and command lines."""

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
from studies import _study
from studies import camvid as study_camvid
from studies import scalescenes as study_scalescenes
from studies._study import (
    ABLATIONS,
    RESCALE_FACTORS,
    Downscaled,
    Job,
    estimate_wall,
    evaluate_once,
    factor_difference_table,
    mean_scale_table,
    mean_std,
    paired_differences,
    paired_stat,
    rescale_cost,
    rescaled_once,
    robustness_summaries,
    robustness_tables,
    run_folder,
    run_jobs,
    scale_slope,
    stage2_plan,
    stage2_settings,
    t_interval,
    train_once,
    validation_curve,
    work_folder,
)  # fmt: skip
from studies.make_results import _claims, _costs, _robustness, _seeds, _stage2_curves, _training_seconds, render
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


@pytest.mark.slow  # worker processes that import torch
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
    assert set(doc["runs"]) == {"control", "SAC-single-only", "SAC-multiple-only", "SAC-single", "SAC-multiple",
                                "DCN-single", "DCN-multiple"}  # fmt: skip
    assert set(doc["runs"]["control"]) == {0, 1} and set(doc["runs"]["SAC-single-only"]) == {0}
    for per_seed in doc["runs"].values():
        for run in per_seed.values():
            assert run["test"]["single"]["num_pixels"] == labelled == run["test_last"]["single"]["num_pixels"]
            if run["train"]["best_iteration"] == run["train"]["iterations"]:
                assert run["eval_last"] == run["eval"]  # the selection kept the last checkpoint: scored once
            assert 0.0 <= run["eval"]["ms_flip"]["pixel_acc"] <= 1.0
            assert Path(run["train"]["checkpoint"]).is_file()
            assert list(run["robustness_last"]) == [f"{f:g}" for f in RESCALE_FACTORS]
            assert run["robustness_last"]["1"]["num_pixels"] == run["eval_last"]["single"]["num_pixels"]
    assert Path(doc["checkpoints"]["stage 1"]).is_file() and doc["estimated_wall_seconds"] > 0
    assert set(doc["summary"]["test"]["differences_to_control"]["SAC-single"]["single"]["per_seed"]) == {0, 1}
    assert set(doc["summary"]) == {"eval", "eval_last", "test", "test_last"}
    assert set(doc["robustness"]["last"]["rivals"]) == {"SAC-single - DCN-single", "SAC-multiple - DCN-multiple"}
    assert set(doc["robustness"]["last"]["rows"]["DCN-multiple"]["scale_slope"]) == {"classifier", "res5"}
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
    assert set(doc["runs"]["DCN-multiple"][0]["spearman"]) == {"classifier", "res5"}  # DCN's isotropic stretch
    assert set(doc["robustness"]["selected"]["rows"]["SAC-multiple"]["by_factor"]["0.5"]["scores"]) == {
        "miou", "pixel_acc", "small miou", "medium miou", "large miou"
    }  # fmt: skip
    # SAC with its maps held at 1 computes the control's function: the same scores, to rounding.
    assert doc["runs"]["SAC-single held at 1"][0]["miou"] == pytest.approx(doc["runs"]["control"][0]["miou"], abs=0.01)
    page = render(tmp_path / "out")
    assert "ScaleScenes" in page and "![mIoU against the input rescale factor](out/scalescenes_robustness.png)" in page


def _plan_seeds(plan: list) -> dict[str, list[int]]:
    return {title: sorted(seed for t, _, _, seed, _ in plan if t == title) for title, _, _, _, _ in plan}


def test_stage2_plan_rows_seeds_and_ablations() -> None:
    plan = stage2_plan((0, 1, 2), [])
    assert _plan_seeds(plan) == {"control": [0, 1, 2], "SAC-single-only": [0], "SAC-multiple-only": [0],
                                 "SAC-single": [0, 1, 2], "SAC-multiple": [0, 1, 2], "DCN-single": [0, 1, 2],
                                 "DCN-multiple": [0, 1, 2]}  # fmt: skip
    assert {(t, m, k) for t, m, k, _, _ in plan if t.startswith("DCN")} == {
        ("DCN-single", "dcn_single_resnet18", "whole"), ("DCN-multiple", "dcn_multiple_resnet18", "whole")
    }  # fmt: skip
    with_ablations = stage2_plan((0, 1, 2), list(ABLATIONS))
    extra = [row for row in with_ablations if row not in plan]
    assert len(extra) == sum(len(v) for v in ABLATIONS.values()) and all(row[3] == 0 for row in extra)
    with pytest.raises(ValueError, match="unknown ablations"):
        stage2_plan((0,), ["bogus"])


def test_stage2_plan_adds_seeds_to_the_control_and_the_rows_named() -> None:
    plan = stage2_plan((0, 1, 2), ["held"], (3, 4, 5), ["SAC-multiple"])
    seeds = _plan_seeds(plan)
    assert seeds["control"] == seeds["SAC-multiple"] == [0, 1, 2, 3, 4, 5]  # the control pairs with every seed
    assert seeds["SAC-single"] == seeds["DCN-multiple"] == [0, 1, 2] and seeds["SAC-single-only"] == [0]
    assert seeds["SAC-single held at 1"] == [0]
    assert _plan_seeds(stage2_plan((0, 1, 2), [], (3, 4, 5), [])) == _plan_seeds(stage2_plan((0, 1, 2), []))
    # Every run of the three-seed plan is in it, under the same title and seed (so the same folder): reused.
    assert {row[:4] for row in stage2_plan((0, 1, 2), ["held"])} <= {row[:4] for row in plan}
    with pytest.raises(ValueError, match="more_rows must be rows trained whole"):
        stage2_plan((0, 1, 2), [], (3,), ["SAC-single-only"])
    with pytest.raises(ValueError, match="repeat seeds"):
        stage2_plan((0, 1, 2), [], (2, 3), ["SAC-single"])


def test_t_interval_and_paired_stat() -> None:
    low, high = t_interval([0.01, 0.03])
    half = 12.7062 * math.sqrt(2e-4) / math.sqrt(2)  # t(0.975, 1) * std / sqrt(n)
    assert low == pytest.approx(0.02 - half, abs=1e-5) and high == pytest.approx(0.02 + half, abs=1e-5)
    six = [0.006, 0.003, 0.007, 0.004, 0.008, 0.005]
    low, high = t_interval(six)
    assert high - low == pytest.approx(2 * 2.5706 * mean_std(six)["std"] / math.sqrt(6), rel=1e-4)
    assert t_interval([0.5]) is None and t_interval([0.5, float("nan")]) is None
    diff = paired_differences({"control": {0: 0.5, 1: 0.4}, "SAC": {0: 0.51, 1: 0.43}}, lambda r: r)["SAC"]
    assert diff["ci95"] == pytest.approx(t_interval([0.01, 0.03]))
    assert paired_stat(diff) == "2.0 +- 1.4 [-10.7, +14.7] (+1.0, +3.0)"
    # An entry written before intervals existed gets one from its seeds; one seed has none.
    assert paired_stat({k: v for k, v in diff.items() if k != "ci95"}) == paired_stat(diff)
    assert paired_stat({"per_seed": {0: 0.01}, "mean": 0.01, "std": None}) == "1.0 (+1.0)"


def _rescaled(miou: float, scale: float | None, buckets: bool = True) -> dict[str, Any]:
    """A fake :func:`rescaled_once` result: mIoU ``miou`` at factor 1, falling off by 0.1 per octave away
    from it; a scale map whose mean is ``scale`` times the factor (none when ``scale`` is None)."""
    out = {}
    for factor in (0.5, 1.0, 2.0):
        value = miou - 0.1 * abs(math.log2(factor))
        entry: dict[str, Any] = {
            "miou": value,
            "pixel_acc": 0.9,
            "mean_scale": {} if scale is None else {"classifier": scale * factor},
        }
        if buckets:
            entry["buckets"] = {b: {"miou": value - 0.2, "pixel_acc": 0.5} for b in study_scalescenes.BUCKETS}
        out[f"{factor:g}"] = entry
    return out


def _robustness_runs() -> dict[str, dict[int, dict[str, Any]]]:
    def run(miou: float, scale: float | None) -> dict[str, Any]:
        rescaled = _rescaled(miou, scale)
        return {"robustness": rescaled, "robustness_last": rescaled, "train": {"train_seconds": 80.0, "iterations": 100}}

    return {
        "control": {0: run(0.50, None), 1: run(0.40, None), 2: run(0.45, None)},
        "SAC-single": {0: run(0.52, 1.0), 1: run(0.43, 1.2), 2: run(0.46, 0.8)},
        "DCN-single": {0: run(0.51, 1.0), 1: run(0.41, 1.0), 2: run(0.45, 1.0)},
    }


def test_robustness_summary_rows_differences_rivals_and_slopes() -> None:
    summary = robustness_summaries(_robustness_runs())["last"]
    rows, control, rivals = summary["rows"], summary["differences_to_control"], summary["rivals"]
    assert list(rows) == ["control", "SAC-single", "DCN-single"] and rows["SAC-single"]["seeds"] == [0, 1, 2]
    assert list(rows["control"]["by_factor"]) == ["0.5", "1", "2"]
    assert rows["control"]["by_factor"]["2"]["scores"]["miou"]["mean"] == pytest.approx(0.35)
    assert rows["control"]["by_factor"]["1"]["scores"]["small miou"]["mean"] == pytest.approx(0.25)
    assert rows["SAC-single"]["by_factor"]["2"]["mean_scale"]["classifier"]["mean"] == pytest.approx(2.0)
    assert rows["control"]["scale_slope"] == {}
    assert rows["SAC-single"]["scale_slope"]["classifier"]["mean"] == pytest.approx(1.0)  # follows the rescale
    diff = control["SAC-single"]["0.5"]["miou"]
    assert diff["per_seed"] == {0: pytest.approx(0.02), 1: pytest.approx(0.03), 2: pytest.approx(0.01)}
    assert diff["ci95"] == pytest.approx(t_interval([0.02, 0.03, 0.01]))
    assert set(control) == {"SAC-single", "DCN-single"} and set(control["SAC-single"]["1"]) == {
        "miou", "pixel_acc", "small miou", "medium miou", "large miou"
    }  # fmt: skip
    assert list(rivals) == ["SAC-single - DCN-single"]
    assert rivals["SAC-single - DCN-single"]["1"]["miou"]["per_seed"] == {
        0: pytest.approx(0.01), 1: pytest.approx(0.02), 2: pytest.approx(0.01)
    }  # fmt: skip
    # A row without rescaled scores (a study resumed from older runs) is left out, not failed on.
    partial = {**_robustness_runs(), "SAC-multiple": {0: {"train": {}}}}
    assert "SAC-multiple" not in robustness_summaries(partial)["selected"]["rows"]


def test_scale_slope() -> None:
    def by_factor(means: list[float]) -> dict[str, Any]:
        return {f"{f:g}": {"mean_scale": {"m": m}} for f, m in zip((0.5, 1.0, 2.0), means)}

    assert scale_slope(by_factor([0.5, 1.0, 2.0]), "m") == pytest.approx(1.0)
    assert scale_slope(by_factor([1.1, 1.1, 1.1]), "m") == pytest.approx(0.0)
    assert scale_slope(by_factor([2.0, 1.0, 0.5]), "m") == pytest.approx(-1.0)
    assert scale_slope(by_factor([0.0, 1.0, 2.0]), "m") is None


def test_robustness_tables() -> None:
    summary = robustness_summaries(_robustness_runs())["last"]
    text = "\n".join(robustness_tables(summary, markdown=True))
    assert "| row (seeds) | x0.5 | x1 | x2 |" in text
    assert "| control (0, 1, 2) | 35.0 +- 5.0 | 45.0 +- 5.0 | 35.0 +- 5.0 |" in text
    assert "| row - control | x0.5 | x1 | x2 |" in text and "| SAC - DCN | x0.5 | x1 | x2 |" in text
    assert "| SAC-single | 2.0 +- 1.0 [-0.5, +4.5] (+2.0, +3.0, +1.0) |" in text
    small = "\n".join(robustness_tables(summary, "small miou", markdown=True))
    assert "| control (0, 1, 2) | 15.0 +- 5.0 | 25.0 +- 5.0 | 15.0 +- 5.0 |" in small
    scales = mean_scale_table(summary, markdown=True)
    assert "| row, map | x0.5 | x1 | x2 | log-log slope |" in scales
    assert "| SAC-single, classifier | 0.50 +- 0.10 | 1.00 +- 0.20 | 2.00 +- 0.40 | 1.00 +- 0.00 |" in scales
    assert "control" not in scales
    assert factor_difference_table({}, markdown=True).startswith("| row - control |")


def test_rescaled_once_scores_each_factor_once_and_loads_only_when_needed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[str] = []
    calls: list[tuple[str, float]] = []
    monkeypatch.setattr(_study, "load_trained", lambda settings, checkpoint: loads.append(checkpoint) or checkpoint)

    def score(model: Any, factor: float) -> dict[str, Any]:
        calls.append((model, factor))
        return {"miou": factor}

    settings, key = {"out_dir": str(tmp_path)}, {"split": "val"}
    result = rescaled_once(settings, {"best_iteration": 2, "iterations": 4}, key, score, (0.5, 1.0))
    assert result == {"robustness": {"0.5": {"miou": 0.5}, "1": {"miou": 1.0}},
                      "robustness_last": {"0.5": {"miou": 0.5}, "1": {"miou": 1.0}}}  # fmt: skip
    assert loads == ["best.pt", "last.pt"] and len(calls) == 4
    assert json.loads((tmp_path / "robustness_last_x0.5.json").read_text())["key"] == {
        "split": "val",
        "iteration": 4,
        "rescale": 0.5,
    }
    # Resumed: nothing is loaded or scored again; a new factor loads the checkpoints once more, for itself only.
    assert rescaled_once(settings, {"best_iteration": 2, "iterations": 4}, key, score, (0.5, 1.0)) == result
    assert len(loads) == 2 and len(calls) == 4
    rescaled_once(settings, {"best_iteration": 2, "iterations": 4}, key, score, (0.5, 1.0, 2.0))
    assert loads[2:] == ["best.pt", "last.pt"] and calls[4:] == [("best.pt", 2.0), ("last.pt", 2.0)]
    # The selection kept the last checkpoint: it is scored once.
    again = rescaled_once({"out_dir": str(tmp_path / "other")}, {"best_iteration": 4, "iterations": 4}, key, score, (1.0,))
    assert again["robustness_last"] == again["robustness"] and calls[6:] == [("best.pt", 1.0)]


def test_rescaled_scores_of_both_studies(tmp_path: Path) -> None:
    """On a real (untrained) SAC model: both studies score it at a rescale factor, with its scale maps' means."""
    torch.manual_seed(0)
    model = build_model("sac_multiple_resnet18", len(study_scalescenes.ScaleScenes.classes)).eval()
    scenes = study_scalescenes.ScaleScenes(2, size=64, seed=2)
    result = study_scalescenes.rescaled_scores(model, 0.5, scenes)
    assert set(result) == {"eval_seconds", "miou", "pixel_acc", "buckets", "mean_scale", "mean_scale_by_bucket"}
    assert result["mean_scale"] == {"res5": pytest.approx(1.0), "classifier": pytest.approx(1.0)}  # eq. (1): maps start at 1
    data = _fake_camvid(tmp_path / "camvid", {"val": 2})
    model = build_model("dcn_single_resnet18", study_camvid.NUM_CLASSES).eval()
    scores = study_camvid.rescaled_scores(model, 2.0, data, "val", {"factor": 0.5, "limit": None})
    assert scores["num_pixels"] == sum(int((np.array(Image.open(p)) != 11).sum()) for p in (data / "valannot").iterdir())
    assert scores["mean_scale"] == {"classifier": pytest.approx(1.0)} and 0.0 <= scores["miou"] <= 1.0
    assert rescale_cost() == pytest.approx(sum(f * f for f in RESCALE_FACTORS)) and 1.0 in RESCALE_FACTORS


def test_camvid_seed_options(tmp_path: Path) -> None:
    data = _fake_camvid(tmp_path / "camvid", {"train": 1, "val": 1})
    args = study_camvid.parse_args(["--data-root", str(data)])
    assert args.more_seeds is None and args.more_rows == ["SAC-multiple"]  # None: the study's default seeds
    args = study_camvid.parse_args(["--data-root", str(data), "--more-seeds", "--more-rows", "SAC-single", "DCN-single"])
    assert args.more_seeds == [] and args.more_rows == ["SAC-single", "DCN-single"]
    assert study_camvid.FULL["more_seeds"] == study_scalescenes.FULL["more_seeds"] == (3, 4, 5)
    assert study_scalescenes.MORE_SEED_ROWS == ("SAC-single", "SAC-multiple")


def test_results_page_robustness_costs_and_claims(tmp_path: Path) -> None:
    runs = _robustness_runs()
    doc = {"study": "scalescenes", "runs": runs, "robustness": robustness_summaries(runs), "summary": {},
           "settings": {"seconds_per_iteration": {"fcn_resnet18 control": 0.93, "dcn_single_resnet18 whole": 0.95}}}  # fmt: skip
    text = "\n".join(_robustness(doc, tmp_path, "results"))
    assert (tmp_path / "scalescenes_robustness.png").stat().st_size > 0
    assert "![mIoU against the input rescale factor](results/scalescenes_robustness.png)" in text
    assert "small objects' mIoU, the end of the schedule" in text and "| SAC - DCN | x0.5 | x1 | x2 |" in text
    costs = "\n".join(_costs(doc))
    assert "| control | 0.80 +- 0.00 | 0.93 |" in costs and "| SAC-single | 0.80 +- 0.00 | - |" in costs
    claims = "\n".join(_claims(doc, None))
    assert "| SAC's scale coefficient follows the rescale (the paper's premise) |" in claims
    assert "SAC-single, classifier 1.00 +- 0.00" in claims and "not run yet" in claims
    assert "SAC-single - DCN-single at x1 1.3 +- 0.6 [-0.1, +2.8] (+1.0, +2.0, +1.0), beyond noise: none" in claims
    assert "SAC-single: x0.5 +2.0" not in claims  # its interval [-0.5, +4.5] holds 0
    assert _robustness({"study": "camvid"}, tmp_path, "results") == []  # a study from before the curves


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
    assert first["trained_iterations"] == 2
    # A run resumed from its last.pt counts what that call trained (here nothing: it had ended).
    (tmp_path / "run" / "train_summary.json").unlink()
    resumed = train_once(settings)
    assert resumed["iterations"] == 2 and resumed["trained_iterations"] == 0
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
    # Two seeds: t(0.975, 1) = 12.706, so the interval is 2.0 +- 12.7 points.
    assert "SAC-single (0, 1)" in text and "2.0 +- 1.4 [-10.7, +14.7] (+1.0, +3.0)" in text


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
    assert (
        "| SAC-single (0, 1) | 50.0 +- 0.0 | 46.5 +- 7.8 | 46.0 +- 0.0 | 100, 0 | 0.0 +- 1.4 [-12.7, +12.7] (+1.0, -1.0) |"
        in table
    )


def test_a_resumed_run_costs_its_last_calls_seconds_per_iteration() -> None:
    # Trained 10 of its 100 iterations in 30 s after a resume: 3 s per iteration, 300 s for the run.
    resumed = {"train_seconds": 30.0, "iterations": 100, "trained_iterations": 10}
    doc = {"protocol": "two-stage", "stage1": {"train": {"train_seconds": 50.0, "iterations": 100}},
           "runs": {"control": {0: {"train": resumed}}}, "settings": {}}  # fmt: skip
    assert _training_seconds(doc) == pytest.approx(350.0)
    assert "3.00" in "\n".join(_costs(doc))


def test_a_run_whose_last_call_trained_nothing_costs_its_rows_mean() -> None:
    # Seed 1 was stopped between its last checkpoint and its summary: its last call's 40 s were
    # evaluation and saving, not 40 s per iteration.
    runs = {
        0: {"train": {"train_seconds": 200.0, "iterations": 100, "trained_iterations": 100}},
        1: {"train": {"train_seconds": 40.0, "iterations": 100, "trained_iterations": 0}},
    }
    doc = {"protocol": "two-stage", "stage1": {"train": {"train_seconds": 50.0, "iterations": 100}},
           "runs": {"control": runs}, "settings": {}}  # fmt: skip
    assert _training_seconds(doc) == pytest.approx(50.0 + 200.0 + 200.0)
    assert "| control | 2.00 | - |" in "\n".join(_costs(doc))


def test_the_stage2_line_names_the_seeds_of_every_row() -> None:
    settings = {"seeds": [0, 1, 2], "more_seeds": [3, 4, 5], "more_rows": ["SAC-multiple"]}
    assert _seeds(settings) == 'seeds 0, 1, 2; the control, SAC-multiple also 3, 4, 5 ("-only" rows and ablations: seed 0)'
    assert _seeds(settings | {"more_seeds": []}) == 'seeds 0, 1, 2 ("-only" rows and ablations: seed 0)'


def test_a_row_with_no_measured_cost_is_named() -> None:
    run = {"train": {"train_seconds": 40.0, "iterations": 100, "trained_iterations": 0}}
    doc = {"protocol": "two-stage", "stage1": {"train": {"train_seconds": 50.0, "iterations": 100}},
           "runs": {"SAC-single": {0: run}}, "settings": {}}  # fmt: skip
    with pytest.raises(ValueError, match="SAC-single: no run measured its cost"):
        _training_seconds(doc)
