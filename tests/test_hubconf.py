"""torch.hub: hubconf.py at the repository root exposes every paper model, the deformable rivals and sac_convert."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torchvision

from sacseg.models import MODELS, DilatedFCN, SACStage

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("single_thread")


def _hubconf() -> ModuleType:
    """hubconf.py imported as torch.hub imports it: a file, not a package module."""
    spec = importlib.util.spec_from_file_location("hubconf", REPO / "hubconf.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hub_entries_are_every_model_and_sac_convert_with_their_docs() -> None:
    # What torch.hub.list and torch.hub.help read (they fetch GitHub repositories only, so the
    # module is imported here as they import it): public callables and their docstrings.
    hub = _hubconf()
    entries = [name for name in dir(hub) if callable(getattr(hub, name)) and not name.startswith("_")]
    assert sorted(entries) == sorted([*MODELS, "sac_convert"])
    assert hub.dependencies == ["torch", "torchvision"]
    for name in MODELS:
        doc = getattr(hub, name).__doc__
        assert f"build_model({name!r}" in doc and "output_stride=8" in doc and "[N, num_classes, H, W]" in doc
    assert "scale-adaptive" in hub.sac_convert.__doc__


@pytest.mark.parametrize("name", list(MODELS))
def test_hub_builds_each_model(name: str) -> None:
    model = torch.hub.load(str(REPO), name, source="local", num_classes=3, backbone_weights=None, output_stride=16)
    assert isinstance(model, DilatedFCN) and model.backbone.depth == int(name.rpartition("resnet")[2])
    assert model.backbone.output_stride == 16 and model.classifier.out_channels == 3
    scheme = name.rpartition("_resnet")[0]
    regressors = {"fcn": set(), "single": {"classifier"}, "multiple": {"res5", "classifier"}}[scheme.rpartition("_")[2]]
    # SAC models regress scales, their deformable rivals offsets and masks, in the same places.
    assert set(model.scale_regressors) == (set() if scheme.startswith("dcn_") else regressors)
    assert set(getattr(model, "offset_predictors", {})) == (regressors if scheme.startswith("dcn_") else set())
    if model.backbone.depth == 18:  # ResNet-50/101 are only built: their forward is tested elsewhere
        with torch.no_grad():
            out = model.eval()(torch.randn(1, 3, 64, 64))["out"]
        assert out.shape == (1, 3, 64, 64)


def test_hub_rejects_unknown_options_as_build_model_does() -> None:
    with pytest.raises(TypeError, match=r"unknown options \['colour'\]"):
        torch.hub.load(str(REPO), "fcn_resnet18", source="local", num_classes=3, colour="red")
    with pytest.raises(TypeError, match="apply to sac_\\* models only"):
        torch.hub.load(str(REPO), "fcn_resnet18", source="local", num_classes=3, min_scale=0.5)


def test_hub_sac_convert() -> None:
    model = torchvision.models.resnet18()
    assert torch.hub.load(str(REPO), "sac_convert", model, source="local", stages=("layer3",)) is model
    assert isinstance(model.layer3, SACStage) and not isinstance(model.layer4, SACStage)
