"""Tests for the ``sacseg`` command line: train (with resume), config errors, the demo, --version and --help."""

from __future__ import annotations

import argparse
import importlib.metadata
from pathlib import Path
from typing import Any

import pytest
import torch

import sacseg
from sacseg.checkpoint import load_checkpoint
from sacseg.cli import _build_parser, main
from sacseg.config import config_from_dict, save_config


def test_train_then_resume_auto(two_step_settings: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save_config(config_from_dict(two_step_settings), tmp_path / "tiny.yaml")
    out = tmp_path / "run"
    threads = torch.get_num_threads()
    assert main(["train", "--config", str(tmp_path / "tiny.yaml"), "--out", str(out), "--set", f"threads={threads + 1}"]) == 0
    assert torch.get_num_threads() == threads  # the run's thread count is not left behind
    assert "trained 2 iterations" in capsys.readouterr().out
    assert load_checkpoint(out / "last.pt")["iteration"] == 2
    args = ["train", "--config", str(tmp_path / "tiny.yaml"), "--out", str(out), "--resume", "auto"]
    assert main([*args, "--set", "iterations=3", "--set", "val_every=3"]) == 0
    assert load_checkpoint(out / "last.pt")["iteration"] == 3
    assert f"resumed from {out / 'last.pt'} at iteration 2" in (out / "train.log").read_text()
    assert "iterations: 3" in (out / "config.yaml").read_text()


def test_a_run_prints_and_logs_what_it_resolved_to(
    two_step_settings: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save_config(config_from_dict({**two_step_settings, "schedule": "step", "lr_step": 5}), tmp_path / "step.yaml")
    out = tmp_path / "run"
    assert main(["train", "--config", str(tmp_path / "step.yaml"), "--out", str(out)]) == 0
    header = [
        "training fcn_resnet18 on scale_scenes: 2 iterations (1 per epoch), 1 process(es) on cpu, global batch 2",
        "data: scale_scenes generated, 7 classes: 2 images for training (split train), 1 image for validation (split val)",
        "optimiser: SGD lr 0.01, momentum 0.9, weight decay 0.0001; schedule step: lr x 0.1 from iteration 5 (lr_step 5 iterations)",
        "steps: precision fp32, NCHW memory layout, eager, cudnn.benchmark off (CUDA only)",
        f"output: {out}; starting from scratch",
        "warning: the step schedule drops the lr at iteration 5, not before the run's end (2): check config keys lr_step and schedule",
    ]
    assert capsys.readouterr().out.startswith("\n".join(header) + "\n")
    log = (out / "train.log").read_text()
    assert all(line in log for line in header) and f"WARNING {header[-1]}" in log


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "bogus=1"], "unknown config key 'bogus'; valid keys: model"),
        (["--set", "batch_size=two"], "config key 'batch_size' must be int"),
        (["--resume", "missing.pt"], "checkpoint not found: missing.pt"),
    ],
)
def test_errors_name_the_key_or_file(
    two_step_settings: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    save_config(config_from_dict(two_step_settings), tmp_path / "tiny.yaml")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "run"), *extra])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_config_file_names_file_and_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.yaml").write_text("iterations: 2\nlr: fast\n")
    with pytest.raises(SystemExit):
        main(["train", "--config", str(tmp_path / "bad.yaml")])
    assert "bad.yaml: config key 'lr' must be float" in capsys.readouterr().err


@pytest.mark.slow  # the demo trains two models
def test_demo_writes_report_and_picture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--iterations", "2", "--test-images", "2", "--out", str(tmp_path / "demo")]) == 0
    printed = capsys.readouterr().out
    report = (tmp_path / "demo" / "report.md").read_text()
    assert f"report: {tmp_path / 'demo' / 'report.md'}" in printed
    assert "| class | baseline | SAC-single |" in report and "| **mIoU** |" in report
    assert "one short run with one seed (0)" in report and "docs/results.md" in report
    for name in ("sky", "stripes", "rings"):
        assert f"| {name} |" in report
    assert (tmp_path / "demo" / "comparison.png").stat().st_size > 10_000


def test_version_comes_from_the_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"sacseg {importlib.metadata.version('sacseg')}\n"
    assert sacseg.__version__ == importlib.metadata.version("sacseg")


def test_every_option_states_its_default() -> None:
    parser = _build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in subparsers.choices.items():
        for action in command._actions:
            if not action.option_strings or action.nargs == 0 or action.required or action.default == []:
                continue  # positionals, flags, required options, repeatable --set: nothing to default
            help_text = command._get_formatter()._expand_help(action)  # the text --help prints
            assert "default" in help_text, f"sacseg {name} {action.option_strings[0]}: {help_text!r}"


@pytest.mark.parametrize("flag", ["--iterations", "--test-images"])
def test_demo_names_the_argument_given_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", flag, "0", "--out", str(tmp_path / "demo")])
    assert exit_info.value.code == 2
    name = flag.lstrip("-").replace("-", "_")
    assert capsys.readouterr().err == f"sacseg demo: error: {name} must be >= 1, got 0\n"
    assert not (tmp_path / "demo").exists()  # nothing trained


def test_version_verbose_reports_the_cuda_path(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version", "--verbose"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"sacseg {importlib.metadata.version('sacseg')}" and lines[1].startswith("torch ")
    assert lines[2].startswith("triton: ") and lines[3].startswith("CUDA devices: ") and lines[4].startswith("CUDA self-check: ")
