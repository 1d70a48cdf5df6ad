"""FrozenBatchNorm2d: BatchNorm2d's eval output and state-dict keys, and nothing a training step can change."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sacseg.nn import FrozenBatchNorm2d


def _trained_bn(channels: int = 5) -> nn.BatchNorm2d:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(channels)
    nn.init.normal_(bn.weight)
    nn.init.normal_(bn.bias)
    bn(torch.randn(4, channels, 6, 6) * 3 + 1)  # moves the running statistics
    return bn.eval()


def test_matches_batchnorm_eval_and_keeps_its_keys():
    bn = _trained_bn()
    frozen = FrozenBatchNorm2d.from_batchnorm(bn)
    assert list(frozen.state_dict()) == list(bn.state_dict())
    x = torch.randn(2, 5, 7, 3)
    torch.testing.assert_close(frozen(x), bn(x), rtol=0, atol=0)
    back = nn.BatchNorm2d(5)
    back.load_state_dict(frozen.state_dict())
    torch.testing.assert_close(back.eval()(x), bn(x), rtol=0, atol=0)


def test_training_changes_nothing():
    frozen = FrozenBatchNorm2d.from_batchnorm(_trained_bn()).train()
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    x = torch.randn(2, 5, 4, 4, requires_grad=True)
    frozen(x).square().sum().backward()
    assert x.grad is not None and list(frozen.parameters()) == []
    for key, value in frozen.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0, msg=key)


def test_missing_num_batches_tracked_is_filled_in_like_batchnorm():
    state = {k: v for k, v in _trained_bn().state_dict().items() if k != "num_batches_tracked"}
    frozen = FrozenBatchNorm2d(5)
    frozen.load_state_dict(state)
    torch.testing.assert_close(frozen.running_var, state["running_var"])
    assert frozen.num_batches_tracked.item() == 0


def test_convert_replaces_nested_batchnorms():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm2d(4)))
    keys = list(model.state_dict())
    converted = FrozenBatchNorm2d.convert(model)
    assert converted is model
    assert isinstance(model[1], FrozenBatchNorm2d) and isinstance(model[2][0], FrozenBatchNorm2d)
    assert list(model.state_dict()) == keys
    assert isinstance(FrozenBatchNorm2d.convert(nn.BatchNorm2d(3)), FrozenBatchNorm2d)


def test_refuses_batchnorm_without_statistics():
    with pytest.raises(ValueError, match="running statistics"):
        FrozenBatchNorm2d.from_batchnorm(nn.BatchNorm2d(3, track_running_stats=False))
