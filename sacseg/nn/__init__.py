"""Modules: the scale-adaptive convolution layer, the scale regression layer, the deformable rival and frozen batch norm."""

from sacseg.nn.deform import ModulatedDeformConv2d, OffsetMaskPredictor, deformation_scale, modulated_deform_conv2d
from sacseg.nn.guided import GuidedConv2d
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
    "GuidedConv2d",
    "ModulatedDeformConv2d",
    "OffsetMaskPredictor",
    "ScaleAdaptiveConv2d",
    "ScaleBound",
    "ScaleRegressor",
    "deformation_scale",
    "modulated_deform_conv2d",
]
