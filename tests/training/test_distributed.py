"""Tests for multi-process training: a 2-process Gloo run through torchrun on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from sacseg.checkpoint import load_checkpoint
from sacseg.config import TrainConfig, save_config

REPO = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built"),
]


def _env(**variables: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **variables)


def _torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    # --standalone: torchrun's agent binds its rendezvous store to a port the kernel picks (port 0)
    # and hands that store to the workers. A port found free beforehand could be taken by another
    # process before the launch binds it.
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    result = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow  # torchrun starts two training processes
def test_two_process_cli_run_trains_and_only_rank0_writes(tiny_config: Callable[..., TrainConfig], tmp_path: Path) -> None:
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


@pytest.mark.slow  # torchrun starts two training processes
def test_two_process_first_step_gradients_equal_one_process(tiny_config: Callable[..., TrainConfig], tmp_path: Path) -> None:
    # Frozen batch norm makes each sample's gradient independent of the others in its batch, so
    # DDP's mean over 2 processes of 1 image each must equal 1 process with both images.
    cfg = tiny_config(tmp_path / "run", model="sac_single_resnet18", frozen_bn=True)
    save_config(cfg, tmp_path / "cfg.yaml")
    script = str(Path(__file__).with_name("first_step_grads.py"))
    _torchrun(script, str(tmp_path / "cfg.yaml"), str(tmp_path / "two.pt"))
    subprocess.run([sys.executable, script, str(tmp_path / "cfg.yaml"), str(tmp_path / "one.pt")], check=True, env=_env())
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    one = torch.load(tmp_path / "one.pt", weights_only=True)
    assert set(one) == set(two) and any("scale_regressors" in k for k in one)
    for name, grad in one.items():
        torch.testing.assert_close(two[name], grad, rtol=1e-4, atol=1e-6, msg=name)


# Both ranks run the CLI; rank 1 stops itself (SIGSTOP) when its second step begins: a stalled peer,
# alive and holding its sockets, but silent.
_STALLING_RANK = """
import os, signal, sys
from sacseg.cli import main
from sacseg.training import loop

real_step, calls = loop.train_step, []


def step(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2 and os.environ["RANK"] == "1":
        os.kill(os.getpid(), signal.SIGSTOP)
    return real_step(*args, **kwargs)


loop.train_step = step
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow  # ~35 s on 2 busy cores: two processes start, then rank 0 waits out the timeout
@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs POSIX signals")
def test_a_stalled_peer_fails_the_run_after_dist_timeout_naming_rank_and_step(
    tiny_config: Callable[..., TrainConfig], tmp_path: Path
) -> None:
    cfg = tiny_config(tmp_path / "run", dist_timeout=8.0)
    save_config(cfg, tmp_path / "cfg.yaml")
    (tmp_path / "stall.py").write_text(_STALLING_RANK)
    # The test hosts the ranks' rendezvous store as torchrun's agent does: bound to a port the kernel
    # picks, announced by TORCHELASTIC_USE_AGENT_STORE, so each rank connects to it and none binds.
    store = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    ranks = []
    try:
        for rank in range(2):
            env = _env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(store.port), TORCHELASTIC_USE_AGENT_STORE="True",
                       RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")  # fmt: skip
            command = [sys.executable, str(tmp_path / "stall.py"), "train", "--config", str(tmp_path / "cfg.yaml")]
            ranks.append(subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True))
        _, err = ranks[0].communicate(timeout=240)
        assert ranks[1].poll() is None  # still stopped: rank 0 did not wait for it to end
    finally:
        for proc in ranks:
            if proc.poll() is None:
                proc.kill()  # SIGKILL ends a stopped process too
                proc.communicate()
    assert ranks[0].returncode == 2, err[-3000:]
    expected = ("rank 0 of 2 waited more than 8 s (config key dist_timeout) for the other processes after "
                "iteration 1: one of them stalled or died")  # fmt: skip
    assert err.strip().splitlines()[-1] == f"sacseg train: error: {expected}"
    assert expected in (tmp_path / "run" / "train.log").read_text()
