"""Put scale-adaptive convolutions into the residual stages of another ResNet-style backbone."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from sacseg.models.resnet import BasicBlock, Bottleneck
from sacseg.nn import DEFAULT_MAX_SCALE, DEFAULT_MIN_SCALE, ScaleAdaptiveConv2d, ScaleRegressor
from sacseg.ops.sac_conv import sac_output_size

__all__ = ["SACStage", "sac_block", "sac_convert"]

_LAYOUT = ("conv1", "bn1", "conv2", "bn2", "relu", "downsample")


def sac_block(block: nn.Module) -> BasicBlock | Bottleneck:
    """A torchvision-layout residual block as this package's block, its non-1x1 convolutions made SAC.

    ``block`` has ``conv1, bn1, conv2, bn2, relu, downsample`` (a ``BasicBlock``) and also
    ``conv3, bn3`` (a ``Bottleneck``), as torchvision's ResNets do. The result is a
    :class:`sacseg.models.resnet.BasicBlock` / ``Bottleneck`` (the blocks of the ``sac_multiple_*``
    models) made of ``block``'s own submodules under the same names, with each convolution whose
    kernel is not 1x1 replaced by :meth:`ScaleAdaptiveConv2d.from_conv` (same weights). Its
    ``forward(x, scale)`` gives every SAC layer the same ``scale [N, 1, h, w]``, on the block's
    output grid.
    """
    missing = [name for name in _LAYOUT if not hasattr(block, name)]
    if missing or hasattr(block, "conv3") != hasattr(block, "bn3"):
        raise TypeError(
            f"{type(block).__name__} does not have the torchvision BasicBlock/Bottleneck layout "
            f"({', '.join(_LAYOUT)}, and conv3, bn3 for a bottleneck); missing: {missing or ['conv3/bn3']}"
        )
    layers = ("conv1", "conv2", "conv3") if hasattr(block, "conv3") else ("conv1", "conv2")
    kind = Bottleneck if len(layers) == 3 else BasicBlock
    # Only the class and its forward are wanted: every submodule is replaced by block's own below,
    # so the placeholder parameters live on the meta device and cost nothing.
    with torch.device("meta"):
        converted = kind(1, 1, 1, 1, None, nn.BatchNorm2d)
    for name in layers:
        conv = getattr(block, name)
        if isinstance(conv, nn.Conv2d) and conv.kernel_size != (1, 1):
            conv = ScaleAdaptiveConv2d.from_conv(conv)
        elif not isinstance(conv, (nn.Conv2d, ScaleAdaptiveConv2d)):
            raise TypeError(f"{type(block).__name__}.{name} must be an nn.Conv2d, got {type(conv).__name__}")
        setattr(converted, name, conv)
    for name in (*("bn1", "bn2", "bn3")[: len(layers)], "relu", "downsample"):
        setattr(converted, name, getattr(block, name))
    return converted


def _output_size(block: BasicBlock | Bottleneck, size: tuple[int, int]) -> tuple[int, int]:
    """The ``(H, W)`` that ``block``'s main branch makes of an ``(H, W)`` input."""
    for name in ("conv1", "conv2", "conv3"):
        conv = getattr(block, name, None)
        if conv is not None:
            geometry = (conv.kernel_size, conv.stride, conv.padding, conv.dilation)
            size = sac_output_size(size, *(tuple(g) for g in geometry))
    return size


class SACStage(nn.Module):
    """A residual stage whose blocks share one scale map regressed from the stage input (SAC-multiple).

    The regressor reads the stage input ``[N, C_in, H, W]``; its map is resampled bilinearly to the
    stage's output grid when the stage is strided (``align_corners=False``: for a grid that halves,
    the mean of each 2x2 cell; the coefficients are relative to each layer's own dilation, so their
    values need no change) and passed to every block. The blocks stay children ``"0"``, ``"1"``, ...
    as in the ``nn.Sequential`` this replaces, so the backbone's state dicts still load (only
    ``regressor.*`` is new).

    Shapes:
        ``[N, C_in, H, W] -> [N, C_out, H', W']``; :meth:`forward_with_scale` also returns the
        scale map ``[N, 1, H', W']`` the blocks used.
    """

    def __init__(self, blocks: Sequence[BasicBlock | Bottleneck], regressor: ScaleRegressor) -> None:
        super().__init__()
        if not blocks:
            raise ValueError("a SAC stage needs at least one block")
        for i, block in enumerate(blocks):
            self.add_module(str(i), block)
        self.num_blocks = len(blocks)
        self.regressor = regressor

    def forward_with_scale(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(features [N, C_out, H', W'], scale [N, 1, H', W'])``."""
        scale = self.regressor(x)
        size = _output_size(getattr(self, "0"), (x.shape[-2], x.shape[-1]))
        if (scale.shape[-2], scale.shape[-1]) != size:
            scale = F.interpolate(scale, size=size, mode="bilinear", align_corners=False)
        for i in range(self.num_blocks):
            x = getattr(self, str(i))(x, scale)
        return x, scale

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_scale(x)[0]


def sac_convert(
    model: nn.Module,
    stages: Sequence[str] = ("layer4",),
    min_scale: float = DEFAULT_MIN_SCALE,
    max_scale: float = DEFAULT_MAX_SCALE,
    init_std: float = 0.0,
) -> nn.Module:
    """Make the 3x3 convolutions of chosen stages of a ResNet-style ``model`` scale-adaptive, in place.

    Each named stage, an ``nn.Sequential`` of torchvision-layout blocks (``model.layer4`` of a
    torchvision ResNet, say), becomes a :class:`SACStage`: a new :class:`ScaleRegressor` reads the
    stage input and its scale map drives every non-1x1 convolution of the stage's blocks (see
    :func:`sac_block`), as SAC-multiple does for res5. The convolutions keep their weights and the
    regressor starts at scale exactly 1 (zero weights, bias 1), so the converted model starts as the
    original, up to floating-point rounding, whatever its feature magnitudes.

    Args:
        model: the backbone; modified in place and returned.
        stages: attribute paths of the stages to convert (``"layer4"``, ``"backbone.layer3"``).
        min_scale, max_scale, init_std: for each :class:`ScaleRegressor` (``init_std=0``: exactly scale 1).

    Returns:
        ``model``. Read a stage's scale map with ``stage.forward_with_scale(x)`` or a forward hook
        on ``stage.regressor`` (that one at the stage input's resolution).
    """
    for path in stages:
        try:
            stage = model.get_submodule(path)
        except AttributeError as error:
            raise ValueError(f"model has no stage {path!r}: {error}") from None
        if not isinstance(stage, nn.Sequential):
            raise TypeError(f"stage {path!r} must be an nn.Sequential of residual blocks, got {type(stage).__name__}")
        blocks = [sac_block(block) for block in stage]
        first = blocks[0].conv1  # 3x3 (SAC) in a basic block, 1x1 in a bottleneck
        assert isinstance(first, (nn.Conv2d, ScaleAdaptiveConv2d))
        weight = first.weight
        regressor = ScaleRegressor(first.in_channels, min_scale=min_scale, max_scale=max_scale, init_std=init_std).to(
            device=weight.device, dtype=weight.dtype
        )
        parent, _, name = path.rpartition(".")
        setattr(model.get_submodule(parent), name, SACStage(blocks, regressor))
    return model
