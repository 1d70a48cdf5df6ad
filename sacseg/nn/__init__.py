"""Modules: the scale-adaptive convolution layer and the scale regression layer."""

from sacseg.nn.sac import ScaleAdaptiveConv2d, ScaleRegressor

__all__ = ["ScaleAdaptiveConv2d", "ScaleRegressor"]
