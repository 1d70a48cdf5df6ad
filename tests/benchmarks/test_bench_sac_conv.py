"""The operator benchmark: round-robin timing, the table of a tiny shape, no profiler noise, autocast, argument errors, CUDA runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import bench_sac_conv as bench

ROOT = Path(__file__).resolve().parents[2]


def test_round_robin_times_every_operator_each_round():
    calls, order = {}, []
    for name in ("a", "b"):
        calls[name] = (lambda name=name: order.append(f"{name}:fwd"), lambda name=name: order.append(f"{name}:both"))
    medians = bench._round_robin_medians(calls, 3, torch.device("cpu"))
    assert order == ["a:fwd", "a:both", "b:fwd", "b:both"] * 4  # warm-up, then 3 rounds
    assert set(medians) == {"a", "b"} and all(t >= 0 for pair in medians.values() for t in pair)


def test_table_of_a_tiny_shape(monkeypatch, capsys):
    monkeypatch.setitem(bench.SHAPES, "tiny", bench.Shape(1, 8, 4, 9, 2, True))
    bench.main(["--shapes", "tiny", "--ops", "conv2d", "sac:fast", "sac:reference", "--repeats", "2", "--threads", "1"])
    table = capsys.readouterr().out.split("\n\n")[-1].splitlines()
    assert table[0].split()[:3] == ["shape", "op", "fwd"]
    rows = {line.split()[1]: line.split()[2:] for line in table[1:]}
    assert set(rows) == {"conv2d", "sac:fast", "sac:reference"}
    assert rows["conv2d"][1] == rows["conv2d"][3] == "1.00"  # ratios are to conv2d itself
    assert all(float(values[0]) > 0 and float(values[2]) > 0 for values in rows.values())  # fwd, f+b ms


@pytest.mark.slow  # the benchmark in a fresh interpreter
def test_no_profiler_noise_between_the_lines():
    # The CPU peak memory comes from torch.profiler; its engine would log every start and stop.
    script = (
        "from benchmarks import bench_sac_conv as bench; "
        "bench.SHAPES['tiny'] = bench.Shape(1, 8, 4, 9, 2, True); "
        "bench.main(['--shapes', 'tiny', '--ops', 'conv2d', 'sac:fast', '--repeats', '1', '--threads', '1'])"
    )
    env = {k: v for k, v in os.environ.items() if k != "KINETO_LOG_LEVEL"}
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "tiny" in run.stdout and run.stderr == ""


def test_bf16_autocast_on_cpu_says_what_each_operator_returned(monkeypatch, capsys):
    monkeypatch.setitem(bench.SHAPES, "tiny", bench.Shape(1, 8, 4, 9, 2, True, width=11))
    bench.main(["--shapes", "tiny", "--ops", "conv2d", "deform_conv2d", "sac:fast", "--repeats", "1", "--threads", "1",
                "--dtype", "bf16"])  # fmt: skip
    out = capsys.readouterr().out
    assert "autocast bf16" in out.splitlines()[0]
    table = out.split("\n\n")[-1].splitlines()
    assert table[0].split()[-2:] == ["out", "dtype"]
    dtypes = {line.split()[1]: line.split()[-1] for line in table[1:] if line.startswith("tiny")}
    assert dtypes["conv2d"] == "bfloat16"  # autocast ran cuDNN/oneDNN in bf16
    assert dtypes["deform_conv2d"] == "float32" and "run in float32" in table[-1]  # no bf16 kernel: said so
    assert set(dtypes) == {"conv2d", "deform_conv2d", "sac:fast"}


@pytest.mark.parametrize(("args", "message"), [(["--dtype", "fp64"], "invalid choice"), (["--threads", "0"], "--threads")])
def test_bad_dtype_or_threads_are_usage_errors(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--shapes", "res5", *args])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where CUDA is absent")
def test_device_cuda_without_cuda_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--shapes", "res5", "--device", "cuda"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("bench_sac_conv.py: error: --device cuda: CUDA is not available")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_table_of_a_tiny_shape_on_cuda(dtype, monkeypatch, capsys):
    monkeypatch.setitem(bench.SHAPES, "tiny", bench.Shape(2, 8, 4, 9, 2, True, width=11))
    bench.main(["--shapes", "tiny", "--repeats", "2", "--device", "cuda", "--dtype", dtype])
    table = capsys.readouterr().out.split("\n\n")[-1].splitlines()
    rows = {line.split()[1]: line.split()[2:] for line in table[1:] if line.startswith("tiny")}
    assert set(rows) == {"conv2d", "deform_conv2d", "sac:fast", "sac:reference"}
    assert all(float(values[0]) > 0 and float(values[2]) > 0 and float(values[4]) > 0 for values in rows.values())
    assert rows["conv2d"][-1] == ("float32" if dtype == "fp32" else "bfloat16")


def test_threads_apply_to_the_run(monkeypatch, capsys):
    monkeypatch.setitem(bench.SHAPES, "tiny", bench.Shape(1, 8, 4, 9, 2, True))
    bench.main(["--shapes", "tiny", "--ops", "conv2d", "--repeats", "1", "--threads", "1"])
    assert "cpu (1 thread)" in capsys.readouterr().out.splitlines()[0] and torch.get_num_threads() == 1
