"""torch.hub: hubconf.py at the repository root exposes every paper model and sac_convert."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from sacseg.models import MODELS, DilatedFCN, SACStage

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("single_thread")


def test_hub_lists_every_model_and_sac_convert(monkeypatch: pytest.MonkeyPatch) -> None:
    # torch.hub.list and help read GitHub repositories only: their download step is pointed at this clone.
    monkeypatch.setattr(torch.hub, "_get_cache_or_reload", lambda *args, **kwargs: str(REPO))
    assert sorted(torch.hub.list("owner/sacseg")) == sorted([*MODELS, "sac_convert"])
    for name in MODELS:
        doc = torch.hub.help("owner/sacseg", name)
        assert f"build_model({name!r}" in doc and "output_stride=8" in doc and "[N, num_classes, H, W]" in doc
    assert "scale-adaptive" in torch.hub.help("owner/sacseg", "sac_convert")


@pytest.mark.parametrize("name", list(MODELS))
def test_hub_builds_each_model(name: str) -> None:
    model = torch.hub.load(str(REPO), name, source="local", num_classes=3, backbone_weights=None, output_stride=16)
    assert isinstance(model, DilatedFCN) and model.backbone.depth == int(name.rpartition("resnet")[2])
    assert model.backbone.output_stride == 16 and model.classifier.out_channels == 3
    assert (
        set(model.scale_regressors)
        == {"fcn": set(), "sac_single": {"classifier"}, "sac_multiple": {"res5", "classifier"}}[name.rpartition("_resnet")[0]]
    )
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
