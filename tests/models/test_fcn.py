"""The paper's models: shapes, parameters, baseline equivalence at scale 1, the "-only" freeze, builders."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from sacseg.models import MODELS, Upsample, build_model, load_baseline, load_baseline_and_freeze
from sacseg.models.fcn import bilinear_kernel
from sacseg.nn import FrozenBatchNorm2d, ScaleAdaptiveConv2d

VARIANTS = ["fcn", "sac_single", "sac_multiple"]
SCALE_NAMES = {"fcn": set(), "sac_single": {"classifier"}, "sac_multiple": {"classifier", "res5"}}


def _forward(model: nn.Module, images: torch.Tensor) -> dict:
    with torch.no_grad():
        return model.eval()(images)


def _check_output(output: dict, variant: str, size: tuple[int, int], num_classes: int, output_stride: int) -> None:
    assert tuple(output["out"].shape) == (1, num_classes, *size)
    assert set(output["scales"]) == SCALE_NAMES[variant]
    grid = tuple(math.ceil(s / output_stride) for s in size)
    for scale in output["scales"].values():
        assert tuple(scale.shape) == (1, 1, *grid)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("output_stride", [8, 16])
def test_output_shapes_at_an_odd_input_size(variant: str, output_stride: int):
    torch.manual_seed(0)
    model = build_model(f"{variant}_resnet18", 5, output_stride=output_stride)
    _check_output(_forward(model, torch.randn(1, 3, 65, 47)), variant, (65, 47), 5, output_stride)


@pytest.mark.parametrize("name", ["sac_multiple_resnet50", "sac_single_resnet101"])
def test_output_shapes_of_the_bottleneck_depths(name: str):
    model = build_model(name, 3, output_stride=16, upsample="bilinear")
    _check_output(_forward(model, torch.randn(1, 3, 33, 47)), name.rsplit("_", 1)[0], (33, 47), 3, 16)


@pytest.mark.parametrize("size", [(64, 64), (65, 47), (17, 9)])
@pytest.mark.parametrize("factor", [8, 16])
def test_deconv_and_bilinear_upsampling_agree_away_from_the_border(size: tuple[int, int], factor: int):
    logits = torch.randn(2, 3, math.ceil(size[0] / factor), math.ceil(size[1] / factor))
    deconv = Upsample(3, factor, "deconv")(logits, size)
    bilinear = Upsample(3, factor, "bilinear")(logits, size)
    assert deconv.shape == bilinear.shape == (2, 3, *size)
    inner = (slice(None), slice(None), slice(factor, size[0] - factor), slice(factor, size[1] - factor))
    torch.testing.assert_close(deconv[inner], bilinear[inner], rtol=1e-5, atol=1e-5)
    assert list(Upsample(3, factor).state_dict()) == []  # fixed deconvolution: nothing learnt or stored


def test_upsample_checks():
    assert bilinear_kernel(2)[:, 0].tolist() == pytest.approx([0.0625, 0.1875, 0.1875, 0.0625])
    with pytest.raises(ValueError, match="upsample must be one of deconv, bilinear, got 'nearest'"):
        Upsample(3, 8, "nearest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at most 16x16"):
        Upsample(3, 8)(torch.randn(1, 3, 2, 2), (17, 16))


@pytest.mark.parametrize("depth", [18, 50])
def test_sac_models_have_the_baseline_parameters_plus_exactly_the_regressors(depth: int):
    baseline = dict(build_model(f"fcn_resnet{depth}", 19).named_parameters())
    backbone = build_model(f"fcn_resnet{depth}", 19).backbone
    regressor_sizes = {
        "classifier": backbone.out_channels * 9 + 1,  # a 3x3 conv on res5 to one channel, with bias
        "res5": backbone.res4_channels * 9 + 1,  # a 3x3 conv on res4
    }
    for variant, regressors in (("sac_single", ["classifier"]), ("sac_multiple", ["classifier", "res5"])):
        params = dict(build_model(f"{variant}_resnet{depth}", 19).named_parameters())
        extra = {k: v.shape for k, v in params.items() if k not in baseline}
        assert {k: v.shape for k, v in params.items() if k in baseline} == {k: v.shape for k, v in baseline.items()}
        assert set(extra) == {f"scale_regressors.{r}.conv.{p}" for r in regressors for p in ("weight", "bias")}
        assert sum(math.prod(s) for s in extra.values()) == sum(regressor_sizes[r] for r in regressors)
        assert sum(p.numel() for p in params.values()) == sum(p.numel() for p in baseline.values()) + sum(
            regressor_sizes[r] for r in regressors
        )


def test_state_dicts_move_between_baseline_and_sac_models():
    baseline = build_model("fcn_resnet18", 4)
    sac = build_model("sac_multiple_resnet18", 4)
    missing, unexpected = sac.load_state_dict(baseline.state_dict(), strict=False)
    assert unexpected == [] and set(missing) == {k for k in sac.state_dict() if k.startswith("scale_regressors.")}
    missing, unexpected = baseline.load_state_dict(sac.state_dict(), strict=False)
    assert missing == [] and set(unexpected) == {k for k in sac.state_dict() if k.startswith("scale_regressors.")}


@pytest.mark.parametrize("variant", ["sac_single", "sac_multiple"])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_sac_with_unit_scales_is_the_baseline(variant: str, output_stride: int):
    torch.manual_seed(0)
    baseline = build_model("fcn_resnet18", 5, output_stride=output_stride)
    sac = build_model(f"{variant}_resnet18", 5, output_stride=output_stride)
    sac.load_state_dict(baseline.state_dict(), strict=False)
    images = torch.randn(1, 3, 41, 37)
    sac_out = _forward(sac, images)
    assert all(torch.equal(s, torch.ones_like(s)) for s in sac_out["scales"].values())
    torch.testing.assert_close(sac_out["out"], _forward(baseline, images)["out"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bound", ["clip", "smooth"])
def test_fresh_sac_model_with_real_statistics_starts_as_the_baseline(
    bound: str, real_images: torch.Tensor, real_bn_statistics: Callable[[nn.Module], nn.Module]
):
    # As built, with no weights forced: eq. (1) means scales of 1 on the feature magnitudes of real
    # images (batch norm fitted to them), for either bound.
    torch.manual_seed(0)
    sac = real_bn_statistics(build_model("sac_multiple_resnet18", 5, scale_bound=bound))
    baseline = build_model("fcn_resnet18", 5).eval()
    baseline.load_state_dict(sac.state_dict(), strict=False)
    sac_out, expected = _forward(sac, real_images), _forward(baseline, real_images)["out"]
    for name, scale in sac_out["scales"].items():
        assert (scale - 1).abs().max().item() <= 0.01, f"{name}: scales {scale.min().item():.3f}..{scale.max().item():.3f}"
    torch.testing.assert_close(sac_out["out"], expected, rtol=0, atol=1e-4 * expected.abs().max().item())


@pytest.mark.parametrize("variant", ["sac_single", "sac_multiple"])
def test_gradients_reach_the_regressors(variant: str):
    torch.manual_seed(0)
    model = build_model(f"{variant}_resnet18", 3).train()
    model(torch.randn(2, 3, 33, 33))["out"].logsumexp(1).sum().backward()
    for name, regressor in model.scale_regressors.items():
        grad = regressor.conv.weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def _baseline_state(num_classes: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    baseline = build_model("fcn_resnet18", num_classes).train()
    baseline(torch.randn(2, 3, 33, 33))  # non-trivial running statistics
    return baseline.state_dict()


@pytest.mark.parametrize("variant", ["sac_single", "sac_multiple"])
def test_only_schemes_train_the_regressors_and_nothing_else(variant: str):
    state = _baseline_state()
    model = load_baseline_and_freeze(build_model(f"{variant}_resnet18", 3), {"model": state})
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert trainable == {k for k in model.state_dict() if k.startswith("scale_regressors.")}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for key, value in state.items():
        torch.testing.assert_close(before[key], value, rtol=0, atol=0, msg=key)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    model.train()
    for _ in range(2):  # the second step also exercises the momentum buffers
        optimizer.zero_grad()
        output = model(torch.randn(2, 3, 33, 33))
        nn.functional.cross_entropy(output["out"], torch.randint(0, 3, (2, 33, 33))).backward()
        optimizer.step()
    after = model.state_dict()
    for key, value in before.items():
        if key.startswith("scale_regressors."):
            continue
        torch.testing.assert_close(after[key], value, rtol=0, atol=0, msg=key)
    assert not torch.equal(after["scale_regressors.classifier.conv.weight"], before["scale_regressors.classifier.conv.weight"])


def test_only_scheme_through_the_builder_option(tmp_path: Path):
    state = _baseline_state()
    path = tmp_path / "baseline.pth"
    torch.save(state, path)
    model = build_model("sac_single_resnet18", 3, baseline_checkpoint=path)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(model.state_dict()["classifier.weight"], state["classifier.weight"])
    assert [k for k, p in model.named_parameters() if p.requires_grad] == [
        "scale_regressors.classifier.conv.weight",
        "scale_regressors.classifier.conv.bias",
    ]


def test_only_scheme_refuses_wrong_checkpoints(tmp_path: Path):
    sac_state = build_model("sac_single_resnet18", 3).state_dict()
    with pytest.raises(ValueError, match=r"unexpected keys \['scale_regressors\.classifier\.conv\.bias'"):
        load_baseline_and_freeze(build_model("sac_single_resnet18", 3), sac_state)
    with pytest.raises(ValueError, match=r"shape mismatches \[.*'classifier\.bias: \(4,\) instead of \(3,\)'"):
        load_baseline_and_freeze(build_model("sac_single_resnet18", 3), build_model("fcn_resnet18", 4).state_dict())
    with pytest.raises(ValueError, match="no scale regressors"):
        load_baseline_and_freeze(build_model("fcn_resnet18", 3), build_model("fcn_resnet18", 3).state_dict())
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_baseline_and_freeze(build_model("sac_single_resnet18", 3), tmp_path / "missing.pth")


def test_frozen_bn_keeps_keys_and_statistics():
    state = _baseline_state()
    model = build_model("fcn_resnet18", 3, frozen_bn=True)
    assert list(model.state_dict()) == list(state)
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    model.load_state_dict(state)
    model.train()
    model(torch.randn(2, 3, 33, 33))
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0, msg=key)


def test_classifier_dilation_and_sac_layers():
    model = build_model("sac_single_resnet18", 3, output_stride=16)
    assert isinstance(model.classifier, ScaleAdaptiveConv2d) and model.classifier.dilation == (2, 2)
    model = build_model("fcn_resnet18", 3, classifier_dilation=1)
    assert model.classifier.dilation == (1, 1) and model.classifier.padding == (1, 1)
    model = build_model("sac_multiple_resnet18", 3, min_scale=0.5, max_scale=2.0)
    assert all(r.min_scale == 0.5 and r.max_scale == 2.0 for r in model.scale_regressors.values())


def test_builder_errors():
    assert len(MODELS) == 15  # fcn, sac_single, sac_multiple, dcn_single, dcn_multiple at depths 18, 50, 101
    with pytest.raises(ValueError, match="unknown model 'fcn_resnet34'; valid: fcn_resnet18, fcn_resnet50"):
        build_model("fcn_resnet34", 3)
    with pytest.raises(TypeError, match=r"unknown options \['colour', 'outputstride'\].*valid: output_stride"):
        build_model("fcn_resnet18", 3, outputstride=8, colour=1)
    with pytest.raises(TypeError, match=r"fcn_resnet18 has no scale-adaptive layers.*\['min_scale'\]"):
        build_model("fcn_resnet18", 3, min_scale=0.5)
    with pytest.raises(ValueError, match="either backbone_weights or baseline_checkpoint"):
        build_model("sac_single_resnet18", 3, backbone_weights="imagenet", baseline_checkpoint="x.pth")
    with pytest.raises(ValueError, match="output_stride must be 8 or 16"):
        build_model("fcn_resnet18", 3, output_stride=32)


def test_scale_bound_option_reaches_every_regressor():
    model = build_model("sac_multiple_resnet18", 3, scale_bound="smooth", min_scale=0.5, max_scale=2.0)
    assert {r.bound for r in model.scale_regressors.values()} == {"smooth"}
    assert {r.min_scale for r in model.scale_regressors.values()} == {0.5}
    assert {r.bound for r in build_model("sac_single_resnet18", 3).scale_regressors.values()} == {"clip"}
    with pytest.raises(TypeError, match=r"fcn_resnet18 has no scale-adaptive layers.*\['scale_bound'\]"):
        build_model("fcn_resnet18", 3, scale_bound="smooth")


@pytest.mark.parametrize("variant", ["sac_single", "sac_multiple"])
def test_sac_with_maps_held_at_1_trains_as_the_baseline(variant: str, training_step: Callable[..., dict]):
    """min_scale == max_scale == 1: the same outputs and the same gradients of every shared weight, in
    training mode (batch statistics), so a study's control row differs from SAC only by learned scales."""
    torch.manual_seed(0)
    baseline = build_model("fcn_resnet18", 5)
    held = build_model(f"{variant}_resnet18", 5, min_scale=1.0, max_scale=1.0)
    held.load_state_dict(baseline.state_dict(), strict=False)
    with torch.no_grad():  # regressors that would move the maps far from 1 if they were not held
        for regressor in held.scale_regressors.values():
            regressor.conv.weight.normal_(0.0, 0.1)
    images, target = torch.randn(2, 3, 48, 40), torch.randint(0, 5, (2, 48, 40))
    outputs = {name: training_step(model, images, target) for name, model in (("baseline", baseline), ("held", held))}
    assert outputs["held"]["scales"] and all(torch.equal(s, torch.ones_like(s)) for s in outputs["held"]["scales"].values())
    torch.testing.assert_close(outputs["held"]["out"], outputs["baseline"]["out"], rtol=1e-5, atol=1e-5)
    held_params = dict(held.named_parameters())
    for name, param in baseline.named_parameters():
        torch.testing.assert_close(held_params[name].grad, param.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert all(p.grad is None or not p.grad.any() for p in held.scale_regressors.parameters())


def test_load_baseline_starts_a_sac_model_from_baseline_or_sac_weights(tmp_path: Path):
    baseline = build_model("fcn_resnet18", 3)
    sac = load_baseline(build_model("sac_multiple_resnet18", 3), baseline.state_dict())
    assert all(torch.equal(sac.state_dict()[k], v) for k, v in baseline.state_dict().items())
    assert all(p.requires_grad for p in sac.parameters())
    again = load_baseline(build_model("sac_multiple_resnet18", 3), {"model": sac.state_dict()})
    assert all(torch.equal(again.state_dict()[k], v) for k, v in sac.state_dict().items())
    with pytest.raises(ValueError, match=r"holds scale regressors \['scale_regressors"):
        load_baseline(build_model("fcn_resnet18", 3), sac.state_dict())
    with pytest.raises(ValueError, match=r"start\.pt does not fit this model.*shape mismatches"):
        load_baseline(build_model("sac_single_resnet18", 4), baseline.state_dict(), source="start.pt")
