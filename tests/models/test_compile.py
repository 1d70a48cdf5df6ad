"""torch.compile (inductor) and torch.export of the models keep the SAC operator and give eager's outputs; in float64 so that only semantics count."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

import sacseg.ops._forward as fast_forward
from sacseg.models import MODELS, build_model
from sacseg.nn import ScaleAdaptiveConv2d

# One compile takes about a minute on 2 CPU cores (a C++ compiler builds the kernels): one model
# by default, the others with -m slow.
DEFAULT = "sac_multiple_resnet18"
SAC_OP = {"sacseg.sac_conv2d", "sacseg.sac_conv2d.default"}


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(name, 5).double()
    for regressor in getattr(model, "scale_regressors", {}).values():
        nn.init.normal_(regressor.conv.weight, std=0.02)  # scales away from 1: the sampler interpolates
    return model


def _assert_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


def _targets(gm: torch.fx.GraphModule) -> set[str]:
    return {str(node.target) for node in gm.graph.nodes if node.op == "call_function"}


def _check_compiled_forward(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    torch._dynamo.reset()  # a fresh cache: a hit recompile limit would silently fall back to eager
    counters.clear()
    model = _model(name).eval()
    compiled = torch.compile(model)
    images = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        expected = model(images)
        # The operator's body runs only for real tensors: counting its calls shows the compiled
        # model kept the fast path (the reference would never call it).
        calls = []
        forward = fast_forward.forward
        monkeypatch.setattr(fast_forward, "forward", lambda *args, **kwargs: calls.append(1) or forward(*args, **kwargs))
        got = compiled(images)
    # Counted rather than refused (fullgraph=True), so that a failure names the breaks.
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] == 1
    assert len(calls) == (0 if name.startswith("fcn_") else sum(isinstance(m, ScaleAdaptiveConv2d) for m in model.modules()))
    _assert_close(got["out"], expected["out"])
    assert got["scales"].keys() == expected["scales"].keys()
    for key, scale in expected["scales"].items():
        _assert_close(got["scales"][key], scale)


@pytest.mark.slow  # inductor compiles forward and backward of a whole model
def test_compiled_model_has_no_graph_break_and_matches_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    _check_compiled_forward(DEFAULT, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("name", [name for name in MODELS if name != DEFAULT])
def test_every_compiled_model_matches_eager(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _check_compiled_forward(name, monkeypatch)


@pytest.mark.slow
def test_compiled_training_step_matches_eager() -> None:
    torch._dynamo.reset()
    model = _model(DEFAULT).train()
    compiled = torch.compile(model, fullgraph=True)
    images = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    grads = []
    for module in (model, compiled):
        model.zero_grad()
        result = module(images)
        (result["out"].square().mean() + sum(s.mean() for s in result["scales"].values())).backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters()})
    for name, expected in grads[0].items():
        _assert_close(grads[1][name], expected)


def test_exported_model_keeps_the_operator_and_matches_eager() -> None:
    model = _model(DEFAULT).eval()
    images = torch.randn(1, 3, 48, 64, dtype=torch.float64)
    program = torch.export.export(model, (images,))
    assert _targets(program.graph_module) & SAC_OP
    other = torch.randn(1, 3, 48, 64, dtype=torch.float64)
    with torch.no_grad():
        expected, got = model(other), program.module()(other)
    _assert_close(got["out"], expected["out"])
    for key, scale in expected["scales"].items():
        _assert_close(got["scales"][key], scale)
