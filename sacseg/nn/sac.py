"""The scale-adaptive convolution layer and the scale regression layer that drives it."""

from __future__ import annotations

import math
import typing

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from sacseg.nn.guided import GuidedConv2d
from sacseg.ops.sac_conv import sac_conv2d
from sacseg.options import DEFAULT_MAX_SCALE, DEFAULT_MIN_SCALE, ScaleBound

__all__ = ["DEFAULT_MAX_SCALE", "DEFAULT_MIN_SCALE", "SCALE_BOUNDS", "ScaleAdaptiveConv2d", "ScaleBound", "ScaleRegressor"]

#: The values of ``ScaleBound`` (how :class:`ScaleRegressor` bounds its output).
SCALE_BOUNDS: tuple[str, ...] = typing.get_args(ScaleBound)


class ScaleAdaptiveConv2d(GuidedConv2d):
    """A convolution whose receptive field is resized per output position by a scale map.

    Parameters are named and shaped as in ``nn.Conv2d`` (``weight [C_out, C_in, kh, kw]``,
    ``bias [C_out]``) and initialised the same way, so state dicts move between the two
    (:class:`~sacseg.nn.GuidedConv2d`; ``from_conv`` copies a plain convolution).

    Shapes:
        input ``[N, C_in, H, W]``, scale ``[N, 1, H_out, W_out]`` -> ``[N, C_out, H_out, W_out]``,
        with ``H_out, W_out`` as ``nn.Conv2d`` of the same geometry gives.
    """

    def forward(self, input: Tensor, scale: Tensor) -> Tensor:
        return sac_conv2d(input, scale, self.weight, self.bias, self.stride, self.padding, self.dilation)


class ScaleRegressor(nn.Module):
    """The scale regression layer (section 3.2): a convolution to one channel of scale coefficients.

    Initialised as equation (1) in its limit ``sigma = 0``: zero weights and bias 1, so every scale
    starts at exactly 1 and SAC starts as the plain convolution, whatever the magnitude of the
    features. (The paper's small ``sigma`` is not small on deep features: on a ResNet-50's res4 it
    starts the scales far from 1; benchmarks/DESIGN_MEASUREMENTS.md, "Models and training", has
    the measured range.) The weights still get a gradient, the features times
    the gradient of the map, so they learn from the first step (which, with every tap on an integer
    position, follows the sampler's right-hand derivative there and need not lower the loss; the
    steps after it do). ``init_std > 0`` draws the weights
    from ``N(0, init_std^2)`` instead. The raw output then passes a non-negative transformation
    bounded to ``[min_scale, max_scale]`` that maps 1 to 1:

    - ``bound="clip"`` (the paper, section 3.4): ReLU, then clamp. A pixel pushed past a bound
      gets no gradient back, so a map thrown onto a bound by a large early step stays there.
    - ``bound="smooth"``: ``min + (max - min) * sigmoid(a * (raw - b))`` with ``a, b`` chosen so
      that ``f(1) = 1`` and ``f'(1) = 1``: the same start and first-order behaviour as the clip
      around the plain convolution, values strictly inside the bounds and a (decaying) gradient
      everywhere, so a saturated pixel can come back. Needs ``min_scale < 1 < max_scale``.

    Non-finite raw values are replaced first (NaN by 1, +-inf by the bounds), so they never
    reach the sampler.

    The default bounds ``[0.25, 4.0]`` let a 3x3 layer of dilation ``d`` shrink its taps to a
    quarter of ``d`` (finer than one pixel only below ``d = 4``) or spread them four times wider,
    symmetric in log-scale around the plain convolution. ``min_scale == max_scale`` (clip only) holds
    the map at that value: with 1, the SAC layer computes its plain convolution (a control for the
    learned scales).

    Shapes:
        input ``[N, C, H, W]`` -> scale ``[N, 1, H_out, W_out]``, ``H_out = H`` for the default
        ``stride=1`` (padding keeps the size).
    """

    def __init__(
        self,
        in_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        min_scale: float = DEFAULT_MIN_SCALE,
        max_scale: float = DEFAULT_MAX_SCALE,
        init_std: float = 0.0,
        bound: ScaleBound = "clip",
    ) -> None:
        super().__init__()
        if not init_std >= 0:
            raise ValueError(f"init_std must be >= 0, got {init_std}")
        if bound not in SCALE_BOUNDS:
            raise ValueError(f"bound must be one of {', '.join(SCALE_BOUNDS)}, got {bound!r}")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        if not 0 <= min_scale <= max_scale:
            raise ValueError(f"need 0 <= min_scale <= max_scale, got min_scale={min_scale}, max_scale={max_scale}")
        if bound == "smooth" and not min_scale < 1 < max_scale:
            raise ValueError(f"bound='smooth' needs min_scale < 1 < max_scale (scales start at 1), got {min_scale}, {max_scale}")
        self.min_scale = float(min_scale)
        self.max_scale = float(max_scale)
        self.init_std = float(init_std)
        self.bound = bound
        # f(r) = min + (max - min) * sigmoid(a * (r - b)): f(1) = 1 puts sigmoid at p there, and
        # f'(1) = (max - min) * a * p * (1 - p) = 1 fixes the slope.
        p = (1.0 - self.min_scale) / (self.max_scale - self.min_scale) if bound == "smooth" else 0.5
        self._slope = 1.0 / ((self.max_scale - self.min_scale) * p * (1.0 - p)) if bound == "smooth" else 1.0
        self._centre = 1.0 - math.log(p / (1.0 - p)) / self._slope if bound == "smooth" else 0.0
        self.conv = nn.Conv2d(
            in_channels, 1, kernel_size, stride=stride, padding=dilation * (kernel_size // 2), dilation=dilation
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.init_std > 0:
            nn.init.normal_(self.conv.weight, mean=0.0, std=self.init_std)
        else:
            nn.init.zeros_(self.conv.weight)
        assert self.conv.bias is not None  # made with one
        nn.init.constant_(self.conv.bias, 1.0)

    def forward(self, features: Tensor) -> Tensor:
        raw = self.conv(features)
        raw = torch.nan_to_num(raw, nan=1.0, posinf=self.max_scale, neginf=self.min_scale)
        if self.bound == "smooth":
            return self.min_scale + (self.max_scale - self.min_scale) * torch.sigmoid(self._slope * (raw - self._centre))
        return F.relu(raw).clamp(self.min_scale, self.max_scale)

    def extra_repr(self) -> str:
        return f"min_scale={self.min_scale}, max_scale={self.max_scale}, init_std={self.init_std}, bound={self.bound!r}"
