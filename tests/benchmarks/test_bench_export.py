"""The export benchmark: its table on a tiny input, one thread, one round."""

from __future__ import annotations

import pytest

from benchmarks import bench_export as bench

pytest.importorskip("onnxruntime")


@pytest.mark.slow  # exports and times every model
def test_the_table_has_a_row_per_model_and_thread_count(capsys: pytest.CaptureFixture[str]) -> None:
    bench.main(["--models", "sac_single", "fcn", "--depths", "18", "--size", "32", "32", "--threads", "1", "--rounds", "1"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    headers = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert headers == [
        "model", "threads", "eager ms", "gather ms", "gather / eager", "grid_sample ms", "grid_sample / eager", "x fcn"
    ]  # fmt: skip
    rows = [dict(zip(headers, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[2:]]
    assert [(row["model"], row["threads"]) for row in rows] == [("fcn_resnet18", "1"), ("sac_single_resnet18", "1")]
    fcn = rows[0]
    assert fcn["gather ms"] == fcn["grid_sample ms"] and fcn["x fcn"] == "1.00"  # one graph for a baseline
    assert all(float(row["grid_sample / eager"]) > 0 for row in rows)


def test_bad_arguments_are_usage_errors() -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--threads", "0"])
    assert exit_info.value.code == 2
