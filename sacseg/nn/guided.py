"""The parameters of a convolution whose forward also takes a per-position guide (SAC's scales, DCN's offsets)."""

from __future__ import annotations

import math
from typing import TypeVar

import torch
from torch import nn

from sacseg.utils.pair import IntOrPair, pair

__all__ = ["GuidedConv2d"]

_Guided = TypeVar("_Guided", bound="GuidedConv2d")


class GuidedConv2d(nn.Module):
    """A convolution's parameters, named, shaped and initialised as ``nn.Conv2d``'s, for layers whose
    forward is ``forward(input, guide)``: a tensor per output position that says where the taps sample.

    ``weight [C_out, C_in, kh, kw]`` and ``bias [C_out]`` keep ``nn.Conv2d``'s (and torchvision's) names,
    so a plain convolution's state dict loads into a guided one and back. Odd kernels only: the taps are
    placed around the centre. Subclasses (:class:`~sacseg.nn.ScaleAdaptiveConv2d`,
    :class:`~sacseg.nn.ModulatedDeformConv2d`) define ``forward``; ``sacseg.models.resnet``'s blocks pass
    the guide to every such layer.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrPair,
        stride: IntOrPair = 1,
        padding: IntOrPair = 0,
        dilation: IntOrPair = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = pair(kernel_size, "kernel_size")
        if self.kernel_size[0] % 2 == 0 or self.kernel_size[1] % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")
        self.stride = pair(stride, "stride")
        self.padding = pair(padding, "padding")
        self.dilation = pair(dilation, "dilation")
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Conv2d's initialisation, so a guided layer starts where a plain one would.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_conv(cls: type[_Guided], conv: nn.Conv2d) -> _Guided:
        """A layer of this class with ``conv``'s geometry and a copy of its parameters."""
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(
                f"only groups=1, zero, numeric padding convolutions convert to {cls.__name__}, got groups={conv.groups}, "
                f"padding={conv.padding!r}, padding_mode={conv.padding_mode!r}"
            )
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            bias=conv.bias is not None,
        ).to(device=conv.weight.device, dtype=conv.weight.dtype)
        layer.load_state_dict(conv.state_dict())
        return layer

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, bias={self.bias is not None}"
        )
