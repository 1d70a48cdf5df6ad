"""ONNX export: SAC models run in onnxruntime as in PyTorch, with default-domain operators only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from sacseg.export.onnx_export import GPU_PORTABLE_OPS, export_onnx
from sacseg.models import build_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _sac_model(name: str, std: float = 0.02) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(name, 5)
    # Scales visibly away from 1 (the regressors start at exactly 1), so the check
    # covers the interpolating sampler, not only integer taps.
    for regressor in model.scale_regressors.values():
        nn.init.normal_(regressor.conv.weight, std=std)
    return model.eval()


def _domains(path: Path) -> set[str]:
    return {node.domain for node in onnx.load(str(path)).graph.node}


def _assert_matches(session: object, model: nn.Module, images: Tensor, scale_names: tuple[str, ...]) -> None:
    with torch.no_grad():
        result = model(images)
    expected = [result["out"], *(result["scales"][name] for name in scale_names)]
    got = session.run(None, {"images": images.numpy()})  # type: ignore[attr-defined]
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        b = b.numpy()
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()


def test_sac_multiple_dynamic_export_with_scales_at_other_sizes(tmp_path: Path) -> None:
    model = _sac_model("sac_multiple_resnet18").train()
    result = export_onnx(model, tmp_path / "sub" / "multiple.onnx", 64, 64, dynamic=True, with_scales=True)
    assert model.training  # the mode is restored
    model.eval()
    assert result.outputs == ("out", "scale_res5", "scale_classifier")
    assert set(result.errors) == {(1, 3, 64, 64), (2, 3, 97, 81)}
    assert result.opset == 17 and _domains(result.path) <= {""}
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["multiple.onnx"]  # no temporary left
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == list(result.outputs)
    # A size the export did not check, batch 3, odd sizes and another aspect ratio.
    _assert_matches(session, model, torch.randn(3, 3, 75, 51), ("res5", "classifier"))


def test_with_scales_needs_a_model_with_scale_maps(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no scale maps"):
        export_onnx(build_model("fcn_resnet18", 3), tmp_path / "fcn.onnx", 64, 64, with_scales=True)
    assert not any(tmp_path.iterdir())


class _TraceDependent(nn.Module):
    """A module the tracer cannot capture: a Python float taken from a tensor becomes a constant."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, images: Tensor) -> dict[str, Tensor | dict[str, Tensor]]:
        return {"out": self.conv(images) * float(images.mean()), "scales": {}}


def test_a_mismatch_raises_with_the_error_and_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"max relative error .* > rtol 1\.0e-04; .*bad\.onnx was not written"):
        export_onnx(_TraceDependent(), tmp_path / "bad.onnx", 16, 16)
    assert not any(tmp_path.iterdir())


def test_bad_size_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="0x64"):
        export_onnx(_TraceDependent(), tmp_path / "x.onnx", 0, 64)


@pytest.mark.slow
def test_dynamo_exporter_gives_the_same_graph_outputs(tmp_path: Path) -> None:
    pytest.importorskip("onnxscript")
    model = _sac_model("sac_multiple_resnet18")
    result = export_onnx(model, tmp_path / "dynamo.onnx", 64, 64, dynamic=True, with_scales=True, dynamo=True)
    assert result.opset == 18 and _domains(result.path) <= {""}
    assert {node.op_type for node in onnx.load(str(result.path)).graph.node} <= GPU_PORTABLE_OPS
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    _assert_matches(session, model, torch.randn(3, 3, 75, 51), ("res5", "classifier"))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fcn_resnet50", "sac_single_resnet50", "sac_multiple_resnet50", "sac_multiple_resnet101"])
def test_larger_models_export(name: str, tmp_path: Path) -> None:
    # Deep SAC models amplify float32 rounding through the sample positions (see export_onnx): in
    # ResNet-101's depth PyTorch's float32 result and onnxruntime's each drift from the exact one by
    # up to ~1e-3 of the output's range. So the graph is held to the exact (float64) result, as close
    # as PyTorch's own float32 path gets, and the export's float32-to-float32 check only to 1e-2.
    model = build_model(name, 19).eval() if name.startswith("fcn") else _sac_model(name, std=0.002)
    result = export_onnx(model, tmp_path / f"{name}.onnx", 96, 96, dynamic=True, rtol=1e-2)
    assert _domains(result.path) <= {""}
    images = torch.randn(2, 3, 80, 112, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        exact = model.double()(images.double())["out"]
        pytorch = model.float()(images)["out"].double()
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    exported = torch.from_numpy(session.run(None, {"images": images.numpy()})[0]).double()

    def error(t: Tensor) -> float:
        return float((t - exact).abs().max() / exact.abs().max())

    assert error(exported) <= max(1e-4, 1.5 * error(pytorch)), (error(exported), error(pytorch))
