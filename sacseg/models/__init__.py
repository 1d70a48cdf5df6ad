"""The paper's models: dilated-ResNet FCN baseline, SAC-single, SAC-multiple and the "-only" schemes."""

from sacseg.models.convert import SACStage, sac_convert
from sacseg.models.fcn import MODELS, DilatedFCN, Upsample, UpsampleMode, build_model, load_baseline, load_baseline_and_freeze
from sacseg.models.resnet import DilatedResNet, load_backbone_weights, stage_geometry

__all__ = [
    "MODELS",
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
