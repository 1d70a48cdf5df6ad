"""The paper's dilated-ResNet FCN: the baseline, SAC-single and SAC-multiple (section 4.1)."""

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
from sacseg.nn import DEFAULT_MAX_SCALE, DEFAULT_MIN_SCALE, FrozenBatchNorm2d, ScaleAdaptiveConv2d, ScaleBound, ScaleRegressor
from sacseg.options import UpsampleMode

__all__ = ["MODELS", "DilatedFCN", "Upsample", "bilinear_kernel", "build_model", "load_baseline", "load_baseline_and_freeze"]

SacScheme = Literal["none", "single", "multiple"]


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
        self.classifier = classifier(self.backbone.out_channels, num_classes, 3, padding=dilation, dilation=dilation)
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
    """Load a baseline's (or the same model's) weights into ``model``; scale regressors keep theirs.

    The state dict must hold exactly ``model``'s keys other than ``scale_regressors.*`` (a ``fcn_*``
    model's, for a ``sac_*`` model: SAC layers keep the names and shapes of the convolutions they
    replace), and may hold the regressors too. A regressor left at its initialisation maps every
    position to scale 1, so the SAC model starts as the baseline. Nothing is frozen.

    Args:
        checkpoint: a path to a saved state dict, a state dict, or a dict with one under ``"model"``.
        source: the name of the checkpoint in error messages (default: the path, if one is given).

    Returns:
        ``model``, modified in place.
    """
    state, name = _checkpoint_state(checkpoint)
    name = name if source is None else str(source)
    wanted = {k: v for k, v in model.state_dict().items() if not k.startswith("scale_regressors.")}
    shared = {k: v for k, v in state.items() if not k.startswith("scale_regressors.")}
    check_state_dict(
        wanted,
        shared,
        f"{name} does not fit this model (it must have every key of the model except scale_regressors.*, with the same shapes)",
    )
    foreign = sorted(k for k in state if k.startswith("scale_regressors.") and k not in model.state_dict())
    if foreign:
        raise ValueError(f"{name} holds scale regressors {foreign} that this model does not have")
    model.load_state_dict(state, strict=False)
    return model


def load_baseline_and_freeze(model: DilatedFCN, checkpoint: str | Path | Mapping[str, object]) -> DilatedFCN:
    """The "-only" schemes: a SAC model with a baseline's weights where only the scale regressors train.

    Loads a baseline (``fcn_*``) state dict, which must hold exactly the SAC model's keys other than
    ``scale_regressors.*`` (:func:`load_baseline`); then sets ``requires_grad=False`` on every other
    parameter and replaces every batch norm by a :class:`FrozenBatchNorm2d`, so that no training step
    (weight decay and ``model.train()`` included) changes anything but the regressors. Build the
    optimiser afterwards.

    Args:
        checkpoint: a path to a saved state dict, a state dict, or a dict with one under ``"model"``.

    Returns:
        ``model``, modified in place.
    """
    if not any(k.startswith("scale_regressors.") for k in model.state_dict()):
        raise ValueError("the model has no scale regressors: the -only schemes need a sac_single/sac_multiple model")
    state, source = _checkpoint_state(checkpoint)
    baseline = {k: v for k, v in model.state_dict().items() if not k.startswith("scale_regressors.")}
    check_state_dict(
        baseline,
        state,
        f"{source} is not a baseline checkpoint for this model (a baseline has every key of the SAC model "
        "except scale_regressors.*, with the same shapes)",
    )
    load_baseline(model, state, source)
    model.requires_grad_(False)
    model.scale_regressors.requires_grad_(True)
    FrozenBatchNorm2d.convert(model)
    return model


def _build(
    sac: SacScheme,
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
    name = f"{'fcn' if sac == 'none' else 'sac_' + sac}_resnet{depth}"
    sac_options = {
        "min_scale": min_scale, "max_scale": max_scale, "scale_bound": scale_bound,
        "baseline_checkpoint": baseline_checkpoint,
    }  # fmt: skip
    if sac == "none" and any(v is not None for v in sac_options.values()):
        given = sorted(k for k, v in sac_options.items() if v is not None)
        raise TypeError(f"{name} has no scale-adaptive layers: options {given} apply to sac_* models only")
    if baseline_checkpoint is not None and backbone_weights is not None:
        raise ValueError(
            "pass either backbone_weights or baseline_checkpoint: the baseline checkpoint replaces every backbone weight"
        )
    bounds = {
        k: v for k, v in (("min_scale", min_scale), ("max_scale", max_scale), ("scale_bound", scale_bound))
        if v is not None
    }  # fmt: skip
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


_SCHEMES: tuple[tuple[str, SacScheme], ...] = (("fcn", "none"), ("sac_single", "single"), ("sac_multiple", "multiple"))

#: The paper's models by name: ``fcn_resnet{18,50,101}`` (baseline), ``sac_single_resnet*`` and
#: ``sac_multiple_resnet*``. Each is called as ``builder(num_classes, **options)``.
MODELS: dict[str, Callable[..., DilatedFCN]] = {
    f"{prefix}_resnet{depth}": partial(_build, sac, depth) for prefix, sac in _SCHEMES for depth in (18, 50, 101)
}


def build_model(name: str, num_classes: int, **options: object) -> DilatedFCN:
    """Build one of :data:`MODELS` by name.

    Options (all keyword): ``output_stride`` (8 | 16, default 8), ``backbone_weights`` (None |
    ``"imagenet"`` | path of a torchvision resnet state dict), ``upsample`` (``"deconv"`` |
    ``"bilinear"``), ``classifier_dilation`` (default: res5's), ``frozen_bn`` (bool), and for
    ``sac_*`` models only ``min_scale``, ``max_scale`` (default ``DEFAULT_MIN_SCALE``, ``DEFAULT_MAX_SCALE``: 0.25, 4.0), ``scale_bound``
    (``"clip"`` | ``"smooth"``, see :class:`~sacseg.nn.ScaleRegressor`, default ``"clip"``) and
    ``baseline_checkpoint`` (a baseline state dict path: the "-only" schemes, see
    :func:`load_baseline_and_freeze`).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")
    builder = MODELS[name]
    valid = [p.name for p in inspect.signature(builder).parameters.values() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(f"unknown options {unknown} for {name}; valid: {', '.join(valid)}")
    return builder(num_classes, **options)
