"""sac_convert: SAC stages in torchvision ResNets keep the output at scale 1 and learn scales."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torchvision
from torch import nn

from sacseg.models.convert import SACStage, sac_block, sac_convert
from sacseg.models.resnet import BasicBlock, Bottleneck
from sacseg.nn import ScaleAdaptiveConv2d, ScaleRegressor


def test_resnet50_unchanged_at_scale_one_and_regressors_learn():
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    images = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        expected = model(images)
    # layer3 starts with a stride-2 3x3 convolution: its scale map is resampled to that grid.
    assert sac_convert(model, stages=("layer3", "layer4")) is model
    for stage in (model.layer3, model.layer4):
        assert isinstance(stage, SACStage)
        assert all(isinstance(stage.get_submodule(str(i)), Bottleneck) for i in range(stage.num_blocks))
    sac_layers = [m for m in model.modules() if isinstance(m, ScaleAdaptiveConv2d)]
    assert len(sac_layers) == 6 + 3  # one 3x3 convolution per bottleneck
    assert not any(p.is_meta for p in model.parameters())
    out = model(images)
    assert out.shape == (2, 1000)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    out.square().mean().backward()
    for stage in (model.layer3, model.layer4):
        grad = stage.regressor.conv.weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_resnet18_keeps_state_dict_keys_and_scales_change_the_output():
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    original = model.state_dict()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(images)
    sac_convert(model, stages=("layer4",), min_scale=0.5, max_scale=2.0)
    missing, unexpected = model.load_state_dict(original, strict=False)
    assert sorted(missing) == ["layer4.regressor.conv.bias", "layer4.regressor.conv.weight"]
    assert unexpected == []
    # BasicBlock: both 3x3 convolutions become SAC, the first one strided.
    block = model.layer4.get_submodule("0")
    assert isinstance(block, BasicBlock)
    assert isinstance(block.conv1, ScaleAdaptiveConv2d) and block.conv1.stride == (2, 2)
    assert isinstance(block.conv2, ScaleAdaptiveConv2d)
    assert model.layer4.regressor.min_scale == 0.5 and model.layer4.regressor.max_scale == 2.0

    features = torch.randn(1, 256, 4, 4)
    with torch.no_grad():
        out, scale = model.layer4.forward_with_scale(features)
        assert out.shape == (1, 512, 2, 2) and scale.shape == (1, 1, 2, 2)  # the stage's output grid
        # A clearly non-unit scale must change the output: the SAC layers are really used.
        nn.init.zeros_(model.layer4.regressor.conv.weight)
        nn.init.constant_(model.layer4.regressor.conv.bias, 1.7)
        changed = model(images)
    assert (changed - expected).abs().max() > 1e-3 * expected.abs().max()


def test_dilated_bottleneck_stage_converts_with_its_dilation():
    torch.manual_seed(0)
    model = torchvision.models.resnet50(replace_stride_with_dilation=[False, False, True]).eval()
    sac_convert(model, stages=("layer4",))
    assert model.layer4.get_submodule("1").conv2.dilation == (2, 2)
    features = torch.randn(1, 1024, 5, 6)
    with torch.no_grad():
        out, scale = model.layer4.forward_with_scale(features)
    assert out.shape == (1, 2048, 5, 6) and scale.shape == (1, 1, 5, 6)


def test_converted_resnet50_with_real_statistics_starts_as_the_original(
    real_images: torch.Tensor, real_bn_statistics: Callable[[nn.Module], nn.Module]
):
    # Batch norm fitted to real images: the regressors read features of the magnitudes a trained
    # network gives, where small random regressor weights already move the scales by tens of percent.
    torch.manual_seed(0)
    model = real_bn_statistics(torchvision.models.resnet50())
    with torch.no_grad():
        expected = model(real_images)
    sac_convert(model, stages=("layer3", "layer4"))
    maps: dict[str, torch.Tensor] = {}
    for name in ("layer3", "layer4"):
        getattr(model, name).regressor.register_forward_hook(lambda m, i, o, name=name: maps.__setitem__(name, o))
    with torch.no_grad():
        out = model(real_images)
    assert set(maps) == {"layer3", "layer4"}
    for name, scale in maps.items():
        assert (scale - 1).abs().max().item() <= 0.01, f"{name}: scales {scale.min().item():.3f}..{scale.max().item():.3f}"
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-4 * expected.abs().max().item())


def test_bad_stages_and_blocks_are_rejected():
    model = torchvision.models.resnet18()
    with pytest.raises(ValueError, match="layer9"):
        sac_convert(model, stages=("layer9",))
    with pytest.raises(TypeError, match="nn.Sequential"):
        sac_convert(model, stages=("conv1",))
    with pytest.raises(TypeError, match="does not have the torchvision BasicBlock/Bottleneck layout"):
        sac_block(nn.Sequential(nn.Conv2d(3, 3, 3)))
    with pytest.raises(ValueError, match="at least one block"):
        SACStage([], ScaleRegressor(3))


def test_a_converted_stage_is_indexed_like_the_sequential_it_replaced():
    model = torchvision.models.resnet50()
    blocks = list(model.layer3)
    sac_convert(model, stages=("layer3",))
    stage = model.layer3
    assert len(stage) == stage.num_blocks == 6
    assert stage[0] is stage.get_submodule("0") and stage[-1] is stage.get_submodule("5")
    assert stage[1:3] == [stage.get_submodule("1"), stage.get_submodule("2")]
    assert list(stage) == [stage.get_submodule(str(i)) for i in range(6)]  # the blocks, without the regressor
    # The converted blocks hold the original's batch norms: the same modules, in the same places.
    assert [block.bn2 for block in stage] == [block.bn2 for block in blocks]
    with pytest.raises(IndexError):
        stage[6]
    hooked: list[torch.Tensor] = []
    model.layer3[-1].register_forward_hook(lambda m, i, o: hooked.append(o))  # as Grad-CAM-style code does
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, 64, 64))
    assert len(hooked) == 1 and hooked[0].shape == (1, 1024, 4, 4)


def test_converting_a_stage_twice_says_it_is_already_converted():
    model = sac_convert(torchvision.models.resnet18())
    with pytest.raises(ValueError, match="stage 'layer4' is already converted"):
        sac_convert(model)
