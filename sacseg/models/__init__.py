"""The paper's models: dilated-ResNet FCN baseline, SAC-single, SAC-multiple and the "-only" schemes."""

from sacseg.models.fcn import MODELS, DilatedFCN, Upsample, build_model, load_baseline_and_freeze
from sacseg.models.resnet import DilatedResNet, load_backbone_weights, stage_geometry

__all__ = [
    "MODELS",
    "DilatedFCN",
    "DilatedResNet",
    "Upsample",
    "build_model",
    "load_backbone_weights",
    "load_baseline_and_freeze",
    "stage_geometry",
]
