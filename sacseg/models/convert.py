"""Put scale-adaptive convolutions into the residual stages of another ResNet-style backbone."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import overload

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from sacseg.models.resnet import BasicBlock, Bottleneck, _conv
from sacseg.nn import DEFAULT_MAX_SCALE, DEFAULT_MIN_SCALE, ScaleAdaptiveConv2d, ScaleRegressor
from sacseg.ops.sac_conv import sac_output_size

__all__ = ["LayoutBlock", "SACStage", "sac_block", "sac_convert"]

_TORCHVISION_LAYOUT = ("conv1", "bn1", "conv2", "bn2", "relu", "downsample")

#: timm's ResNet blocks (``timm.models.resnet.BasicBlock``, ``Bottleneck``), by whether the block has a
#: ``conv3``: the main branch's submodules in the order their forward runs them (``se`` and
#: ``drop_path`` may hold None: no such step), and the activation applied after the residual sum.
_TIMM_LAYOUTS: dict[bool, tuple[tuple[str, ...], str]] = {
    False: (("conv1", "bn1", "drop_block", "act1", "aa", "conv2", "bn2", "se", "drop_path"), "act2"),
    True: (("conv1", "bn1", "act1", "conv2", "bn2", "drop_block", "act2", "aa", "conv3", "bn3", "se", "drop_path"), "act3"),
}


class LayoutBlock(nn.Module):
    """A residual block of another library's layout, run in that library's order with a scale map for its SAC layers.

    Computes ``activation(main(x) + shortcut)``: the main branch applies the submodules named in
    ``steps`` in turn, each :class:`ScaleAdaptiveConv2d` among them with the scale map; the shortcut is
    ``downsample(x)``, or ``x`` when ``downsample`` is None. The submodules keep their names, so the
    block's state-dict keys are the original block's.

    Shapes:
        ``[N, C_in, H, W]`` and scale ``[N, 1, H', W']`` -> ``[N, C_out, H', W']``, ``H', W'`` the output
        grid of the main branch's convolutions.
    """

    def __init__(
        self, steps: Sequence[tuple[str, nn.Module]], downsample: nn.Module | None, activation: tuple[str, nn.Module]
    ) -> None:
        super().__init__()
        for name, module in (*steps, activation):
            self.add_module(name, module)
        self.downsample = downsample
        self.steps = tuple(name for name, _ in steps)
        self.activation = activation[0]

    def forward(self, x: Tensor, scale: Tensor) -> Tensor:
        out = x
        for name in self.steps:
            out = _conv(getattr(self, name), out, scale)
        identity = x if self.downsample is None else self.downsample(x)
        return getattr(self, self.activation)(out + identity)

    def extra_repr(self) -> str:
        return f"steps={self.steps}, activation={self.activation!r}"


SACBlock = BasicBlock | Bottleneck | LayoutBlock


def _sac_conv(block: nn.Module, name: str) -> nn.Module:
    """``block.<name>`` made a :class:`ScaleAdaptiveConv2d` if its kernel is not 1x1 (same weights)."""
    conv = getattr(block, name)
    if isinstance(conv, nn.Conv2d) and conv.kernel_size != (1, 1):
        return ScaleAdaptiveConv2d.from_conv(conv)
    if not isinstance(conv, (nn.Conv2d, ScaleAdaptiveConv2d)):
        raise TypeError(f"{type(block).__name__}.{name} must be an nn.Conv2d, got {type(conv).__name__}")
    return conv


def _timm_block(block: nn.Module, steps: tuple[str, ...], activation: str) -> LayoutBlock:
    """A timm ResNet block as a :class:`LayoutBlock` of its own submodules, its non-1x1 convolutions made SAC."""
    if not isinstance(block.aa, nn.Identity):
        # Anti-aliased blocks stride in `aa`, after a stride-1 convolution: their 3x3 layers work on
        # two grids, where one scale map per stage has one.
        raise ValueError(
            f"{type(block).__name__} has anti-aliased downsampling ({type(block.aa).__name__}), which sac_convert does not support"
        )
    modules = {name: getattr(block, name) for name in (*steps, "downsample", activation)}
    return LayoutBlock(
        [
            (name, _sac_conv(block, name) if name.startswith("conv") else modules[name])
            for name in steps
            if modules[name] is not None
        ],
        modules["downsample"],
        (activation, modules[activation]),
    )


def sac_block(block: nn.Module) -> SACBlock:
    """A torchvision- or timm-layout residual block with its non-1x1 convolutions made SAC.

    Each convolution whose kernel is not 1x1 is replaced by :meth:`ScaleAdaptiveConv2d.from_conv`
    (same weights); every other submodule is ``block``'s own, under the same name. The layout is told
    by the submodules' names, so neither library is imported:

    - torchvision (``conv1, bn1, conv2, bn2, relu, downsample``, and ``conv3, bn3`` for a bottleneck;
      also the blocks of torchvision's segmentation models and of segmentation_models_pytorch's ResNet
      encoders): a :class:`sacseg.models.resnet.BasicBlock` / ``Bottleneck``, the blocks of the
      ``sac_multiple_*`` models.
    - timm (``act1``, ``aa``, ``se``, ``drop_block``, ``drop_path`` and ``act2`` / ``act3`` besides the
      convolutions and batch norms): a :class:`LayoutBlock` that runs them in timm's order.

    The result's ``forward(x, scale)`` gives every SAC layer the same ``scale [N, 1, h, w]``, on the
    block's output grid.
    """
    bottleneck = hasattr(block, "conv3")
    timm_steps, timm_activation = _TIMM_LAYOUTS[bottleneck]
    if all(hasattr(block, name) for name in (*timm_steps, timm_activation, "downsample")):
        return _timm_block(block, timm_steps, timm_activation)
    missing = [name for name in _TORCHVISION_LAYOUT if not hasattr(block, name)]
    if missing or bottleneck != hasattr(block, "bn3"):
        raise TypeError(
            f"{type(block).__name__} does not have the torchvision BasicBlock/Bottleneck layout "
            f"({', '.join(_TORCHVISION_LAYOUT)}, and conv3, bn3 for a bottleneck; missing: {missing or ['conv3/bn3']}) "
            f"nor timm's ({', '.join(timm_steps)}, {timm_activation}, downsample)"
        )
    layers = ("conv1", "conv2", "conv3") if bottleneck else ("conv1", "conv2")
    kind = Bottleneck if bottleneck else BasicBlock
    # Only the class and its forward are wanted: every submodule is replaced by block's own below,
    # so the placeholder parameters live on the meta device and cost nothing.
    with torch.device("meta"):
        converted = kind(1, 1, 1, 1, None, nn.BatchNorm2d)
    for name in layers:
        setattr(converted, name, _sac_conv(block, name))
    for name in (*("bn1", "bn2", "bn3")[: len(layers)], "relu", "downsample"):
        setattr(converted, name, getattr(block, name))
    return converted


def _output_size(block: SACBlock, size: tuple[int, int]) -> tuple[int, int]:
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
    ``regressor.*`` is new), and the stage is indexed, sliced, iterated and measured as that
    ``nn.Sequential`` was (``stage[-1]``, ``len(stage)``: the blocks, without the regressor).

    Shapes:
        ``[N, C_in, H, W] -> [N, C_out, H', W']``; :meth:`forward_with_scale` also returns the
        scale map ``[N, 1, H', W']`` the blocks used.
    """

    def __init__(self, blocks: Sequence[SACBlock], regressor: ScaleRegressor) -> None:
        super().__init__()
        if not blocks:
            raise ValueError("a SAC stage needs at least one block")
        for i, block in enumerate(blocks):
            self.add_module(str(i), block)
        self.num_blocks = len(blocks)
        self.regressor = regressor

    def _blocks(self) -> list[SACBlock]:
        return [getattr(self, str(i)) for i in range(self.num_blocks)]

    @overload
    def __getitem__(self, index: int) -> SACBlock: ...

    @overload
    def __getitem__(self, index: slice) -> list[SACBlock]: ...

    def __getitem__(self, index: int | slice) -> SACBlock | list[SACBlock]:
        """Block ``index`` (negative counts from the end), or a list of the blocks a slice selects."""
        return self._blocks()[index]

    def __len__(self) -> int:
        return self.num_blocks

    def __iter__(self) -> Iterator[SACBlock]:
        return iter(self._blocks())

    def forward_with_scale(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(features [N, C_out, H', W'], scale [N, 1, H', W'])``."""
        blocks = self._blocks()
        scale = self.regressor(x)
        size = _output_size(blocks[0], (x.shape[-2], x.shape[-1]))
        if (scale.shape[-2], scale.shape[-1]) != size:
            scale = F.interpolate(scale, size=size, mode="bilinear", align_corners=False)
        for block in blocks:
            x = block(x, scale)
        return x, scale

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_scale(x)[0]


def _stage_path(model: nn.Module, path: str) -> str:
    """``path`` if ``model`` has that submodule, else the one submodule path that ends in ``"." + path``."""
    names = [name for name, _ in model.named_modules()]
    if path in names:
        return path
    matches = [name for name in names if name.endswith("." + path)]
    if len(matches) > 1:
        raise ValueError(f"stage {path!r} is ambiguous, the model has {', '.join(matches)}: pass the full path")
    if not matches:
        raise ValueError(f"model has no stage {path!r} (no submodule of that path or ending in '.{path}')")
    return matches[0]


def sac_convert(
    model: nn.Module,
    stages: Sequence[str] = ("layer4",),
    min_scale: float = DEFAULT_MIN_SCALE,
    max_scale: float = DEFAULT_MAX_SCALE,
    init_std: float = 0.0,
) -> nn.Module:
    """Make the 3x3 convolutions of chosen stages of a ResNet-style ``model`` scale-adaptive, in place.

    Each named stage, an ``nn.Sequential`` of torchvision- or timm-layout blocks (``model.layer4`` of a
    torchvision or timm ResNet, ``model.backbone.layer4`` of a torchvision DeepLabV3/FCN,
    ``model.encoder.layer4`` of a segmentation_models_pytorch model with a ResNet encoder), becomes a
    :class:`SACStage`: a new :class:`ScaleRegressor` reads the stage input and its scale map drives
    every non-1x1 convolution of the stage's blocks (see :func:`sac_block`), as SAC-multiple does for
    res5. The convolutions keep their weights and the regressor starts at scale exactly 1 (zero
    weights, bias 1), so the converted model starts as the original, up to floating-point rounding,
    whatever its feature magnitudes. The convolutions are new parameters: build the optimiser after
    converting.

    Args:
        model: the backbone or whole model; modified in place and returned.
        stages: paths of the stages to convert (``"layer4"``, ``"backbone.layer3"``). A path that is
            not a submodule of ``model`` names the one submodule whose path ends in it, so the default
            ``"layer4"`` finds ``backbone.layer4`` or ``encoder.layer4``.
        min_scale, max_scale, init_std: for each :class:`ScaleRegressor` (``init_std=0``: exactly scale 1).

    Returns:
        ``model``. Read a stage's scale map with ``stage.forward_with_scale(x)`` or a forward hook
        on ``stage.regressor`` (that one at the stage input's resolution).

    Raises:
        ValueError: a stage that is missing, ambiguous or already converted, or a block that cannot
            be (grouped or non-zero-padded convolutions, timm's anti-aliased blocks).
        TypeError: a stage that is not an ``nn.Sequential`` of blocks of either layout.
    """
    for name in stages:
        path = _stage_path(model, name)
        stage = model.get_submodule(path)
        if isinstance(stage, SACStage):
            raise ValueError(f"stage {path!r} is already converted (a SACStage with its own scale regressor)")
        if not isinstance(stage, nn.Sequential):
            raise TypeError(f"stage {path!r} must be an nn.Sequential of residual blocks, got {type(stage).__name__}")
        blocks = [sac_block(block) for block in stage]
        first = blocks[0].conv1  # 3x3 (SAC) in a basic block, 1x1 in a bottleneck
        assert isinstance(first, (nn.Conv2d, ScaleAdaptiveConv2d))
        weight = first.weight
        regressor = ScaleRegressor(first.in_channels, min_scale=min_scale, max_scale=max_scale, init_std=init_std).to(
            device=weight.device, dtype=weight.dtype
        )
        parent, _, attribute = path.rpartition(".")
        setattr(model.get_submodule(parent), attribute, SACStage(blocks, regressor))
    return model
