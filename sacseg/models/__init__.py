"""The paper's models: dilated-ResNet FCN baseline, SAC-single, SAC-multiple, the "-only" schemes, and the deformable rival."""

from sacseg.models.convert import SACStage, sac_convert
from sacseg.models.fcn import (
    MODELS,
    REGRESSOR_PREFIXES,
    DeformableFCN,
    DilatedFCN,
    Upsample,
    UpsampleMode,
    build_model,
    load_baseline,
    load_baseline_and_freeze,
)
from sacseg.models.resnet import DilatedResNet, load_backbone_weights, stage_geometry

__all__ = [
    "MODELS",
    "REGRESSOR_PREFIXES",
    "DeformableFCN",
    "DilatedFCN",
    "DilatedResNet",
    "SACStage",
    "Upsample",
    "UpsampleMode",
    "build_model",
    "load_backbone_weights",
    "load_baseline",
    "load_baseline_and_freeze",
    "sac_convert",
    "stage_geometry",
]
