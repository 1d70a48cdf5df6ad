"""Modules: the scale-adaptive convolution layer, the scale regression layer and frozen batch norm."""

from sacseg.nn.norm import FrozenBatchNorm2d
from sacseg.nn.sac import ScaleAdaptiveConv2d, ScaleRegressor

__all__ = ["FrozenBatchNorm2d", "ScaleAdaptiveConv2d", "ScaleRegressor"]
