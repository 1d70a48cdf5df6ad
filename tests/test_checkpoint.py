"""Tests for checkpoints: atomic writes survive a SIGKILL mid-write, bad files are named, RNG states round-trip,
the format version is written and a newer one refused."""

from __future__ import annotations

import dataclasses
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sacseg.checkpoint import (
    CHECKPOINT_FORMAT_VERSION,
    atomic_torch_save,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from sacseg.config import TrainConfig
from sacseg.factory import build_model_from_config, load_trained_model
from sacseg.training.run_dir import remove_stale_temp_files
from sacseg.utils.io import stale_temp_files

REPO = Path(__file__).resolve().parents[1]


def _parts(value: float = 1.0) -> dict:
    model = nn.Linear(3, 2)
    nn.init.constant_(model.weight, value)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    parts = _parts(2.0)
    save_checkpoint(tmp_path / "last.pt", **parts, iteration=7, epoch=3, config={"lr": 0.1}, best_metric=0.25)
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["iteration"] == 7 and state["epoch"] == 3 and state["best_metric"] == 0.25
    assert state["config"] == {"lr": 0.1} and state["git_revision"] == "unknown"
    assert torch.equal(state["model"]["weight"], torch.full((2, 3), 2.0))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_a_checkpoint_records_its_format_version_and_one_from_a_newer_sacseg_is_refused(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "last.pt", **_parts(), iteration=1, epoch=0, config={}, best_metric=0.0)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["format_version"] == CHECKPOINT_FORMAT_VERSION == 2  # in the file itself, not added on reading
    torch.save({**state, "format_version": 99}, tmp_path / "future.pt")
    expected = f"checkpoint {tmp_path / 'future.pt'} has format version 99, but this sacseg reads versions up to 2"
    with pytest.raises(ValueError, match=re.escape(expected)):
        load_checkpoint(tmp_path / "future.pt")


def test_a_format_version_1_checkpoint_reads_with_no_labels_recorded(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "last.pt", **_parts(), iteration=1, epoch=0, config={}, best_metric=0.0)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    version_1 = {**{k: v for k, v in state.items() if k != "labels"}, "format_version": 1}
    torch.save(version_1, tmp_path / "v1.pt")
    read = load_checkpoint(tmp_path / "v1.pt")
    assert read["format_version"] == 2 and read["labels"] is None and set(read) == set(version_1) | {"labels"}


def test_rng_states_round_trip() -> None:
    state = capture_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.random(), np.random.rand(), torch.rand(3)
    restore_rng_state(state)
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(1), expected[2])


def test_missing_and_corrupt_checkpoints_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_checkpoint(tmp_path / "absent.pt")
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="garbage.pt"):
        load_checkpoint(bad)
    parts = _parts()
    save_checkpoint(tmp_path / "full.pt", **parts, iteration=1, epoch=0, config={}, best_metric=0.0)
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.pt"):
        load_checkpoint(tmp_path / "truncated.pt")


def test_non_finite_weights_are_not_written(tmp_path: Path) -> None:
    good = _parts(1.0)
    save_checkpoint(tmp_path / "last.pt", **good, iteration=1, epoch=0, config={}, best_metric=0.0)
    bad = _parts(float("nan"))
    with pytest.raises(ValueError, match="'weight'.*iteration 2"):
        save_checkpoint(tmp_path / "last.pt", **bad, iteration=2, epoch=0, config={}, best_metric=0.0)
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 1


_KILLED_WRITER = textwrap.dedent(
    """
    import io, sys, time
    import torch
    from torch import nn
    from sacseg.checkpoint import save_checkpoint

    def parts(value):
        model = nn.Linear(64, 64)
        nn.init.constant_(model.weight, value)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        return dict(model=model, optimizer=optimizer,
                    scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0),
                    scaler=torch.amp.GradScaler("cpu", enabled=False))

    path = sys.argv[1]
    save_checkpoint(path, **parts(1.0), iteration=1, epoch=0, config={}, best_metric=0.0)
    real_save = torch.save

    def slow_save(obj, handle):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        data = buffer.getvalue()
        handle.write(data[: len(data) // 2])
        handle.flush()
        print("half written", flush=True)
        time.sleep(60)
        handle.write(data[len(data) // 2 :])

    torch.save = slow_save
    save_checkpoint(path, **parts(2.0), iteration=2, epoch=0, config={}, best_metric=0.0)
    """
)


@pytest.mark.integration  # a second process, killed
@pytest.mark.slow  # the process imports torch and writes a model's checkpoint
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_kill_during_write_keeps_previous_checkpoint(tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(_KILLED_WRITER)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "last.pt")], stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "half written"
        partial = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        assert len(partial) == 1 and partial[0].stat().st_size > 0  # the new file is mid-write
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["iteration"] == 1
    assert torch.equal(state["model"]["weight"], torch.ones(64, 64))
    with pytest.raises(ValueError, match=partial[0].name):
        load_checkpoint(partial[0])
    # What the next run in the folder removes (with the folder's lock held): that file only.
    (tmp_path / "notes.tmp").write_text("not a checkpoint's")
    assert stale_temp_files(tmp_path / "last.pt") == partial
    size = partial[0].stat().st_size
    assert remove_stale_temp_files(tmp_path) == size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "notes.tmp", "writer.py"]


def test_load_trained_model_of_an_only_run_needs_no_baseline_file(
    tiny_config: Callable[..., TrainConfig], tmp_path: Path
) -> None:
    torch.manual_seed(0)
    baseline = build_model_from_config(tiny_config(tmp_path))
    atomic_torch_save({"model": baseline.state_dict(), "iteration": 4}, tmp_path / "baseline.pt")
    cfg = tiny_config(tmp_path, model="sac_single_resnet18", baseline_checkpoint=str(tmp_path / "baseline.pt"))
    trained = build_model_from_config(cfg)  # what a "-only" run starts from: frozen batch norm included
    nn.init.normal_(trained.scale_regressors["classifier"].conv.weight, std=0.1)  # as if trained
    save_checkpoint(tmp_path / "last.pt", model=trained, **{k: v for k, v in _parts().items() if k != "model"},
                    iteration=3, epoch=0, config=dataclasses.asdict(cfg), best_metric=0.0)  # fmt: skip
    (tmp_path / "baseline.pt").unlink()

    model, loaded_cfg = load_trained_model(tmp_path / "last.pt")
    assert loaded_cfg == cfg and not model.training
    images = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        expected, got = trained.eval()(images), model(images)
    torch.testing.assert_close(got["out"], expected["out"])
    torch.testing.assert_close(got["scales"]["classifier"], expected["scales"]["classifier"])


def test_load_trained_model_does_not_read_backbone_weights(tiny_config: Callable[..., TrainConfig], tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    atomic_torch_save({"model": build_model_from_config(cfg).state_dict(),
                       "config": dict(dataclasses.asdict(cfg), backbone_weights=str(tmp_path / "absent.pth"))},
                      tmp_path / "model.pt")  # fmt: skip
    model, loaded_cfg = load_trained_model(tmp_path / "model.pt")
    assert loaded_cfg.backbone_weights == str(tmp_path / "absent.pth") and not model.training


def test_load_trained_model_errors_name_the_file(tiny_config: Callable[..., TrainConfig], tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    weights = build_model_from_config(cfg).state_dict()
    atomic_torch_save({"model": weights}, tmp_path / "bare.pt")
    with pytest.raises(ValueError, match=f"checkpoint {tmp_path / 'bare.pt'} stores no config"):
        load_trained_model(tmp_path / "bare.pt")
    model, used = load_trained_model(tmp_path / "bare.pt", default_config=cfg)
    assert used is cfg and not model.training
    other = dict(dataclasses.asdict(cfg), model="sac_single_resnet18")
    atomic_torch_save({"model": weights, "config": other}, tmp_path / "mismatch.pt")
    with pytest.raises(
        ValueError, match=f"checkpoint {tmp_path / 'mismatch.pt'}: its weights do not fit model 'sac_single_resnet18'"
    ):
        load_trained_model(tmp_path / "mismatch.pt")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_trained_model(tmp_path / "none.pt")


@pytest.mark.parametrize("wrapped", [True, False], ids=["under-model", "bare"])
def test_a_torchvision_state_dict_given_as_a_checkpoint_is_one_line_saying_what_it_is(
    tiny_config: Callable[..., TrainConfig], tmp_path: Path, wrapped: bool
) -> None:
    from torchvision.models import resnet18

    weights = resnet18().state_dict()
    atomic_torch_save({"model": weights} if wrapped else weights, tmp_path / "resnet18.pth")
    with pytest.raises(ValueError) as error:
        load_trained_model(tmp_path / "resnet18.pth", default_config=tiny_config(tmp_path))
    assert str(error.value) == (
        f"checkpoint {tmp_path / 'resnet18.pth'} holds a torchvision ResNet state dict, not a sacseg checkpoint: "
        "use it as the config key backbone_weights to start a training run from it"
    )


@pytest.mark.parametrize("name", ["model.onnx", "renamed.pt"])
def test_an_onnx_file_given_as_a_checkpoint_is_named_as_one(tmp_path: Path, name: str) -> None:
    onnx = pytest.importorskip("onnx")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )  # fmt: skip
    onnx.save(onnx.helper.make_model(graph, producer_name="pytorch"), tmp_path / name)
    with pytest.raises(ValueError) as error:
        load_checkpoint(tmp_path / name)
    assert str(error.value) == (
        f"checkpoint {tmp_path / name} is an ONNX file, not a PyTorch checkpoint: run it with onnxruntime; "
        "sacseg eval, predict and export read the .pt files that sacseg train writes"
    )
