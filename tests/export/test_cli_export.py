"""``sacseg export``: a checkpoint written here becomes an ONNX file that onnxruntime runs as PyTorch does."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sacseg.checkpoint import atomic_torch_save
from sacseg.cli import main
from sacseg.config import TrainConfig
from sacseg.factory import build_model_from_config

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def test_export_command_writes_a_checked_onnx_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = dataclasses.replace(TrainConfig(), model="sac_single_resnet18", num_classes=7, iterations=1)  # ScaleScenes
    torch.manual_seed(0)
    model = build_model_from_config(cfg).eval()
    for regressor in model.scale_regressors.values():
        nn.init.normal_(regressor.conv.weight, std=0.02)
    checkpoint = tmp_path / "run" / "best.pt"
    checkpoint.parent.mkdir()
    atomic_torch_save({"model": model.state_dict(), "config": dataclasses.asdict(cfg), "iteration": 0}, checkpoint)

    out = tmp_path / "onnx" / "model.onnx"
    args = ["export", "--checkpoint", str(checkpoint), "--out", str(out), "--height", "64", "--width", "48"]
    assert main(args + ["--with-scales", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out} (opset 17, outputs out, scale_classifier)" in printed
    assert "max relative error" in printed and "at 1x3x64x48" in printed

    graph = onnx.load(str(out)).graph
    assert {node.domain for node in graph.node} <= {""}  # default-domain operators only
    assert [p.name for p in out.parent.iterdir()] == ["model.onnx"]  # no temporary left
    # The file holds the weights and little else: no intermediate tensor folded into a constant.
    stored = sum(int(np.prod(t.dims)) for t in graph.initializer)
    stored += sum(int(np.prod(a.t.dims)) for node in graph.node for a in node.attribute if a.name == "value")
    assert stored <= 1.005 * sum(t.numel() for t in model.state_dict().values())
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (graph_input,) = session.get_inputs()
    assert graph_input.name == "images" and graph_input.shape == [1, 3, 64, 48]  # static
    images = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        result = model(images)
    got = session.run(None, {"images": images.numpy()})
    for a, b in zip(got, (result["out"], result["scales"]["classifier"]), strict=True):
        assert a.shape == tuple(b.shape)
        assert np.abs(a - b.numpy()).max() <= 1e-4 * b.abs().max().item()


def test_export_command_names_a_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "m.onnx")])
    assert exit_info.value.code == 2
    assert "nope.pt" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_export_refuses_to_replace_a_file_without_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = dataclasses.replace(TrainConfig(), num_classes=7, iterations=1)
    checkpoint = tmp_path / "best.pt"
    atomic_torch_save({"model": build_model_from_config(cfg).state_dict(), "config": dataclasses.asdict(cfg)}, checkpoint)
    out = tmp_path / "model.onnx"
    out.write_bytes(b"an earlier export")
    args = ["export", "--checkpoint", str(checkpoint), "--out", str(out), "--height", "32", "--width", "32", "--device", "cpu"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2 and out.read_bytes() == b"an earlier export"
    expected = f"sacseg export: error: ONNX file {out} exists; give --overwrite to replace it, or --out another file\n"
    assert capsys.readouterr().err == expected
    assert main([*args, "--overwrite"]) == 0
    assert onnx.load(str(out)).graph.input[0].name == "images"
