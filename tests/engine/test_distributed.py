"""Tests for multi-process training: a 2-process Gloo run through torchrun on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sacseg.engine.checkpoint import load_checkpoint
from sacseg.engine.config import save_config
from train_helpers import first_step_grads, single_thread, tiny_config

REPO = Path(__file__).resolve().parents[2]
_single_thread = pytest.fixture(scope="module", autouse=True)(single_thread)
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *args,
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_two_process_cli_run_trains_and_only_rank0_writes(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "run", model="sac_single_resnet18", iterations=2, val_every=2)
    save_config(cfg, tmp_path / "cfg.yaml")
    result = _torchrun("-m", "sacseg", "train", "--config", str(tmp_path / "cfg.yaml"))
    assert result.stdout.count("trained 2 iterations, best validation mIoU") == 1  # rank 0's summary only
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    log = (tmp_path / "run" / "train.log").read_text()
    assert log.count("training sac_single_resnet18") == 1 and "2 process(es)" in log  # rank 0 only
    assert len(list((tmp_path / "run" / "tb").iterdir())) == 1


def test_two_process_first_step_gradients_equal_one_process(tmp_path: Path) -> None:
    # Frozen batch norm makes each sample's gradient independent of the others in its batch, so
    # DDP's mean over 2 processes of 1 image each must equal 1 process with both images.
    cfg = tiny_config(tmp_path / "run", model="sac_single_resnet18", frozen_bn=True)
    save_config(cfg, tmp_path / "cfg.yaml")
    _torchrun(str(REPO / "tests" / "engine" / "train_helpers.py"), str(tmp_path / "cfg.yaml"), str(tmp_path / "g.pt"))
    two = torch.load(tmp_path / "g.pt", weights_only=True)
    one = first_step_grads(cfg)
    assert one is not None and set(one) == set(two) and any("scale_regressors" in k for k in one)
    for name, grad in one.items():
        torch.testing.assert_close(two[name], grad, rtol=1e-4, atol=1e-6, msg=name)
