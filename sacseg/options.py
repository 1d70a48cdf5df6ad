"""Options shared by configs, models and commands, without torch: string choices and defaults."""

from __future__ import annotations

from typing import Literal

__all__ = [
    "DEFAULT_MAX_SCALE",
    "DEFAULT_MIN_SCALE",
    "InferenceMode",
    "PredictionFormat",
    "ScaleBound",
    "UpsampleMode",
]

# The config (sacseg.config) and the command line read these without loading torch; the modules
# that use them (sacseg.nn, sacseg.models, sacseg.evaluation) import them from here.

#: How the logits are brought back to the input size (see :class:`sacseg.models.fcn.Upsample`).
UpsampleMode = Literal["deconv", "bilinear"]
#: How :class:`sacseg.nn.ScaleRegressor` bounds its output: the paper's ReLU + clip, or a calibrated sigmoid.
ScaleBound = Literal["clip", "smooth"]
#: The default range of the regressed scales (the config's ``min_scale`` / ``max_scale`` too).
DEFAULT_MIN_SCALE = 0.25
DEFAULT_MAX_SCALE = 4.0
#: Whole images, or sliding windows of ``crop_size`` every ``stride`` pixels.
InferenceMode = Literal["whole", "slide"]
#: What ``predict_files`` writes per image: colour pictures, class-index PNGs or Cityscapes labelIds.
PredictionFormat = Literal["color", "index", "cityscapes"]
