"""Tests for the run folder of ``sacseg train``: refusal, lock, checks before writing, resume settings, write errors,
how a run ends (Ctrl-C, an error) and what a resume into another folder carries."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from sacseg.checkpoint import atomic_torch_save, load_checkpoint
from sacseg.cli import main
from sacseg.config import TrainConfig, config_from_dict, load_config, save_config
from sacseg.training import loop
from sacseg.training.run_dir import locked_run_folder
from sacseg.training.train import train

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, two_step_settings: dict[str, Any]) -> tuple[Path, Path]:
    """(the config file, a run folder trained to its end by ``sacseg train``); copy it before changing it."""
    root = tmp_path_factory.mktemp("finished")
    save_config(config_from_dict(two_step_settings), root / "tiny.yaml")
    assert main(["train", "--config", str(root / "tiny.yaml"), "--out", str(root / "run")]) == 0
    return root / "tiny.yaml", root / "run"


@pytest.fixture()
def run_copy(finished_run: tuple[Path, Path], tmp_path: Path) -> Path:
    shutil.copytree(finished_run[1], tmp_path / "run")
    return tmp_path / "run"


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def _train_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()  # what earlier commands printed
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("sacseg train: error: ") and err.count("\n") == 1, err
    return err


def test_second_run_into_a_run_folder_is_refused_unless_overwrite(
    finished_run: tuple[Path, Path], run_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(finished_run[0])
    before = _snapshot(run_copy)
    err = _train_error(capsys, "--config", config, "--out", str(run_copy))
    assert f"{run_copy} already holds a run (last.pt, best.pt, config.yaml" in err and "--overwrite" in err
    assert _snapshot(run_copy) == before

    assert (
        main(
            ["train", "--config", config, "--out", str(run_copy), "--overwrite", "--set", "iterations=1", "--set", "val_every=1"]
        )
        == 0
    )
    assert load_checkpoint(run_copy / "last.pt")["iteration"] == 1
    assert load_checkpoint(run_copy / "best.pt")["iteration"] == 1  # the old run's best.pt is gone
    log = (run_copy / "train.log").read_text()
    assert log.count("training fcn_resnet18") == 1 and "--overwrite: deleted the previous run's last.pt, best.pt" in log
    assert len(list((run_copy / "tb").iterdir())) == 1

    err = _train_error(capsys, "--config", config, "--out", str(run_copy), "--overwrite", "--resume", "auto")
    assert "--overwrite would delete the run" in err


@pytest.mark.integration  # a second process, killed
def test_a_folder_locked_by_a_live_run_is_refused_and_a_dead_holder_is_not(
    finished_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / ".last.pt.a1b2c3d4.tmp").write_bytes(b"being written by the live run")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from sacseg.training.run_dir import "
         "locked_run_folder\nwith locked_run_folder(Path(sys.argv[1])):\n print('locked', flush=True); time.sleep(120)",
         str(out)],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)),
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        err = _train_error(capsys, "--config", str(finished_run[0]), "--out", str(out))
        assert f"run folder {out} is in use by process {holder.pid} on " in err
        assert (out / ".last.pt.a1b2c3d4.tmp").exists() and not (out / "config.yaml").exists()
        holder.send_signal(signal.SIGKILL)  # the kernel releases a dead process's lock
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert main(["train", "--config", str(finished_run[0]), "--out", str(out)]) == 0
    assert load_checkpoint(out / "last.pt")["iteration"] == 2
    assert not (out / ".last.pt.a1b2c3d4.tmp").exists()  # stale once its writer is dead


def test_lock_is_held_for_the_whole_run_and_released_after_it(
    tiny_config: Callable[..., TrainConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_step, seen = loop.train_step, []

    def step(*args: Any, **kwargs: Any) -> Any:
        with (
            pytest.raises(ValueError, match=f"run folder {tmp_path} is in use by process {os.getpid()}"),
            locked_run_folder(tmp_path),
        ):
            pass
        seen.append(True)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", step)
    train(tiny_config(tmp_path, iterations=2, val_every=2))
    assert len(seen) == 2
    with locked_run_folder(tmp_path):  # released when the run ended
        pass


def test_stale_temp_files_are_removed_at_start(run_copy: Path, finished_run: tuple[Path, Path]) -> None:
    stale = [run_copy / ".last.pt.x9_y8z7w.tmp", run_copy / ".best.pt.00000000.tmp", run_copy / ".config.yaml.abcdefgh.tmp"]
    kept = [run_copy / ".last.pt.tmp", run_copy / "notes.tmp", run_copy / ".other.pt.abcdefgh.tmp"]
    for path in stale + kept:
        path.write_bytes(b"x" * 1000)
    args = ["train", "--config", str(finished_run[0]), "--out", str(run_copy), "--resume", "auto"]
    assert main([*args, "--set", "iterations=3", "--set", "val_every=3"]) == 0
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    assert "deleted temporary files of interrupted checkpoint writes (0.0 MB)" in (run_copy / "train.log").read_text()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "model=no_such_model"], "no_such_model"),
        (
            ["--set", "model=sac_single_resnet18"],
            "was trained with model 'fcn_resnet18' but the config says 'sac_single_resnet18'",
        ),
        (["--set", "dataset=camvid", "--set", "data_root=/nonexistent/camvid", "--set", "num_classes=11"], "/nonexistent/camvid"),
        (["--set", "batch_size=64"], "fewer than batch_size 64"),
    ],
    ids=["bad-model-name", "other-model", "missing-dataset", "batch-too-large"],
)
def test_a_failed_start_leaves_the_run_folder_untouched(
    finished_run: tuple[Path, Path], run_copy: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    before = _snapshot(run_copy)
    err = _train_error(
        capsys, "--config", str(finished_run[0]), "--out", str(run_copy), "--resume", "auto", "--set", "iterations=3", *extra
    )
    assert message in err
    assert _snapshot(run_copy) == before


def test_resume_applies_a_changed_lr_momentum_and_weight_decay(
    run_copy: Path, finished_run: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_step, used = loop.train_step, []

    def step(optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
        used.append([(g["lr"], g["momentum"], g["weight_decay"]) for g in optimizer.param_groups])
        return real_step(optimizer, *args, **kwargs)

    monkeypatch.setattr(loop, "train_step", step)
    changes = ["lr=0.5", "momentum=0.0", "weight_decay=0.0", "iterations=3", "val_every=3"]
    args = ["train", "--config", str(finished_run[0]), "--out", str(run_copy), "--resume", "auto"]
    assert main(args + [item for change in changes for item in ("--set", change)]) == 0
    # Poly schedule: at iteration 2 of 3 the rate is lr * (1 - 2/3) ** 0.9.
    assert used == [[(pytest.approx(0.5 * (1 / 3) ** 0.9), 0.0, 0.0)]]
    state = load_checkpoint(run_copy / "last.pt")
    group = state["optimizer"]["param_groups"][0]
    assert (group["initial_lr"], group["momentum"], group["weight_decay"]) == (0.5, 0.0, 0.0)
    assert state["scheduler"]["base_lrs"] == [0.5]
    assert "lr: 0.5" in (run_copy / "config.yaml").read_text()


def test_resuming_a_finished_checkpoint_trains_and_writes_nothing(
    finished_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = finished_run[1] / "last.pt"
    args = ["train", "--config", str(finished_run[0]), "--out", str(tmp_path / "new"), "--resume", str(checkpoint)]
    assert main(args) == 0
    assert (
        f"nothing left to train: {checkpoint} is at iteration 2 of 2; nothing was written to {tmp_path / 'new'}"
        in capsys.readouterr().out
    )
    assert not (tmp_path / "new").exists()


def test_out_that_is_a_file_or_read_only_is_one_error_line(
    finished_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "file").write_text("not a folder")
    err = _train_error(capsys, "--config", str(finished_run[0]), "--out", str(tmp_path / "file"))
    assert f"output folder {tmp_path / 'file'} is a file, not a folder" in err

    read_only = tmp_path / "read_only"
    read_only.mkdir(mode=0o555)
    if os.access(read_only, os.W_OK):  # root writes anyway: make the folder's creation fail as it would

        def refuse(*args: Any, **kwargs: Any) -> None:
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(Path, "mkdir", refuse)
    err = _train_error(capsys, "--config", str(finished_run[0]), "--out", str(read_only / "run"))
    assert f"cannot write to run folder {read_only / 'run'}: Permission denied" in err


_FILE_SIZE_LIMIT = 1_000_000  # bytes: config, log and TensorBoard events fit, a checkpoint does not


def _small_disk() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (_FILE_SIZE_LIMIT, _FILE_SIZE_LIMIT))


@pytest.mark.integration  # a second process, killed
@pytest.mark.slow  # a whole training run in it
@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs POSIX file size limits")
def test_disk_full_while_saving_keeps_the_checkpoint_and_names_the_file(run_copy: Path, finished_run: tuple[Path, Path]) -> None:
    before = {name: (run_copy / name).read_bytes() for name in ("last.pt", "best.pt")}
    command = [sys.executable, "-m", "sacseg", "train", "--config", str(finished_run[0]), "--out", str(run_copy),
               "--resume", "auto", "--set", "iterations=3", "--set", "val_every=1"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, preexec_fn=_small_disk)
    assert result.returncode == 2, result.stderr[-3000:]
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"sacseg train: error: cannot write {run_copy}/")
    assert "torch.save failed, is the disk full? ([enforce fail at inline_container.cc" in last_line
    assert {name: (run_copy / name).read_bytes() for name in before} == before
    assert not list(run_copy.glob(".*.tmp"))


def test_resuming_a_checkpoint_of_another_class_count_is_refused(
    finished_run: tuple[Path, Path], run_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = load_checkpoint(run_copy / "last.pt")
    state["config"]["num_classes"] = 5  # as a run of a 5-class data set would have stored it
    atomic_torch_save(state, run_copy / "last.pt")
    before = _snapshot(run_copy)
    err = _train_error(
        capsys, "--config", str(finished_run[0]), "--out", str(run_copy), "--resume", "auto", "--set", "iterations=3"
    )
    assert f"checkpoint {run_copy / 'last.pt'} was trained with num_classes 5 but the config says 7" in err
    assert _snapshot(run_copy) == before


def test_a_resume_whose_log_cannot_be_opened_changes_nothing(
    finished_run: tuple[Path, Path], run_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (run_copy / "train.log").unlink()
    (run_copy / "train.log").mkdir()  # unopenable, also for root (for whom a read-only file is writable)
    before = _snapshot(run_copy)
    err = _train_error(
        capsys, "--config", str(finished_run[0]), "--out", str(run_copy), "--resume", "auto", "--set", "iterations=3"
    )
    assert _snapshot(run_copy) == before  # config.yaml still says iterations: 2
    assert f"cannot open the run's log {run_copy / 'train.log'}: Is a directory" in err


def test_resuming_into_another_folder_carries_the_best_so_far(
    finished_run: tuple[Path, Path], run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("last.pt", "best.pt"):  # a best so far of 99%: the resumed run's validation does not beat it
        state = load_checkpoint(run_copy / name)
        state["best_metric"] = 0.99
        atomic_torch_save(state, run_copy / name)
    capsys.readouterr()

    def resume_into(out: Path) -> str:
        args = ["--config", str(finished_run[0]), "--resume", str(run_copy / "last.pt"), "--out", str(out)]
        assert main(["train", *args, "--set", "iterations=3", "--set", "val_every=3"]) == 0
        return capsys.readouterr().out

    printed = resume_into(tmp_path / "b")
    assert f"best validation mIoU 99.00 ({tmp_path / 'b' / 'best.pt'}); checkpoints in {tmp_path / 'b'}" in printed
    assert f"best so far: validation mIoU 99.00, {run_copy / 'best.pt'} copied into the run folder" in printed
    assert (tmp_path / "b" / "best.pt").read_bytes() == (run_copy / "best.pt").read_bytes()

    (run_copy / "best.pt").unlink()  # nothing to carry: the message says that no best.pt holds the best
    printed = resume_into(tmp_path / "c")
    assert f"best validation mIoU 99.00, reached before {run_copy / 'last.pt'} (no best.pt of it in {tmp_path / 'c'})" in printed
    assert not (tmp_path / "c" / "best.pt").exists()


def _fail_at_step(monkeypatch: pytest.MonkeyPatch, call: int, error: BaseException) -> None:
    real_step, calls = loop.train_step, []

    def step(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == call:
            raise error
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", step)


def test_ctrl_c_and_errors_end_a_run_with_one_line_on_the_console_and_last_in_the_log(
    finished_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = str(finished_run[0])
    out = tmp_path / "cut"
    _fail_at_step(monkeypatch, 2, KeyboardInterrupt())
    assert main(["train", "--config", config, "--out", str(out)]) == 130
    line = f"interrupted at iteration 1 (last.pt holds iteration 1); resume with: sacseg train --resume auto --out {out}"
    assert capsys.readouterr().err.endswith(f"\nsacseg train: {line}\n")
    assert (out / "train.log").read_text().splitlines()[-1].endswith(f" WARNING {line}")

    out = tmp_path / "failed"
    _fail_at_step(monkeypatch, 1, RuntimeError("simulated failure"))
    assert main(["train", "--config", config, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.endswith(f"\nsacseg train: error: RuntimeError: simulated failure (traceback in {out / 'train.log'})\n")
    assert "Traceback" not in err
    log = (out / "train.log").read_text()
    assert "Traceback (most recent call last)" in log and "raise error" in log
    assert log.splitlines()[-1].endswith(" ERROR stopped at iteration 0: RuntimeError: simulated failure")


def test_resume_auto_reads_the_run_folders_config_and_device_replaces_the_configs(
    finished_run: tuple[Path, Path], run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--resume", "auto", "--out", str(run_copy), "--set", "iterations=3", "--set", "val_every=3"]) == 0
    assert load_checkpoint(run_copy / "last.pt")["iteration"] == 3
    err = _train_error(capsys, "--resume", "auto", "--out", str(tmp_path / "empty"))
    assert f"no --config given and the run folder holds no config: {tmp_path / 'empty' / 'config.yaml'} not found" in err

    save_config(dataclasses.replace(load_config(finished_run[0]), device="cuda"), tmp_path / "cuda.yaml")
    if not torch.cuda.is_available():
        assert "CUDA is not available" in _train_error(
            capsys, "--config", str(tmp_path / "cuda.yaml"), "--out", str(tmp_path / "d")
        )
    assert main(["train", "--config", str(tmp_path / "cuda.yaml"), "--device", "cpu", "--out", str(tmp_path / "d")]) == 0
    assert "1 process(es) on cpu, global batch 2" in capsys.readouterr().out
    assert load_config(tmp_path / "d" / "config.yaml").device == "cpu"  # recorded as it ran
