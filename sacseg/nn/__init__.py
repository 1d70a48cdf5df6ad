"""Modules: the scale-adaptive convolution layer, the scale regression layer and frozen batch norm."""

from sacseg.nn.norm import FrozenBatchNorm2d
from sacseg.nn.sac import SCALE_BOUNDS, ScaleAdaptiveConv2d, ScaleRegressor

__all__ = ["SCALE_BOUNDS", "FrozenBatchNorm2d", "ScaleAdaptiveConv2d", "ScaleRegressor"]
