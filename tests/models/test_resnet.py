"""Dilated ResNet backbone: geometry per output stride, torchvision names and weight loading."""

from __future__ import annotations

import math
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from sacseg.models import DilatedResNet, load_backbone_weights, stage_geometry
from sacseg.models.resnet import IMAGENET_WEIGHTS
from sacseg.nn import ScaleAdaptiveConv2d


def test_stage_geometry():
    assert stage_geometry(8) == [(1, 1), (2, 1), (1, 2), (1, 4)]
    assert stage_geometry(16) == [(1, 1), (2, 1), (2, 1), (1, 2)]
    with pytest.raises(ValueError, match="output_stride must be 8 or 16, got 32"):
        stage_geometry(32)


@pytest.mark.parametrize("depth", [18, 50])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_every_3x3_of_a_dilated_stage_is_dilated_first_block_included(depth: int, output_stride: int):
    backbone = DilatedResNet(depth, output_stride)
    for index, (stride, dilation) in enumerate(stage_geometry(output_stride)):
        stage = getattr(backbone, f"layer{index + 1}")
        convs = [m for m in stage.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
        assert convs and all(c.dilation == (dilation, dilation) and c.padding == (dilation, dilation) for c in convs)
        assert convs[0].stride == (stride, stride) and all(c.stride == (1, 1) for c in convs[1:])
    assert backbone.res5_dilation == stage_geometry(output_stride)[3][1]


@pytest.mark.parametrize("output_stride", [8, 16])
def test_feature_sizes_are_ceil_of_input_over_stride(output_stride: int):
    backbone = DilatedResNet(18, output_stride).eval()
    with torch.no_grad():
        res4 = backbone.forward_res4(torch.randn(1, 3, 65, 47))
        res5 = backbone(torch.randn(1, 3, 65, 47))
    size = (math.ceil(65 / output_stride), math.ceil(47 / output_stride))
    assert tuple(res4.shape) == (1, backbone.res4_channels, *size)
    assert tuple(res5.shape) == (1, backbone.out_channels, *size)


def test_sac_res5_makes_every_layer4_3x3_scale_adaptive_and_needs_the_scale():
    backbone = DilatedResNet(18, 8, sac_res5=True)
    sac = [name for name, m in backbone.named_modules() if isinstance(m, ScaleAdaptiveConv2d)]
    assert sac == ["layer4.0.conv1", "layer4.0.conv2", "layer4.1.conv1", "layer4.1.conv2"]
    with pytest.raises(ValueError, match="pass a scale map"):
        backbone(torch.randn(1, 3, 32, 32))


def test_torchvision_resnet101_state_dict_loads_from_a_file(tmp_path: Path):
    torch.manual_seed(0)
    reference = torchvision.models.resnet101()
    path = tmp_path / "resnet101.pth"
    torch.save(reference.state_dict(), path)
    backbone = DilatedResNet(101, 8)
    load_backbone_weights(backbone, path)
    expected = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    loaded = backbone.state_dict()
    assert list(loaded) == list(expected)
    for key, value in expected.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)


def test_a_state_dict_of_another_architecture_is_refused_naming_keys_and_file(tmp_path: Path):
    state = torchvision.models.resnet18().state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["layer1.0.conv1.weight"]
    path = tmp_path / "odd.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"odd\.pth.*missing keys \['layer1\.0\.conv1\.weight'\].*extra\.weight"):
        load_backbone_weights(DilatedResNet(18), path)
    with pytest.raises(ValueError, match=r"resnet50.*missing keys"):
        torch.save(torchvision.models.resnet18().state_dict(), path)
        load_backbone_weights(DilatedResNet(50), path)
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        load_backbone_weights(DilatedResNet(18), tmp_path / "nothere.pth")


def test_offline_imagenet_download_says_how_to_pass_a_local_file(monkeypatch: pytest.MonkeyPatch):
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    weights_class = type(IMAGENET_WEIGHTS[18])
    monkeypatch.setattr(weights_class, "get_state_dict", offline)
    with pytest.raises(RuntimeError, match=r"backbone_weights='/path/to/resnet18-f37072fd\.pth'") as info:
        load_backbone_weights(DilatedResNet(18), "imagenet")
    assert IMAGENET_WEIGHTS[18].url in str(info.value)
