"""ScaleAdaptiveConv2d and ScaleRegressor: parameters, initialisation, bounds."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sacseg.nn import ScaleAdaptiveConv2d, ScaleRegressor


def test_state_dict_moves_between_conv2d_and_sac():
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2)
    sac = ScaleAdaptiveConv2d(4, 6, 3, stride=2, padding=2, dilation=2)
    assert {k: v.shape for k, v in sac.state_dict().items()} == {k: v.shape for k, v in conv.state_dict().items()}
    sac.load_state_dict(conv.state_dict())
    x = torch.randn(2, 4, 15, 13)
    ones = torch.ones(2, 1, *conv(x).shape[-2:])
    torch.testing.assert_close(sac(x, ones), conv(x))
    conv2 = nn.Conv2d(4, 6, 3)
    conv2.load_state_dict(sac.state_dict())


def test_initialisation_matches_conv2d_statistics():
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 64, 3)
    torch.manual_seed(0)
    sac = ScaleAdaptiveConv2d(64, 64, 3)
    torch.testing.assert_close(sac.weight, conv.weight)
    torch.testing.assert_close(sac.bias, conv.bias)


def test_from_conv_copies_geometry_and_rejects_groups():
    conv = nn.Conv2d(3, 5, (3, 5), stride=(1, 2), padding=(1, 4), dilation=(1, 2), bias=False)
    sac = ScaleAdaptiveConv2d.from_conv(conv)
    x = torch.randn(1, 3, 9, 16)
    torch.testing.assert_close(sac(x, torch.ones(1, 1, *conv(x).shape[-2:])), conv(x))
    with pytest.raises(ValueError, match="groups=2"):
        ScaleAdaptiveConv2d.from_conv(nn.Conv2d(4, 4, 3, groups=2))


def test_even_kernel_rejected():
    with pytest.raises(ValueError, match="odd"):
        ScaleAdaptiveConv2d(3, 3, 2)


@pytest.mark.parametrize("bound", ["clip", "smooth"])
def test_regressor_starts_at_exactly_one_whatever_the_features_and_learns(bound: str):
    torch.manual_seed(0)
    reg = ScaleRegressor(32, bound=bound)
    sac = ScaleAdaptiveConv2d(32, 4, 3, padding=2, dilation=2)
    # Large feature magnitudes, as deep post-ReLU features have: still exactly 1.
    features = 20 * torch.randn(2, 32, 9, 7).relu()
    with torch.no_grad():
        before = reg(features)
    assert before.shape == (2, 1, 9, 7)
    assert torch.equal(before, torch.ones_like(before))
    optimizer = torch.optim.SGD(reg.parameters(), lr=1e-6)
    sac(features, reg(features)).square().mean().backward()
    assert reg.conv.weight.grad.abs().sum() > 0  # zero weights, yet a gradient: the features give it
    optimizer.step()
    with torch.no_grad():
        after = reg(features)
    assert (after - before).abs().max() > 1e-4
    assert after.std() > 0 and ((after > 0.25) & (after < 4.0)).all()  # varies with the features, inside the bounds


def test_regressor_clips_and_removes_non_finite():
    reg = ScaleRegressor(1, kernel_size=1, min_scale=0.5, max_scale=2.0)
    with torch.no_grad():
        reg.conv.weight.fill_(1.0)
        reg.conv.bias.zero_()
    x = torch.tensor([-3.0, 0.2, 1.3, 9.0, float("nan"), float("inf"), -float("inf")]).view(1, 1, 1, 7)
    s = reg(x)
    assert torch.isfinite(s).all()
    torch.testing.assert_close(s.flatten(), torch.tensor([0.5, 0.5, 1.3, 2.0, 1.0, 2.0, 0.5]))


def test_regressor_rejects_bad_bounds():
    with pytest.raises(ValueError, match="min_scale"):
        ScaleRegressor(4, min_scale=2.0, max_scale=1.0)


def test_sac_with_regressor_trains_end_to_end():
    feats = torch.randn(2, 8, 12, 12)
    reg = ScaleRegressor(8)
    sac = ScaleAdaptiveConv2d(8, 3, 3, padding=2, dilation=2)
    out = sac(feats, reg(feats))
    out.square().mean().backward()
    assert reg.conv.weight.grad.abs().sum() > 0 and reg.conv.bias.grad.abs() > 0
    assert sac.weight.grad.abs().sum() > 0


def test_smooth_bound_is_calibrated_at_one_and_stays_inside():
    reg = ScaleRegressor(1, kernel_size=1, min_scale=0.25, max_scale=4.0, bound="smooth")
    with torch.no_grad():
        reg.conv.weight.fill_(1.0)
        reg.conv.bias.zero_()
    # f(1) = 1 and f'(1) = 1: near 1 it moves like the clip does.
    x = torch.tensor([1.0]).view(1, 1, 1, 1).requires_grad_()
    s = reg(x)
    s.sum().backward()
    torch.testing.assert_close(s.flatten(), torch.tensor([1.0]))
    torch.testing.assert_close(x.grad.flatten(), torch.tensor([1.0]))
    # Far past either bound the value stays strictly inside and a gradient still flows back.
    x = torch.tensor([-6.0, 9.0]).view(1, 1, 1, 2).requires_grad_()
    s = reg(x)
    s.sum().backward()
    assert (s > 0.25).all() and (s < 4.0).all()
    assert (s[0, 0, 0, 0] < 0.26) and (s[0, 0, 0, 1] > 3.9)
    assert (x.grad > 0).all()


def test_clip_bound_passes_no_gradient_past_the_bounds():
    reg = ScaleRegressor(1, kernel_size=1, min_scale=0.25, max_scale=4.0)
    with torch.no_grad():
        reg.conv.weight.fill_(1.0)
        reg.conv.bias.zero_()
    x = torch.tensor([-6.0, 1.0, 9.0]).view(1, 1, 1, 3).requires_grad_()
    reg(x).sum().backward()
    torch.testing.assert_close(x.grad.flatten(), torch.tensor([0.0, 1.0, 0.0]))


def test_smooth_bound_removes_non_finite_and_checks_its_range():
    reg = ScaleRegressor(1, kernel_size=1, min_scale=0.5, max_scale=2.0, bound="smooth")
    with torch.no_grad():
        reg.conv.weight.fill_(1.0)
        reg.conv.bias.zero_()
    s = reg(torch.tensor([float("nan"), float("inf"), -float("inf")]).view(1, 1, 1, 3))
    assert torch.isfinite(s).all() and (s >= 0.5).all() and (s <= 2.0).all()
    torch.testing.assert_close(s[0, 0, 0, 0], torch.tensor(1.0))
    with pytest.raises(ValueError, match="min_scale < 1 < max_scale"):
        ScaleRegressor(4, min_scale=1.0, max_scale=4.0, bound="smooth")
    with pytest.raises(ValueError, match="bound"):
        ScaleRegressor(4, bound="tanh")
