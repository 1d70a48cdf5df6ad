"""The paper's dilated-ResNet FCN (the baseline, SAC-single and SAC-multiple, section 4.1), its deformable rival, the models by name."""

from __future__ import annotations

import inspect
import os
import typing
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from sacseg.models._state import check_state_dict
from sacseg.models.resnet import DilatedResNet, load_backbone_weights
from sacseg.nn import (
    DEFAULT_MAX_SCALE,
    DEFAULT_MIN_SCALE,
    FrozenBatchNorm2d,
    GuidedConv2d,
    ModulatedDeformConv2d,
    OffsetMaskPredictor,
    ScaleAdaptiveConv2d,
    ScaleBound,
    ScaleRegressor,
    deformation_scale,
)
from sacseg.options import UpsampleMode

__all__ = [
    "MODELS",
    "REGRESSOR_PREFIXES",
    "DeformableFCN",
    "DilatedFCN",
    "Upsample",
    "bilinear_kernel",
    "build_model",
    "load_baseline",
    "load_baseline_and_freeze",
]

SacScheme = Literal["none", "single", "multiple"]

#: The state-dict prefixes of the layers that place other layers' taps: SAC's scale regressors and the
#: deformable rival's offset/mask predictors (:class:`DeformableFCN`). A baseline has none of them; they
#: train at ``lr * scale_lr_mult`` (``sacseg.training.optim``) and alone in the "-only" schemes.
REGRESSOR_PREFIXES: tuple[str, ...] = ("scale_regressors.", "offset_predictors.")


def bilinear_kernel(factor: int) -> Tensor:
    """The ``[2 * factor, 2 * factor]`` kernel of a stride-``factor`` deconvolution that interpolates bilinearly."""
    centre = factor - 0.5
    taps = 1 - (torch.arange(2 * factor, dtype=torch.float64) - centre).abs() / factor
    return (taps[:, None] * taps[None, :]).float()


class Upsample(nn.Module):
    """Logits at ``1/factor`` of the input size -> the input size.

    ``"deconv"``: the FCN deconvolution, per channel, kernel ``2 * factor``, stride ``factor``,
    padding ``factor // 2``, its kernel fixed to bilinear interpolation (a non-persistent buffer:
    nothing to learn or to store). ``"bilinear"``: ``F.interpolate(scale_factor=factor,
    align_corners=False)``, the same sampling grid, so both agree except within ``factor`` pixels of
    the border, where the deconvolution fades towards zero padding. Either result is then cropped to
    the requested size (the features cover ``ceil(H / factor) * factor >= H`` rows).

    Shapes:
        ``[N, C, h, w]`` -> ``[N, C, H, W]`` with ``H <= h * factor``, ``W <= w * factor``.
    """

    weight: Tensor

    def __init__(self, channels: int, factor: int, mode: UpsampleMode = "deconv") -> None:
        super().__init__()
        if mode not in typing.get_args(UpsampleMode):
            raise ValueError(f"upsample must be one of {', '.join(typing.get_args(UpsampleMode))}, got {mode!r}")
        self.channels, self.factor, self.mode = channels, factor, mode
        if mode == "deconv":
            kernel = bilinear_kernel(factor).expand(channels, 1, -1, -1).clone()
            self.register_buffer("weight", kernel, persistent=False)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        h, w = size
        if h > x.shape[-2] * self.factor or w > x.shape[-1] * self.factor:
            raise ValueError(
                f"cannot upsample {tuple(x.shape)} by {self.factor} to {h}x{w}: at most "
                f"{x.shape[-2] * self.factor}x{x.shape[-1] * self.factor}"
            )
        if self.mode == "deconv":
            f = self.factor
            x = F.conv_transpose2d(x, self.weight.to(x.dtype), stride=f, padding=f // 2, groups=self.channels)
        else:
            x = F.interpolate(x, scale_factor=self.factor, mode="bilinear", align_corners=False)
        return x[..., :h, :w]

    def extra_repr(self) -> str:
        return f"{self.channels}, factor={self.factor}, mode={self.mode!r}"


class DilatedFCN(nn.Module):
    """FCN on a dilated ResNet: a 3x3 classifier on res5, upsampled to the input (section 4.1).

    ``sac="single"`` makes the classifier a :class:`ScaleAdaptiveConv2d` driven by a 3x3
    :class:`ScaleRegressor` on res5; ``sac="multiple"`` also makes every 3x3 convolution of res5
    (``layer4``) scale-adaptive, all sharing one scale map regressed (3x3) from res4. SAC layers keep
    the names of the convolutions they replace, so a baseline state dict loads into a SAC model with
    only ``scale_regressors.*`` missing.

    Args:
        depth: 18, 50 or 101.
        num_classes: number of output maps.
        sac: ``"none"`` (the baseline), ``"single"`` or ``"multiple"``.
        output_stride: 8 (res4/res5 dilated 2/4) or 16 (res5 dilated 2).
        upsample: ``"deconv"`` (fixed bilinear deconvolution) or ``"bilinear"``, see :class:`Upsample`.
        classifier_dilation: dilation of the 3x3 classifier; ``None`` takes res5's (4 at output
            stride 8, 2 at 16), so that its taps stay apart when a scale below 1 shrinks them.
        min_scale, max_scale: the scale regressors' range.
        scale_bound: how the regressors bound their output, ``"clip"`` (the paper) or ``"smooth"``.
        frozen_bn: every batch norm is a :class:`FrozenBatchNorm2d` (fixed statistics and affine
            parameters; for small per-device batches). Same state-dict keys.

    Shapes:
        images ``[N, 3, H, W]`` -> ``{"out": [N, num_classes, H, W], "scales": {name: [N, 1, h, w]}}``,
        ``h, w = ceil(H / output_stride), ceil(W / output_stride)``; "scales" holds ``"classifier"``
        (single, multiple) and ``"res5"`` (multiple), ``{}`` for the baseline.
    """

    def __init__(
        self,
        depth: int,
        num_classes: int,
        sac: SacScheme = "none",
        output_stride: int = 8,
        upsample: UpsampleMode = "deconv",
        classifier_dilation: int | None = None,
        min_scale: float = DEFAULT_MIN_SCALE,
        max_scale: float = DEFAULT_MAX_SCALE,
        frozen_bn: bool = False,
        scale_bound: ScaleBound = "clip",
    ) -> None:
        super().__init__()
        if sac not in typing.get_args(SacScheme):
            raise ValueError(f"sac must be one of {', '.join(typing.get_args(SacScheme))}, got {sac!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        norm_layer = FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d
        self.backbone = DilatedResNet(depth, output_stride, sac_res5=sac == "multiple", norm_layer=norm_layer)
        dilation = self.backbone.res5_dilation if classifier_dilation is None else classifier_dilation
        if dilation < 1:
            raise ValueError(f"classifier_dilation must be >= 1, got {dilation}")
        classifier = ScaleAdaptiveConv2d if sac != "none" else nn.Conv2d
        self.classifier: nn.Conv2d | GuidedConv2d = classifier(
            self.backbone.out_channels, num_classes, 3, padding=dilation, dilation=dilation
        )
        self.scale_regressors = nn.ModuleDict()
        if sac == "multiple":
            self.scale_regressors["res5"] = ScaleRegressor(
                self.backbone.res4_channels, min_scale=min_scale, max_scale=max_scale, bound=scale_bound
            )
        if sac != "none":
            self.scale_regressors["classifier"] = ScaleRegressor(
                self.backbone.out_channels, min_scale=min_scale, max_scale=max_scale, bound=scale_bound
            )
        self.upsample = Upsample(num_classes, output_stride, upsample)

    def forward(self, images: Tensor) -> dict[str, Tensor | dict[str, Tensor]]:
        scales: dict[str, Tensor] = {}
        res4 = self.backbone.forward_res4(images)
        if "res5" in self.scale_regressors:
            scales["res5"] = self.scale_regressors["res5"](res4)
        res5 = self.backbone.layer4(res4, scales.get("res5"))
        if "classifier" in self.scale_regressors:
            scales["classifier"] = self.scale_regressors["classifier"](res5)
            logits = self.classifier(res5, scales["classifier"])
        else:
            logits = self.classifier(res5)
        return {"out": self.upsample(logits, (images.shape[-2], images.shape[-1])), "scales": scales}


class DeformableFCN(DilatedFCN):
    """:class:`DilatedFCN` with modulated deformable convolutions (DCNv2) in SAC's places.

    ``places="single"``: the classifier is a :class:`~sacseg.nn.ModulatedDeformConv2d` whose offsets and
    masks an :class:`~sacseg.nn.OffsetMaskPredictor` (3x3) regresses from res5, where SAC-single's
    regressor reads; ``"multiple"``: also every 3x3 convolution of res5 (``layer4``), all sharing one
    offset/mask field regressed (3x3) from res4, as SAC-multiple's layers share one scale map. Only
    the operator differs from SAC: a scale per position there, a free offset and mask per tap and
    position here (27 numbers for a 3x3 kernel). The predictors start at zero offsets and masks of 1,
    so a fresh model computes the baseline's function, and live under ``offset_predictors.*``
    (``REGRESSOR_PREFIXES``): a baseline state dict (torchvision's names) loads with only them missing,
    they train at ``lr * scale_lr_mult``, and alone in the "-only" schemes.

    ``"scales"`` holds each field's isotropic stretch (:func:`~sacseg.nn.deformation_scale`, the SAC scale
    closest to the offsets), under SAC's names, so the studies read a DCN row's maps as a SAC row's.

    Args:
        depth, num_classes, output_stride, upsample, classifier_dilation, frozen_bn: as :class:`DilatedFCN`.
        places: ``"single"`` or ``"multiple"``.

    Shapes:
        images ``[N, 3, H, W]`` -> ``{"out": [N, num_classes, H, W], "scales": {name: [N, 1, h, w]}}``,
        ``h, w = ceil(H / output_stride), ceil(W / output_stride)``; "scales" holds ``"classifier"`` and,
        for ``"multiple"``, ``"res5"``.
    """

    def __init__(
        self,
        depth: int,
        num_classes: int,
        places: SacScheme = "single",
        output_stride: int = 8,
        upsample: UpsampleMode = "deconv",
        classifier_dilation: int | None = None,
        frozen_bn: bool = False,
    ) -> None:
        if places not in ("single", "multiple"):
            raise ValueError(f"places must be single or multiple, got {places!r}")
        # The baseline first: its layers are drawn as the baseline's, and the deformable layers copy them.
        super().__init__(
            depth, num_classes, output_stride=output_stride, upsample=upsample,
            classifier_dilation=classifier_dilation, frozen_bn=frozen_bn,
        )  # fmt: skip
        assert isinstance(self.classifier, nn.Conv2d)  # the baseline's
        classifier = ModulatedDeformConv2d.from_conv(self.classifier)
        self.classifier = classifier
        self.offset_predictors = nn.ModuleDict()
        if places == "multiple":
            for block in self.backbone.layer4:
                for name, conv in list(block.named_children()):
                    if isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3):
                        setattr(block, name, ModulatedDeformConv2d.from_conv(conv))
            self.offset_predictors["res5"] = OffsetMaskPredictor(self.backbone.res4_channels)
        self.offset_predictors["classifier"] = OffsetMaskPredictor(self.backbone.out_channels)
        res5 = self.backbone.res5_dilation
        self._dilations = {"res5": (res5, res5), "classifier": classifier.dilation}

    def forward(self, images: Tensor) -> dict[str, Tensor | dict[str, Tensor]]:
        guides: dict[str, Tensor] = {}
        res4 = self.backbone.forward_res4(images)
        if "res5" in self.offset_predictors:
            guides["res5"] = self.offset_predictors["res5"](res4)
        res5 = self.backbone.layer4(res4, guides.get("res5"))
        guides["classifier"] = self.offset_predictors["classifier"](res5)
        logits = self.classifier(res5, guides["classifier"])
        scales = {name: deformation_scale(guide, (3, 3), self._dilations[name]) for name, guide in guides.items()}
        return {"out": self.upsample(logits, (images.shape[-2], images.shape[-1])), "scales": scales}


def _checkpoint_state(checkpoint: str | Path | Mapping[str, object]) -> tuple[Mapping[str, Tensor], str]:
    """A state dict and a name for messages from a path, a state dict or a dict with a "model" key."""
    source = "the given state dict"
    state: object = checkpoint
    if isinstance(checkpoint, (str, Path)):
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"baseline checkpoint not found: {path}")
        state, source = torch.load(path, map_location="cpu", weights_only=True), str(path)
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{source} is neither a model state dict nor a dict with one under the key 'model'")
    return state, source


def load_baseline(
    model: DilatedFCN, checkpoint: str | Path | Mapping[str, object], source: str | os.PathLike[str] | None = None
) -> DilatedFCN:
    """Load a baseline's (or the same model's) weights into ``model``; its regressors keep theirs.

    The state dict must hold exactly ``model``'s keys other than the regressors' (``REGRESSOR_PREFIXES``:
    a ``fcn_*`` model's, for a ``sac_*`` or ``dcn_*`` model: SAC and deformable layers keep the names and
    shapes of the convolutions they replace), and may hold the regressors too. A regressor left at its
    initialisation maps every position to scale 1 (a predictor: to zero offsets and masks of 1), so the
    model starts as the baseline. Nothing is frozen.

    Args:
        checkpoint: a path to a saved state dict, a state dict, or a dict with one under ``"model"``.
        source: the name of the checkpoint in error messages (default: the path, if one is given).

    Returns:
        ``model``, modified in place.
    """
    state, name = _checkpoint_state(checkpoint)
    name = name if source is None else str(source)
    wanted = {k: v for k, v in model.state_dict().items() if not k.startswith(REGRESSOR_PREFIXES)}
    shared = {k: v for k, v in state.items() if not k.startswith(REGRESSOR_PREFIXES)}
    check_state_dict(
        wanted,
        shared,
        f"{name} does not fit this model (it must have every key of the model except "
        f"{', '.join(p + '*' for p in REGRESSOR_PREFIXES)}, with the same shapes)",
    )
    foreign = sorted(k for k in state if k.startswith(REGRESSOR_PREFIXES) and k not in model.state_dict())
    if foreign:
        kinds = "scale regressors" if all(k.startswith("scale_regressors.") for k in foreign) else "regressors"
        raise ValueError(f"{name} holds {kinds} {foreign} that this model does not have")
    model.load_state_dict(state, strict=False)
    return model


def load_baseline_and_freeze(model: DilatedFCN, checkpoint: str | Path | Mapping[str, object]) -> DilatedFCN:
    """The "-only" schemes: a SAC (or deformable) model with a baseline's weights where only the regressors train.

    Loads a baseline (``fcn_*``) state dict, which must hold exactly the model's keys other than the
    regressors' (``REGRESSOR_PREFIXES``, :func:`load_baseline`); then sets ``requires_grad=False`` on every other
    parameter and replaces every batch norm by a :class:`FrozenBatchNorm2d`, so that no training step
    (weight decay and ``model.train()`` included) changes anything but the regressors. Build the
    optimiser afterwards.

    Args:
        checkpoint: a path to a saved state dict, a state dict, or a dict with one under ``"model"``.

    Returns:
        ``model``, modified in place.
    """
    if not any(k.startswith(REGRESSOR_PREFIXES) for k in model.state_dict()):
        raise ValueError("the model has no scale regressors: the -only schemes need a sac_* or dcn_* model")
    state, source = _checkpoint_state(checkpoint)
    baseline = {k: v for k, v in model.state_dict().items() if not k.startswith(REGRESSOR_PREFIXES)}
    check_state_dict(
        baseline,
        state,
        f"{source} is not a baseline checkpoint for this model (a baseline has every key of the model "
        f"except {', '.join(p + '*' for p in REGRESSOR_PREFIXES)}, with the same shapes)",
    )
    load_baseline(model, state, source)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith(REGRESSOR_PREFIXES))
    FrozenBatchNorm2d.convert(model)
    return model


#: Each family of models by its name's prefix: the operator at its adaptive places, and those places
#: (``"single"``: the classifier; ``"multiple"``: also every 3x3 convolution of res5).
_SCHEMES: dict[str, tuple[Literal["conv", "sac", "dcn"], SacScheme]] = {
    "fcn": ("conv", "none"), "sac_single": ("sac", "single"), "sac_multiple": ("sac", "multiple"),
    "dcn_single": ("dcn", "single"), "dcn_multiple": ("dcn", "multiple"),
}  # fmt: skip


def _build(
    scheme: str,
    depth: int,
    num_classes: int,
    *,
    output_stride: int = 8,
    backbone_weights: str | Path | None = None,
    upsample: UpsampleMode = "deconv",
    classifier_dilation: int | None = None,
    frozen_bn: bool = False,
    min_scale: float | None = None,
    max_scale: float | None = None,
    scale_bound: ScaleBound | None = None,
    baseline_checkpoint: str | Path | None = None,
) -> DilatedFCN:
    operator, sac = _SCHEMES[scheme]
    name = f"{scheme}_resnet{depth}"
    scale_options = {"min_scale": min_scale, "max_scale": max_scale, "scale_bound": scale_bound}
    # The baseline has no regressor to train alone; a deformable model has no scale map to bound.
    refused: dict[str, object] = {}
    if sac == "none":
        refused = {**scale_options, "baseline_checkpoint": baseline_checkpoint}
    elif operator == "dcn":
        refused = dict(scale_options)
    given = sorted(k for k, v in refused.items() if v is not None)
    if given:
        raise TypeError(
            f"{name} has no scale-adaptive layers: options {given} apply to sac_* models only "
            "(baseline_checkpoint to dcn_* ones too)"
        )
    if baseline_checkpoint is not None and backbone_weights is not None:
        raise ValueError(
            "pass either backbone_weights or baseline_checkpoint: the baseline checkpoint replaces every backbone weight"
        )
    if operator == "dcn":
        model: DilatedFCN = DeformableFCN(
            depth, num_classes, sac, output_stride=output_stride, upsample=upsample,
            classifier_dilation=classifier_dilation, frozen_bn=frozen_bn,
        )  # fmt: skip
    else:
        bounds = {k: v for k, v in scale_options.items() if v is not None}
        model = DilatedFCN(
            depth,
            num_classes,
            sac=sac,
            output_stride=output_stride,
            upsample=upsample,
            classifier_dilation=classifier_dilation,
            frozen_bn=frozen_bn,
            **bounds,  # type: ignore[arg-type]
        )
    if backbone_weights is not None:
        load_backbone_weights(model.backbone, backbone_weights)
    if baseline_checkpoint is not None:
        load_baseline_and_freeze(model, baseline_checkpoint)
    return model


#: The models by name: the paper's ``fcn_resnet{18,50,101}`` (baseline), ``sac_single_resnet*`` and
#: ``sac_multiple_resnet*``, and the deformable rival ``dcn_single_resnet*`` and ``dcn_multiple_resnet*``
#: (:class:`DeformableFCN`). Each is called as ``builder(num_classes, **options)``.
MODELS: dict[str, Callable[..., DilatedFCN]] = {
    f"{scheme}_resnet{depth}": partial(_build, scheme, depth) for scheme in _SCHEMES for depth in (18, 50, 101)
}


def build_model(name: str, num_classes: int, **options: object) -> DilatedFCN:
    """Build one of :data:`MODELS` by name.

    Options (all keyword): ``output_stride`` (8 | 16, default 8), ``backbone_weights`` (None |
    ``"imagenet"`` | path of a torchvision resnet state dict), ``upsample`` (``"deconv"`` |
    ``"bilinear"``), ``classifier_dilation`` (default: res5's), ``frozen_bn`` (bool), and for
    ``sac_*`` models only ``min_scale``, ``max_scale`` (default ``DEFAULT_MIN_SCALE``, ``DEFAULT_MAX_SCALE``: 0.25, 4.0), ``scale_bound``
    (``"clip"`` | ``"smooth"``, see :class:`~sacseg.nn.ScaleRegressor`, default ``"clip"``) and
    ``baseline_checkpoint`` (a baseline state dict path: the "-only" schemes, see
    :func:`load_baseline_and_freeze`; ``dcn_*`` models take it too).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")
    builder = MODELS[name]
    valid = [p.name for p in inspect.signature(builder).parameters.values() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(f"unknown options {unknown} for {name}; valid: {', '.join(valid)}")
    return builder(num_classes, **options)
