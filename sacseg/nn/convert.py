"""Put scale-adaptive convolutions into the residual stages of an existing ResNet-style backbone."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torch.nn import functional as F

from sacseg.nn.sac import ScaleAdaptiveConv2d, ScaleRegressor
from sacseg.ops.sac_conv import sac_output_size

__all__ = ["SACResBlock", "SACStage", "sac_convert"]

_BLOCK_LAYERS = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))


def _fit_scale(scale: Tensor, conv: ScaleAdaptiveConv2d, input: Tensor) -> Tensor:
    """``scale [N, 1, h, w]`` resampled to the output grid of ``conv`` on ``input [N, C, H, W]``.

    A stage's scale map has the stage input's resolution; a strided convolution, and every block
    after it, works on a coarser grid. Bilinear resampling (``align_corners=False``) of a map that
    halves is the mean of each 2x2 cell, and the scale coefficients are relative to the layer's
    own dilation, so their values need no change.
    """
    size = sac_output_size(tuple(input.shape[-2:]), conv.kernel_size, conv.stride, conv.padding, conv.dilation)
    if tuple(scale.shape[-2:]) == size:
        return scale
    return F.interpolate(scale, size=size, mode="bilinear", align_corners=False)


class SACResBlock(nn.Module):
    """A torchvision-layout residual block whose non-1x1 convolutions are scale-adaptive.

    Takes the submodules of a ``BasicBlock`` (``conv1, bn1, conv2, bn2``) or a ``Bottleneck``
    (also ``conv3, bn3``) with ``relu`` and ``downsample``, keeps them under the same names (so
    state dicts are unchanged) and runs the same computation with every convolution whose
    kernel is not 1x1 replaced by :class:`ScaleAdaptiveConv2d` driven by ``scale``.

    Shapes:
        ``forward(x [N, C_in, H, W], scale [N, 1, h, w]) -> [N, C_out, H', W']``; ``scale`` is
        resampled to each SAC layer's output grid when that differs from ``(h, w)``.
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        missing = [name for name in ("conv1", "bn1", "conv2", "bn2", "relu", "downsample") if not hasattr(block, name)]
        if missing or hasattr(block, "conv3") != hasattr(block, "bn3"):
            raise TypeError(
                f"{type(block).__name__} does not have the torchvision BasicBlock/Bottleneck layout "
                f"(conv1, bn1, conv2, bn2, [conv3, bn3], relu, downsample); missing: {missing or ['conv3/bn3 pair']}"
            )
        self.num_layers = 3 if hasattr(block, "conv3") else 2
        for conv_name, bn_name in _BLOCK_LAYERS[: self.num_layers]:
            conv = getattr(block, conv_name)
            if not isinstance(conv, (nn.Conv2d, ScaleAdaptiveConv2d)):
                raise TypeError(f"{type(block).__name__}.{conv_name} must be an nn.Conv2d, got {type(conv).__name__}")
            if isinstance(conv, nn.Conv2d) and conv.kernel_size != (1, 1):
                conv = ScaleAdaptiveConv2d.from_conv(conv)
            setattr(self, conv_name, conv)
            setattr(self, bn_name, getattr(block, bn_name))
        self.relu = block.relu
        self.downsample = block.downsample

    def forward(self, x: Tensor, scale: Tensor) -> Tensor:
        out = x
        for i, (conv_name, bn_name) in enumerate(_BLOCK_LAYERS[: self.num_layers]):
            conv = getattr(self, conv_name)
            out = conv(out, _fit_scale(scale, conv, out)) if isinstance(conv, ScaleAdaptiveConv2d) else conv(out)
            out = getattr(self, bn_name)(out)
            if i < self.num_layers - 1:
                out = self.relu(out)
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class SACStage(nn.Module):
    """A residual stage whose blocks share one scale map regressed from the stage input (SAC-multiple).

    The blocks stay children ``"0"``, ``"1"``, ... as in the ``nn.Sequential`` it replaces, so
    a backbone's pretrained state dict still loads into it (only ``regressor.*`` is new). To read
    the scale map, call :meth:`forward_with_scale` or hook ``stage.regressor``.

    Shapes:
        ``[N, C_in, H, W] -> [N, C_out, H', W']``; the scale map is ``[N, 1, H, W]``.
    """

    def __init__(self, blocks: Sequence[SACResBlock], regressor: ScaleRegressor) -> None:
        super().__init__()
        if not blocks:
            raise ValueError("a SAC stage needs at least one block")
        for i, block in enumerate(blocks):
            self.add_module(str(i), block)
        self.num_blocks = len(blocks)
        self.regressor = regressor

    def forward_with_scale(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(features [N, C_out, H', W'], scale [N, 1, H, W])``."""
        scale = self.regressor(x)
        for i in range(self.num_blocks):
            x = getattr(self, str(i))(x, scale)
        return x, scale

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_scale(x)[0]


def sac_convert(
    model: nn.Module,
    stages: Sequence[str] = ("layer4",),
    min_scale: float = 0.25,
    max_scale: float = 4.0,
    init_std: float = 1e-3,
) -> nn.Module:
    """Make the 3x3 convolutions of chosen stages of a ResNet-style ``model`` scale-adaptive, in place.

    Each named stage (an ``nn.Sequential`` of torchvision-layout ``BasicBlock``/``Bottleneck``
    blocks, e.g. ``model.layer4`` of a torchvision ResNet) becomes a :class:`SACStage`: a new
    :class:`ScaleRegressor` reads the stage input, and its scale map drives every non-1x1
    convolution of the stage's blocks, as SAC-multiple does for res5 in the paper. The
    convolutions keep their weights and the regressor starts at scale ~1, so the converted
    model starts as (almost exactly) the original one.

    Args:
        model: the backbone; modified in place and returned.
        stages: attribute paths of the stages to convert (``"layer4"``, ``"backbone.layer3"``).
        min_scale, max_scale, init_std: passed to each :class:`ScaleRegressor`.

    Returns:
        ``model``.
    """
    for path in stages:
        try:
            stage = model.get_submodule(path)
        except AttributeError as error:
            raise ValueError(f"model has no stage {path!r}: {error}") from None
        if not isinstance(stage, nn.Sequential):
            raise TypeError(f"stage {path!r} must be an nn.Sequential of residual blocks, got {type(stage).__name__}")
        blocks = [SACResBlock(block) for block in stage]
        first_conv = next(stage.parameters())
        regressor = ScaleRegressor(
            blocks[0].conv1.in_channels, min_scale=min_scale, max_scale=max_scale, init_std=init_std
        ).to(device=first_conv.device, dtype=first_conv.dtype)
        parent_path, _, name = path.rpartition(".")
        setattr(model.get_submodule(parent_path), name, SACStage(blocks, regressor))
    return model
