"""Options shared by configs, models and commands, without torch: string choices, defaults, inference options."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from sacseg.utils.pair import IntOrPair, pair, positive_pair

if TYPE_CHECKING:
    from sacseg.config import TrainConfig

__all__ = [
    "DEFAULT_MAX_SCALE",
    "DEFAULT_MIN_SCALE",
    "InferenceMode",
    "InferenceOptions",
    "Precision",
    "PredictionFormat",
    "ScaleBound",
    "ScaleFormat",
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
#: The training's number format: float32, or autocast to bfloat16 (no loss scaling: its range is
#: float32's) or float16 (with a GradScaler, whose loss scaling keeps small gradients representable).
Precision = Literal["fp32", "bf16", "fp16"]
#: What ``predict_files`` writes per image: colour pictures, class-index PNGs or Cityscapes labelIds.
PredictionFormat = Literal["color", "index", "cityscapes"]
#: How ``predict_files`` writes scale maps: heat-map pictures, or the raw float32 values (``.npy``, ``.tif``).
ScaleFormat = Literal["png", "npy", "tiff"]


@dataclasses.dataclass(frozen=True)
class InferenceOptions:
    """How :func:`sacseg.models.inference.predict` turns images into class probabilities.

    For each of ``scales`` the images are resized, run whole (``mode="whole"``) or in ``crop_size``
    windows every ``stride`` pixels (``mode="slide"``; ``stride`` defaults to ``crop_size``), with
    ``flip`` also mirrored left-right, and the probabilities of every pass are averaged. A size is
    one int (square) or ``(H, W)`` (a list is kept as a tuple); ``scales`` is kept as a tuple of
    floats. An invalid value raises ValueError naming the option and the value.

    Example::

        options = InferenceOptions(mode="slide", crop_size=(512, 1024), stride=(256, 512), scales=(0.75, 1, 1.25), flip=True)
        options = InferenceOptions.from_config(cfg)  # the config's eval_* keys
    """

    mode: InferenceMode = "whole"
    crop_size: IntOrPair | None = None
    stride: IntOrPair | None = None
    scales: Sequence[float] = (1.0,)
    flip: bool = False

    def __post_init__(self) -> None:
        for option, value in _checked(vars(self), str).items():
            object.__setattr__(self, option, value)  # frozen: only the checked, normalised values are set

    @classmethod
    def named(cls, values: Mapping[str, Any], name: Callable[[str], str]) -> InferenceOptions:
        """``InferenceOptions(**values)`` (every option given), whose errors call each option ``name(option)``
        (a config key, a command-line flag) instead of its Python name."""
        return cls(**_checked(values, name))

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> InferenceOptions:
        """The options of a config's keys ``eval_mode``, ``eval_crop_size``, ``eval_stride``, ``eval_scales``
        and ``eval_flip`` (validation during training, and the default of eval and predict); errors name the key."""
        values = {field.name: getattr(cfg, f"eval_{field.name}") for field in dataclasses.fields(cls)}
        return cls.named(values, cls.config_key)

    @staticmethod
    def config_key(option: str) -> str:
        """How errors name an option read from a config: ``"crop_size"`` -> ``"config key 'eval_crop_size'"``."""
        return f"config key 'eval_{option}'"

    def window(self) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """The window size and step ``(H, W), (H, W)`` of ``mode="slide"``; None for whole images."""
        if self.mode == "whole":
            return None
        assert self.crop_size is not None  # checked: mode "slide" needs one
        crop = pair(self.crop_size, "crop_size")
        return crop, crop if self.stride is None else pair(self.stride, "stride")

    @property
    def single_pass(self) -> bool:
        """Whether the options ask for nothing but one whole-image pass at scale 1."""
        return self.mode == "whole" and tuple(self.scales) == (1.0,) and not self.flip

    def describe(self) -> str:
        """The options in words, e.g. ``"mode slide, crop 512x1024, stride 256x512, scales 0.75 1 1.25, flip"``."""
        text = f"mode {self.mode}"
        if self.mode == "slide" and self.crop_size is not None:
            stride = self.crop_size if self.stride is None else self.stride
            text += f", crop {_size_text(self.crop_size)}, stride {_size_text(stride)}"
        text += ", scales " + " ".join(f"{s:g}" for s in self.scales)
        return text + (", flip" if self.flip else "")

    def tag(self) -> str:
        """The options as part of a file name: ``"whole"``, ``"slide-512-341_ms0.75-1.0-1.25_flip"`` (window
        and step, ``HxW`` where not square; the scales unless only 1; flip), so results of other options differ."""
        text: str = self.mode
        for h, w in self.window() or ():
            text += f"-{h}" if h == w else f"-{h}x{w}"
        if tuple(self.scales) != (1.0,):
            text += "_ms" + "-".join(map(str, self.scales))
        return text + ("_flip" if self.flip else "")


def _size_text(size: IntOrPair) -> str:
    return str(size) if isinstance(size, int) else "x".join(map(str, size))


def _checked(values: Mapping[str, Any], name: Callable[[str], str]) -> dict[str, Any]:
    """Every option of ``values`` checked, lists as tuples and scales as floats; ValueError calling an option ``name(option)``."""
    mode = values["mode"]
    if mode not in typing.get_args(InferenceMode):
        raise ValueError(f"{name('mode')} must be one of {', '.join(typing.get_args(InferenceMode))}, got {mode!r}")
    sizes = {key: None if values[key] is None else positive_pair(values[key], name(key)) for key in ("crop_size", "stride")}
    crop, step = sizes["crop_size"], sizes["stride"]
    if mode == "slide" and crop is None:
        raise ValueError(f"{name('crop_size')} is needed when {name('mode')} is 'slide'")
    if mode == "slide" and crop is not None and step is not None and (step[0] > crop[0] or step[1] > crop[1]):
        raise ValueError(
            f"{name('stride')} ({values['stride']!r}) must not exceed {name('crop_size')} ({values['crop_size']!r}): "
            "the windows would leave gaps"
        )
    scales = values["scales"]
    numbers = isinstance(scales, Sequence) and not isinstance(scales, str)
    if not numbers or not scales or any(isinstance(s, bool) or not isinstance(s, (int, float)) or not s > 0 for s in scales):
        raise ValueError(f"{name('scales')} must be a non-empty sequence of positive numbers, got {scales!r}")
    if not isinstance(values["flip"], bool):
        raise ValueError(f"{name('flip')} must be True or False, got {values['flip']!r}")
    as_given = {key: tuple(values[key]) if isinstance(values[key], list) else values[key] for key in sizes}
    return {"mode": mode, **as_given, "scales": tuple(float(s) for s in scales), "flip": values["flip"]}
