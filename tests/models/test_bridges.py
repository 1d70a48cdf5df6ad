"""sac_convert on the models people already use: timm ResNets, torchvision's segmentation models, smp ResNet encoders."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torchvision
from torch import Tensor, nn
from torch.nn import functional as F

from sacseg.models import SACStage, sac_convert
from sacseg.models.convert import LayoutBlock

pytestmark = pytest.mark.usefixtures("single_thread")

Logits = Callable[[nn.Module, Tensor], Tensor]


def _plain(model: nn.Module, images: Tensor) -> Tensor:
    return model(images)


def _out(model: nn.Module, images: Tensor) -> Tensor:
    return model(images)["out"]


def _as_if_trained(model: nn.Module) -> nn.Module:
    """``model`` with random batch-norm affine parameters and statistics, in eval mode.

    timm zero-initialises each block's last batch-norm scale, which silences the residual branch and
    with it the SAC layers and the regressors' gradients; trained weights are not like that.
    """
    generator = torch.Generator().manual_seed(0)
    for norm in model.modules():
        if isinstance(norm, nn.BatchNorm2d):
            channels = norm.num_features
            with torch.no_grad():
                norm.weight.copy_(0.5 + torch.rand(channels, generator=generator))
                norm.bias.copy_(0.1 * torch.randn(channels, generator=generator))
                norm.running_mean.copy_(0.1 * torch.randn(channels, generator=generator))
                norm.running_var.copy_(0.5 + torch.rand(channels, generator=generator))
    return model.eval()


def _check_conversion(model: nn.Module, stages: tuple[str, ...], converted: list[str], logits: Logits) -> None:
    """Convert ``stages`` of ``model`` (found at the paths ``converted``), check that it keeps its
    state-dict keys and starts exactly as before, then that two SGD steps on a random target reach
    every scale regressor."""
    torch.manual_seed(0)
    images = torch.randn(2, 3, 64, 64)  # a batch of 2: batch norms in train mode need more than one value
    model = _as_if_trained(model)
    keys = set(model.state_dict())
    with torch.no_grad():
        expected = logits(model, images)
    assert sac_convert(model, stages) is model
    sac_stages = {name: m for name, m in model.named_modules() if isinstance(m, SACStage)}
    assert sorted(sac_stages) == converted
    assert set(model.state_dict()) == keys | {f"{name}.regressor.conv.{p}" for name in converted for p in ("weight", "bias")}
    maps: dict[str, Tensor] = {}
    for name, stage in sac_stages.items():
        stage.regressor.register_forward_hook(lambda m, i, o, name=name: maps.__setitem__(name, o))
    with torch.no_grad():
        out = logits(model, images)
    assert sorted(maps) == converted and all(torch.equal(scale, torch.ones_like(scale)) for scale in maps.values())
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5 * expected.abs().max().item())

    model.train()
    target = torch.randint(out.shape[1], (out.shape[0], *out.shape[2:]))
    # A small step: the regressors read features of random-weight magnitudes, and a large first step
    # throws their maps onto the clip bounds, where no gradient comes back (see ScaleRegressor).
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    for step in range(2):
        optimizer.zero_grad()
        F.cross_entropy(logits(model, images), target).backward()
        for name, stage in sac_stages.items():
            grad = stage.regressor.conv.weight.grad
            assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, f"{name}, step {step}"
        optimizer.step()


@pytest.mark.parametrize(
    ("name", "options", "stages"),
    [
        ("resnet18", {}, ("layer4",)),
        ("resnet50", {}, ("layer3", "layer4")),
        # Squeeze-excitation, DropBlock and stochastic depth: steps of timm's blocks that torchvision's lack.
        ("seresnet50", {"drop_path_rate": 0.1, "drop_block_rate": 0.1}, ("layer4",)),
    ],
)
def test_timm_resnet(name: str, options: dict[str, float], stages: tuple[str, ...]) -> None:
    timm = pytest.importorskip("timm")
    model = timm.create_model(name, pretrained=False, num_classes=7, **options)
    _check_conversion(model, stages, list(stages), _plain)
    block = model.layer4[-1]
    assert isinstance(block, LayoutBlock) and "act1" in block.steps and block.activation in ("act2", "act3")
    assert ("se" in block.steps) == (name == "seresnet50")


def test_timm_anti_aliased_blocks_are_refused() -> None:
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet18", pretrained=False, aa_layer=nn.AvgPool2d)
    with pytest.raises(ValueError, match="anti-aliased"):
        sac_convert(model)


@pytest.mark.parametrize(
    ("builder", "stages", "converted"),
    [
        ("deeplabv3_resnet50", ("layer4",), ["backbone.layer4"]),
        pytest.param("deeplabv3_resnet101", ("layer4",), ["backbone.layer4"], marks=pytest.mark.slow),
        ("fcn_resnet50", ("layer3", "layer4"), ["backbone.layer3", "backbone.layer4"]),
        pytest.param("fcn_resnet101", ("backbone.layer4",), ["backbone.layer4"], marks=pytest.mark.slow),
    ],
)
def test_torchvision_segmentation(builder: str, stages: tuple[str, ...], converted: list[str]) -> None:
    model = getattr(torchvision.models.segmentation, builder)(weights=None, weights_backbone=None, num_classes=5)
    _check_conversion(model, stages, converted, _out)
    # replace_stride_with_dilation=[False, True, True]: the dilations carry over into the SAC layers.
    assert model.backbone.layer4[-1].conv2.dilation == (4, 4)


@pytest.mark.parametrize(("architecture", "encoder"), [("Unet", "resnet34"), ("DeepLabV3Plus", "resnet50")])
def test_segmentation_models_pytorch(architecture: str, encoder: str) -> None:
    smp = pytest.importorskip("segmentation_models_pytorch")
    model = getattr(smp, architecture)(encoder, encoder_weights=None, classes=5)
    _check_conversion(model, ("layer4",), ["encoder.layer4"], _plain)


def test_an_ambiguous_stage_name_asks_for_the_full_path() -> None:
    model = nn.Sequential()
    model.add_module("a", torchvision.models.resnet18())
    model.add_module("b", torchvision.models.resnet18())
    with pytest.raises(ValueError, match=r"ambiguous.*a\.layer4, b\.layer4"):
        sac_convert(model)
    sac_convert(model, stages=("b.layer4",))
    assert isinstance(model.b.layer4, SACStage) and not isinstance(model.a.layer4, SACStage)
