"""What users of sacseg 0.1.0 saved keeps working: its checkpoint reads as the current format, loads and
evaluates to the same numbers, its run folder resumes to the weights its own uninterrupted run reached,
and its exported program runs (fixtures written by tests/fixtures/v0_1_0/make_fixtures.py at that version)."""

from __future__ import annotations

import json
import lzma
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from sacseg.checkpoint import load_checkpoint
from sacseg.config import load_config
from sacseg.evaluation.evaluate import evaluate
from sacseg.factory import build_eval_dataset, load_trained_model
from sacseg.nn import ScaleAdaptiveConv2d
from sacseg.ops.legacy import load_exported_program
from sacseg.options import InferenceOptions
from sacseg.training.train import train

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "v0_1_0"


@pytest.fixture
def saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, single_thread: None) -> dict[str, Any]:
    """A copy of the 0.1.0 files in ``tmp_path`` (the working directory: the run's config names its
    baseline by a relative path), checkpoints unpacked byte for byte."""
    shutil.copytree(FIXTURES, tmp_path, dirs_exist_ok=True)
    for packed in tmp_path.rglob("*.xz"):
        packed.with_suffix("").write_bytes(lzma.decompress(packed.read_bytes()))
        packed.unlink()
    monkeypatch.chdir(tmp_path)
    return json.loads((tmp_path / "expected.json").read_text())


def test_checkpoint_reads_as_format_version_2_with_its_keys_unchanged(saved: dict[str, Any]) -> None:
    raw = torch.load("run/last.pt", weights_only=True)
    assert "format_version" not in raw  # 0.1.0 wrote none: version 0
    state = load_checkpoint("run/last.pt")
    assert state["format_version"] == 2
    assert set(state) - {"format_version", "labels"} == set(raw)
    assert state["labels"] is None  # version 2's record of the labels; the config names them
    assert state["iteration"] == raw["iteration"] and state["config"] == raw["config"]
    assert state["scheduler"] == raw["scheduler"] and state["best_metric"] == raw["best_metric"]
    for key, value in raw["model"].items():
        assert torch.equal(state["model"][key], value), key


def test_checkpoint_evaluates_to_the_same_numbers(saved: dict[str, Any]) -> None:
    model, cfg = load_trained_model("run/last.pt")
    loader = torch.utils.data.DataLoader(build_eval_dataset(cfg), batch_size=1)
    whole = evaluate(model, loader, cfg.num_classes).compute()
    options = InferenceOptions(mode="slide", crop_size=40, stride=24, scales=(0.75, 1.0), flip=True)
    slide = evaluate(model, loader, cfg.num_classes, options=options)
    assert {"miou": whole["miou"], "pixel_acc": whole["pixel_acc"]} == saved["eval_whole"]
    assert {"miou": slide.compute()["miou"], "pixel_acc": slide.compute()["pixel_acc"]} == saved["eval_slide_ms_flip"]


def test_run_folder_resumes_to_its_uninterrupted_weights(saved: dict[str, Any]) -> None:
    summary = train(load_config("run/config.yaml"), resume="auto")
    assert summary.losses == saved["straight_losses"][2:]
    final = torch.load("run/last.pt", weights_only=True)["model"]
    for key, value in torch.load("straight_regressors.pt", weights_only=True).items():
        assert torch.equal(final[key], value), key


def test_exported_program_runs(saved: dict[str, Any], tmp_path: Path) -> None:
    # 0.1.0's operator had another schema, which torch.export.load alone would read wrongly: the
    # migration path rewrites it into today's (sacseg.ops.legacy), and a program saved again after
    # it loads with torch.export.load alone.
    program = load_exported_program("sac_layer.pt2")
    calls = [node for node in program.graph.nodes if node.op == "call_function"]
    assert [str(node.target) for node in calls] == ["sacseg.sac_conv2d.default"] and len(calls[0].args) == 7
    io = torch.load("sac_layer_io.pt", weights_only=True)
    torch.testing.assert_close(program.module()(io["input"], io["scale"]), io["output"])
    torch.export.save(program, tmp_path / "migrated.pt2")
    again = torch.export.load(tmp_path / "migrated.pt2")
    torch.testing.assert_close(again.module()(io["input"], io["scale"]), io["output"])


def test_current_programs_load_through_the_migration_path_unchanged(tmp_path: Path) -> None:
    layer = ScaleAdaptiveConv2d(4, 3, 3, padding=1).eval()
    images, scale = torch.randn(1, 4, 6, 7), torch.rand(1, 1, 6, 7) + 0.5
    torch.export.save(torch.export.export(layer, (images, scale)), tmp_path / "layer.pt2")
    program = load_exported_program(tmp_path / "layer.pt2")
    torch.testing.assert_close(program.module()(images, scale), layer(images, scale), rtol=0, atol=0)
