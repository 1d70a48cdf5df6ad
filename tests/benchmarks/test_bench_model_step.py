"""The model-step benchmark: its table, its JSON and its arguments, on tiny inputs (CUDA runs skip without a GPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import bench_model_step as bench

TINY = ["--depth", "18", "--size", "32", "32", "--batch", "1", "--rounds", "2", "--warmup", "1", "--threads", "1"]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _table(out: str) -> dict[tuple[str, str], dict[str, str]]:
    """The Markdown table's rows by (model, mode), each as ``{header: cell}``; repeated headers get ``#2``..."""
    lines = [line for line in out.splitlines() if line.startswith("|")]
    headers: list[str] = []
    for cell in (c.strip() for c in lines[0].strip("|").split("|")):
        headers.append(cell if cell not in headers else f"{cell}#{sum(h.startswith(cell) for h in headers) + 1}")
    rows = [dict(zip(headers, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]
    return {(row["model"], row["mode"]): row for row in rows}


def test_eager_table_and_json_of_a_tiny_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "step.json"
    bench.main([*TINY, "--modes", "eager", "--json", str(path)])
    rows = _table(capsys.readouterr().out)
    assert set(rows) == {(kind, "eager") for kind in bench.MODEL_KINDS}
    for row in rows.values():
        assert float(row["train ms"]) > 0 and float(row["infer ms"]) > 0
        assert row["train peak MiB"] == "-" and row["compiled/eager train"] == "-"  # no CPU memory unless asked
    fcn = rows[("fcn", "eager")]
    assert fcn["x fcn"] == fcn["x fcn#2"] == "1.00"  # train and inference ratios are to fcn itself
    doc = json.loads(path.read_text())
    assert doc["settings"]["depth"] == 18 and doc["settings"]["modes"] == ["eager"]
    for result in doc["results"]:
        assert len(result["train_samples_s"]) == len(result["infer_samples_s"]) == 2
        assert result["train_median_s"] > 0 and result["train_first_call_s"] > 0
        assert result["name"] == f"{result['model']}_resnet18"
        assert result["last_loss"] > 0


def test_cpu_memory_and_bf16_autocast(capsys: pytest.CaptureFixture[str]) -> None:
    bench.main([*TINY, "--rounds", "1", "--modes", "eager", "--models", "fcn", "sac_multiple", "--dtype", "bf16", "--cpu-memory"])
    out = capsys.readouterr().out
    assert "autocast bf16" in out
    rows = _table(out)
    assert set(rows) == {("fcn", "eager"), ("sac_multiple", "eager")}
    assert all(float(row["train peak MiB"]) > 0 and float(row["infer peak MiB"]) > 0 for row in rows.values())


def test_table_ratios_to_fcn_and_to_eager() -> None:
    def result(model: str, mode: str, train: float, infer: float, peak: int | None) -> dict:
        return {"model": model, "mode": mode, "batch": 2, "train_median_s": train, "infer_median_s": infer,
                "train_peak_bytes": peak, "infer_peak_bytes": peak}  # fmt: skip

    table = _table(bench._table([
        result("fcn", "eager", 0.2, 0.1, 2**20), result("sac_single", "eager", 0.3, 0.1, 2**21),
        result("fcn", "compiled", 0.1, 0.05, 2**20), result("sac_single", "compiled", 0.15, 0.1, 2**21),
    ]))  # fmt: skip
    assert [table[("sac_single", "eager")][k] for k in ("x fcn", "x fcn#2", "x fcn#3")] == ["1.50", "1.00", "2.00"]
    compiled = table[("sac_single", "compiled")]
    assert (compiled["x fcn"], compiled["x fcn#2"]) == ("1.50", "2.00")  # to the compiled fcn
    assert (compiled["compiled/eager train"], compiled["compiled/eager infer"]) == ("0.50", "1.00")
    assert table[("fcn", "compiled")]["compiled/eager train"] == "0.50"
    assert (table[("sac_single", "eager")]["train img/s"], table[("sac_single", "eager")]["infer img/s"]) == ("6.7", "20.0")


def test_existing_json_is_never_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "step.json"
    path.write_text("earlier results")
    with pytest.raises(SystemExit) as exit_info:
        bench.main([*TINY, "--json", str(path)])
    assert exit_info.value.code == 2
    assert "exists" in capsys.readouterr().err and path.read_text() == "earlier results"


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--batch", "0"], "--batch must be >= 1"), (["--dtype", "fp16"], "invalid choice"), (["--depth", "34"], "invalid choice")],
)
def test_bad_arguments_are_usage_errors(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.main([*TINY, *args])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where CUDA is absent")
def test_device_cuda_without_cuda_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.main([*TINY, "--device", "cuda"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("bench_model_step.py: error: --device cuda: CUDA is not")


@pytest.mark.slow
def test_compiled_and_eager_of_a_tiny_run(capsys: pytest.CaptureFixture[str]) -> None:
    bench.main([*TINY, "--rounds", "1", "--models", "fcn", "sac_multiple"])
    rows = _table(capsys.readouterr().out)
    assert set(rows) == {(kind, mode) for kind in ("fcn", "sac_multiple") for mode in bench.MODES}
    assert rows[("fcn", "compiled")]["x fcn"] == "1.00"
    assert float(rows[("sac_multiple", "compiled")]["compiled/eager train"]) > 0
    assert float(rows[("sac_multiple", "compiled")]["compiled/eager infer"]) > 0


@needs_cuda
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_tiny_run_on_cuda(dtype: str, capsys: pytest.CaptureFixture[str]) -> None:
    bench.main([*TINY, "--modes", "eager", "--device", "cuda", "--dtype", dtype])
    rows = _table(capsys.readouterr().out)
    assert set(rows) == {(kind, "eager") for kind in bench.MODEL_KINDS}
    assert all(float(row["train peak MiB"]) > 0 and float(row["train ms"]) > 0 for row in rows.values())
    assert rows[("fcn", "eager")]["x fcn#3"] == "1.00"  # peak memory ratio
