"""Modules: the scale-adaptive convolution layer, the scale regression layer and frozen batch norm."""

from sacseg.nn.norm import FrozenBatchNorm2d
from sacseg.nn.sac import (
    DEFAULT_MAX_SCALE,
    DEFAULT_MIN_SCALE,
    SCALE_BOUNDS,
    ScaleAdaptiveConv2d,
    ScaleBound,
    ScaleRegressor,
)

__all__ = [
    "DEFAULT_MAX_SCALE",
    "DEFAULT_MIN_SCALE",
    "SCALE_BOUNDS",
    "FrozenBatchNorm2d",
    "ScaleAdaptiveConv2d",
    "ScaleBound",
    "ScaleRegressor",
]
