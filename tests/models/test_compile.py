"""torch.compile (inductor) of the models gives eager's outputs; in float64 so that only semantics count."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sacseg.models import MODELS, build_model

# One compile takes about a minute on 2 CPU cores (a C++ compiler builds the kernels): one model
# by default, the others with -m slow.
DEFAULT = "sac_multiple_resnet18"


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(name, 5).double()
    for regressor in getattr(model, "scale_regressors", {}).values():
        nn.init.normal_(regressor.conv.weight, std=0.02)  # scales away from 1: the sampler interpolates
    return model


def _assert_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


def _check_compiled_forward(name: str) -> None:
    torch._dynamo.reset()  # a fresh cache: a hit recompile limit would silently fall back to eager
    model = _model(name).eval()
    # fullgraph: a graph break (e.g. an operator dynamo cannot trace) is an error, not a fallback.
    compiled = torch.compile(model, fullgraph=True)
    images = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        expected, got = model(images), compiled(images)
    _assert_close(got["out"], expected["out"])
    assert got["scales"].keys() == expected["scales"].keys()
    for key, scale in expected["scales"].items():
        _assert_close(got["scales"][key], scale)


def test_compiled_model_matches_eager() -> None:
    _check_compiled_forward(DEFAULT)


@pytest.mark.slow
@pytest.mark.parametrize("name", [name for name in MODELS if name != DEFAULT])
def test_every_compiled_model_matches_eager(name: str) -> None:
    _check_compiled_forward(name)


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
