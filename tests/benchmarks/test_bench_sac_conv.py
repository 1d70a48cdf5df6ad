"""The operator benchmark: round-robin timing and the printed table, on a tiny shape."""

from __future__ import annotations

import torch

from benchmarks import bench_sac_conv as bench


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
