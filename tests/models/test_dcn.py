"""The deformable rival (DCNv2 in SAC's places): torchvision's function, the baseline at start, gradients, weights, lr, builders."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import deform_conv2d

from sacseg.config import TrainConfig
from sacseg.factory import build_model_from_config
from sacseg.models import DeformableFCN, build_model, load_baseline, load_baseline_and_freeze
from sacseg.nn import ModulatedDeformConv2d, OffsetMaskPredictor, deformation_scale, modulated_deform_conv2d
from sacseg.ops.sac_conv import sac_conv2d
from sacseg.training.optim import build_optimizer

pytestmark = pytest.mark.usefixtures("single_thread")

VARIANTS = ["dcn_single", "dcn_multiple"]
MAPS = {"dcn_single": {"classifier"}, "dcn_multiple": {"classifier", "res5"}}


def _taps(kh: int, kw: int, dilation: tuple[int, int]) -> torch.Tensor:
    """``[kh * kw, 2]``: each tap's ``(y, x)`` place in the plain kernel, centre 0, row-major."""
    ys = (torch.arange(kh, dtype=torch.float64) - kh // 2) * dilation[0]
    xs = (torch.arange(kw, dtype=torch.float64) - kw // 2) * dilation[1]
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(kh * kw, 2)


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "padding", "dilation"),
    [
        ((7, 9), (3, 3), (1, 1), (1, 1), (1, 1)),
        ((8, 6), (3, 3), (2, 1), (2, 0), (2, 1)),
        ((1, 5), (1, 3), (1, 1), (0, 1), (1, 1)),
    ],
)
def test_modulated_deform_conv2d_is_torchvisions(
    size: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int]
) -> None:
    """Value and every gradient, in float64, with offsets that throw many taps off the input (zero there)."""
    torch.manual_seed(0)
    (h, w), (kh, kw) = size, kernel
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    inputs = [
        torch.randn(2, 3, h, w, dtype=torch.float64),
        3 * torch.randn(2, 2 * kh * kw, ho, wo, dtype=torch.float64),
        2 * torch.rand(2, kh * kw, ho, wo, dtype=torch.float64),
        torch.randn(4, 3, kh, kw, dtype=torch.float64),
        torch.randn(4, dtype=torch.float64),
    ]
    for tensor in inputs:
        tensor.requires_grad_(True)
    x, offset, mask, weight, bias = inputs
    ours = modulated_deform_conv2d(x, offset, mask, weight, bias, stride, padding, dilation)
    theirs = deform_conv2d(x, offset, weight, bias, stride, padding, dilation, mask)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    for got, expected in zip(torch.autograd.grad(ours.sin().sum(), inputs), torch.autograd.grad(theirs.sin().sum(), inputs)):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("value", [0.6, 1.5, 2.0])
def test_dcn_with_sac_offsets_is_sac_and_its_scale_is_sacs(value: float) -> None:
    """Offsets ``(s - 1) * p_k`` and masks of 1 compute SAC at scale ``s`` (so DCN can express any SAC
    map), and :func:`deformation_scale` returns that ``s``; a pure shift of every tap has scale 1."""
    torch.manual_seed(0)
    x, weight = torch.randn(2, 3, 9, 11, dtype=torch.float64), torch.randn(4, 3, 3, 3, dtype=torch.float64)
    scale = value * (1 + 0.3 * torch.rand(2, 1, 9, 11, dtype=torch.float64))
    offset = ((scale - 1)[:, :, None] * _taps(3, 3, (2, 2)).reshape(1, 9, 2, 1, 1)).reshape(2, 18, 9, 11)
    mask = torch.ones(2, 9, 9, 11, dtype=torch.float64)
    expected = sac_conv2d(x, scale, weight, None, (1, 1), (2, 2), (2, 2))
    torch.testing.assert_close(modulated_deform_conv2d(x, offset, mask, weight, None, 1, 2, 2), expected, rtol=1e-10, atol=1e-10)
    guide = torch.cat((offset, mask), dim=1)
    torch.testing.assert_close(deformation_scale(guide, (3, 3), (2, 2)), scale, rtol=1e-12, atol=1e-12)
    shift = torch.tensor([0.7, -1.3], dtype=torch.float64).repeat(9)[None, :, None, None].expand(2, 18, 9, 11)
    shifted = torch.cat((shift, mask), dim=1)
    torch.testing.assert_close(deformation_scale(shifted, (3, 3), (2, 2)), torch.ones_like(scale), rtol=0, atol=1e-12)


def test_layer_and_predictor_shapes_names_and_start() -> None:
    conv = nn.Conv2d(6, 4, 3, padding=2, dilation=2)
    layer = ModulatedDeformConv2d.from_conv(conv)
    # torchvision's own layer names its parameters alike: its state dicts load here.
    assert list(layer.state_dict()) == list(torchvision.ops.DeformConv2d(6, 4, 3).state_dict()) == ["weight", "bias"]
    predictor = OffsetMaskPredictor(6)
    features = torch.randn(2, 6, 10, 7)
    guide = predictor(features)
    assert guide.shape == (2, 27, 10, 7)
    offsets, masks = guide.split((18, 9), dim=1)
    assert torch.equal(offsets, torch.zeros_like(offsets)) and torch.equal(masks, torch.ones_like(masks))
    torch.testing.assert_close(layer(features, guide), conv(features), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="guide must have 3 \\* 9 channels"):
        layer(features, guide[:, :18])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("output_stride", [8, 16])
def test_fresh_dcn_model_trains_as_the_baseline(variant: str, output_stride: int, training_step: Callable[..., dict]) -> None:
    """As built: the baseline's weights drawn alike (same seed), zero offsets and masks of 1, so the same
    outputs and the same gradients of every shared weight, in training mode; every scale map is 1."""
    torch.manual_seed(0)
    baseline = build_model("fcn_resnet18", 5, output_stride=output_stride)
    torch.manual_seed(0)
    dcn = build_model(f"{variant}_resnet18", 5, output_stride=output_stride)
    assert isinstance(dcn, DeformableFCN)
    shared = baseline.state_dict()
    assert all(torch.equal(dcn.state_dict()[k], v) for k, v in shared.items())
    assert {k for k in dcn.state_dict() if k not in shared} == {
        f"offset_predictors.{m}.conv.{p}" for m in MAPS[variant] for p in ("weight", "bias")
    }
    images, target = torch.randn(2, 3, 48, 40), torch.randint(0, 5, (2, 48, 40))
    outputs = {name: training_step(model, images, target) for name, model in (("baseline", baseline), ("dcn", dcn))}
    torch.testing.assert_close(outputs["dcn"]["out"], outputs["baseline"]["out"], rtol=1e-5, atol=1e-5)
    grid = (math.ceil(48 / output_stride), math.ceil(40 / output_stride))
    assert set(outputs["dcn"]["scales"]) == MAPS[variant]
    for scale in outputs["dcn"]["scales"].values():
        assert scale.shape == (2, 1, *grid) and torch.equal(scale, torch.ones_like(scale))
    dcn_params = dict(dcn.named_parameters())
    for name, param in baseline.named_parameters():
        torch.testing.assert_close(dcn_params[name].grad, param.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradients_reach_the_offset_and_mask_predictors(variant: str) -> None:
    torch.manual_seed(0)
    model = build_model(f"{variant}_resnet18", 3).train()
    model(torch.randn(2, 3, 33, 33))["out"].logsumexp(1).sum().backward()
    assert set(model.offset_predictors) == MAPS[variant]
    for name, predictor in model.offset_predictors.items():
        grad = predictor.conv.weight.grad
        assert grad is not None and torch.isfinite(grad).all(), name
        # Both parts learn from the first step: the offsets' rows and the masks'.
        assert grad[:18].abs().sum() > 0 and grad[18:].abs().sum() > 0, name


def test_baseline_and_torchvision_weights_load_into_dcn_models(tmp_path: Path) -> None:
    baseline = build_model("fcn_resnet18", 3)
    dcn = load_baseline(build_model("dcn_multiple_resnet18", 3), baseline.state_dict())
    assert all(torch.equal(dcn.state_dict()[k], v) for k, v in baseline.state_dict().items())
    with pytest.raises(ValueError, match=r"holds regressors \['offset_predictors\.classifier\.conv\.bias'"):
        load_baseline(build_model("fcn_resnet18", 3), build_model("dcn_single_resnet18", 3).state_dict())
    # A torchvision ResNet's state dict (torchvision's names) fills the backbone, res5's deformable layers included.
    resnet = torchvision.models.resnet18()
    torch.save(resnet.state_dict(), tmp_path / "r18.pth")
    model = build_model("dcn_multiple_resnet18", 3, backbone_weights=str(tmp_path / "r18.pth"))
    assert isinstance(model.backbone.layer4[1].conv2, ModulatedDeformConv2d)
    assert torch.equal(model.backbone.layer4[1].conv2.weight, resnet.layer4[1].conv2.weight)


def test_predictors_train_at_the_regressors_lr_and_alone_in_the_only_scheme(
    tiny_config: Callable[..., TrainConfig], tmp_path: Path
) -> None:
    cfg = tiny_config(tmp_path, model="dcn_multiple_resnet18", scale_lr_mult=0.1)
    model = build_model_from_config(cfg)
    assert isinstance(model, DeformableFCN)
    main, predictors = build_optimizer(cfg, model).param_groups
    assert main["lr"] == pytest.approx(0.01) and predictors["lr"] == pytest.approx(0.001)
    assert {id(p) for p in predictors["params"]} == {id(p) for p in model.offset_predictors.parameters()}
    assert len(predictors["params"]) == 4
    only = load_baseline_and_freeze(build_model("dcn_single_resnet18", 3), build_model("fcn_resnet18", 3).state_dict())
    assert {n for n, p in only.named_parameters() if p.requires_grad} == {
        "offset_predictors.classifier.conv.weight",
        "offset_predictors.classifier.conv.bias",
    }


def test_dcn_builder_options() -> None:
    with pytest.raises(TypeError, match=r"dcn_single_resnet18 has no scale-adaptive layers.*\['max_scale', 'min_scale'\]"):
        build_model("dcn_single_resnet18", 3, min_scale=0.5, max_scale=2.0)
    model = build_model("dcn_multiple_resnet50", 4, output_stride=16, classifier_dilation=1)
    assert model.classifier.dilation == (1, 1) and isinstance(model.backbone.layer4[0].conv2, ModulatedDeformConv2d)
    assert not any(isinstance(m, ModulatedDeformConv2d) for m in model.backbone.layer3.modules())
    assert isinstance(model.backbone.layer4[0].conv1, nn.Conv2d)  # a bottleneck's 1x1 convolutions stay plain
    with pytest.raises(ValueError, match="places must be single or multiple"):
        DeformableFCN(18, 3, "none")
