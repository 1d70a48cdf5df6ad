"""The ONNX lowerings of sac_conv2d: GridSample in the fast path's order, exact at every size, and where they differ from the paper's contract."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from sacseg.export import sac_lowering
from sacseg.export.onnx_export import GPU_PORTABLE_OPS, export_onnx
from sacseg.export.sac_lowering import multiplies_first, onnx_lowering, sac_grid_sample
from sacseg.models import build_model
from sacseg.nn import ScaleAdaptiveConv2d
from sacseg.ops import _plan, sac_conv2d
from sacseg.ops._args import SacArgs
from sacseg.ops._reference import sac_reference

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


class _SacLayer(nn.Module):
    """images -> a 1x1 convolution to ``c_in`` channels -> SAC (3x3, dilation 2) driven by a map in [0.25, 4]."""

    def __init__(self, c_in: int, c_out: int, scale: float | None = None) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, c_in, 1)
        self.regressor = nn.Conv2d(3, 1, 3, padding=1)
        self.sac = ScaleAdaptiveConv2d(c_in, c_out, 3, padding=2, dilation=2)
        self.scale = scale

    def forward(self, images: Tensor) -> dict[str, Tensor | dict[str, Tensor]]:
        s = torch.full_like(images[:, :1], self.scale) if self.scale else 0.25 + 3.75 * torch.sigmoid(self.regressor(images))
        return {"out": self.sac(self.features(images), s), "scales": {"sac": s}}


def _op_types(path: Path) -> Counter[str]:
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def test_the_graph_multiplies_first_where_the_fast_path_does() -> None:
    # The paper's SAC layers keep the size: the fast path weighs the same pixel counts in and out.
    for name in ("sac_multiple_resnet18", "sac_multiple_resnet50"):
        for module in build_model(name, 19).modules():
            if isinstance(module, ScaleAdaptiveConv2d):
                shape = tuple(module.weight.shape)
                assert multiplies_first(shape, module.stride) == _plan.projects(shape, (65, 97), (65, 97))
    assert multiplies_first((19, 512, 3, 3), (1, 1)) and not multiplies_first((512, 512, 3, 3), (1, 1))
    assert not multiplies_first((8, 64, 3, 3), (1, 1)) and multiplies_first((3, 64, 3, 3), (1, 1))


@pytest.mark.parametrize(("c_in", "c_out"), [(64, 3), (8, 8)], ids=["multiply-first", "sample-first"])
def test_grid_sample_matches_the_reference_in_pytorch(c_in: int, c_out: int) -> None:
    torch.manual_seed(0)
    x, scale = torch.randn(2, c_in, 7, 9), 0.25 + 3.75 * torch.rand(2, 1, 4, 5)
    weight, bias = torch.randn(c_out, c_in, 3, 3), torch.randn(c_out)
    args = ((2, 2), (1, 2), (2, 1))  # stride, padding, dilation
    expected = sac_reference(SacArgs(x.double(), scale.double(), weight.double(), bias.double(), *args)).float()
    got = sac_grid_sample(x, scale, weight, bias, *args)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


@pytest.mark.parametrize(("c_in", "c_out"), [(64, 3), (8, 8)], ids=["multiply-first", "sample-first"])
def test_dynamic_export_is_exact_at_size_one(tmp_path: Path, c_in: int, c_out: int) -> None:
    # align_corners=True would divide by size - 1: a 1-pixel map is where a normalisation breaks.
    torch.manual_seed(0)
    model = _SacLayer(c_in, c_out).eval()
    result = export_onnx(model, tmp_path / "layer.onnx", 1, 1, dynamic=True, with_scales=True)
    assert set(result.errors) == {(1, 3, 1, 1), (2, 3, 2, 2)}
    ops = _op_types(result.path)
    assert ops["GridSample"] == 1 and ops["ReduceSum"] == (c_out == 3) and not {"GatherElements", "Floor"} & set(ops)
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 1, 7), (3, 3, 5, 1), (1, 3, 13, 11)]:
        images = torch.randn(shape)
        with torch.no_grad():
            expected = model(images)["out"]
        got = session.run(None, {"images": images.numpy()})[0]
        assert np.abs(got - expected.numpy()).max() <= 1e-4 * expected.abs().max().item()


def test_the_gather_lowering_stays_available(tmp_path: Path) -> None:
    result = export_onnx(_SacLayer(8, 8).eval(), tmp_path / "gather.onnx", 9, 11, sac_lowering="gather")
    ops = _op_types(result.path)
    assert ops["GatherElements"] == 4 and "GridSample" not in ops
    with pytest.raises(ValueError, match="unknown sac_lowering 'nearest'; valid: 'grid_sample', 'gather'"):
        export_onnx(_SacLayer(8, 8), tmp_path / "x.onnx", 9, 11, sac_lowering="nearest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="GridSample needs opset >= 16"):
        export_onnx(_SacLayer(8, 8), tmp_path / "x.onnx", 9, 11, opset=15)
    assert not (tmp_path / "x.onnx").exists()


def test_the_lowering_is_chosen_only_for_the_block() -> None:
    from sacseg.ops.sac_conv import ONNX_IMPL

    grid_sample = sac_lowering._LOWERINGS["grid_sample"]
    with onnx_lowering("grid_sample"):
        assert ONNX_IMPL.get() is grid_sample
        with onnx_lowering("gather"):
            assert ONNX_IMPL.get() is sac_reference
        assert ONNX_IMPL.get() is grid_sample
    assert ONNX_IMPL.get() is sac_reference


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_input_reaches_the_outputs_with_a_tap_within_one_pixel(tmp_path: Path, bad: float) -> None:
    """The documented difference from the reference (README, Deployment): GridSample multiplies all
    four corners, zero weights too, and an integer position may land a rounding to either side."""
    torch.manual_seed(0)
    model = _SacLayer(3, 2, scale=1.0).eval()
    model.features = nn.Identity()  # type: ignore[assignment]
    session = ort.InferenceSession(str(export_onnx(model, tmp_path / "m.onnx", 9, 11).path), providers=["CPUExecutionProvider"])
    for y, x in [(4, 5), (0, 0), (8, 10), (3, 7)]:
        images = torch.randn(1, 3, 9, 11)
        images[0, 1, y, x] = bad
        with torch.no_grad():
            paper = ~torch.isfinite(model(images)["out"][0, 0]).numpy()  # F.conv2d's: the outputs reading it
        graph = ~np.isfinite(session.run(None, {"images": images.numpy()})[0][0, 0])
        near = np.zeros_like(paper)
        for a in (-1, 0, 1):  # output (p, q) has taps at (p - 2 + 2a, q - 2 + 2b): padding 2, dilation 2
            for b in (-1, 0, 1):
                near[max(y - 2 * a - 1, 0) : y - 2 * a + 2, max(x - 2 * b - 1, 0) : x - 2 * b + 2] = True
        assert paper.any() and (paper <= graph).all() and (graph <= near).all()
        assert graph.sum() > paper.sum()


def test_the_default_graph_uses_gpu_portable_operators_only(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("sac_multiple_resnet18", 5, upsample="bilinear", scale_bound="smooth").eval()
    result = export_onnx(model, tmp_path / "m.onnx", 32, 32, dynamic=True, with_scales=True)
    assert set(_op_types(result.path)) <= GPU_PORTABLE_OPS


def test_fast_path_and_grid_sample_agree_on_a_model_layer() -> None:
    torch.manual_seed(0)
    x, scale = torch.randn(1, 512, 6, 6), 0.25 + 3.75 * torch.rand(1, 1, 6, 6)
    weight = torch.randn(19, 512, 3, 3) * 0.01
    expected = sac_conv2d(x, scale, weight, None, 1, 4, 4, impl="fast")
    got = sac_grid_sample(x, scale, weight, None, (1, 1), (4, 4), (4, 4))
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()
