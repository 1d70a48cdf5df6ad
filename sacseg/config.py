"""Flat YAML training configs loaded into one typed dataclass, with ``key=value`` overrides."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
import types
import typing
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from sacseg.options import (
    DEFAULT_MAX_SCALE,
    DEFAULT_MIN_SCALE,
    InferenceMode,
    InferenceOptions,
    Precision,
    ScaleBound,
    UpsampleMode,
)
from sacseg.utils.device import DeviceName
from sacseg.utils.io import atomic_open
from sacseg.utils.pair import positive_pair

__all__ = ["Schedule", "TrainConfig", "apply_overrides", "config_from_dict", "load_config", "save_config"]

#: The learning-rate schedules of the training loop (see ``sacseg.training.optim.build_scheduler``).
Schedule = Literal["step", "poly"]


@dataclasses.dataclass
class TrainConfig:
    """Everything one training run needs, one flat level of keys.

    Lengths (``lr_step``, ``val_every``, ``checkpoint_every``) count epochs when ``epochs > 0`` and
    iterations when ``iterations > 0``; exactly one of the two must be set. The ``eval_*`` keys are
    the inference options of validation during training, and the defaults of ``sacseg eval`` /
    ``predict`` and ``Segmenter`` (see ``sacseg.options.InferenceOptions``): ``eval_mode`` (whole
    images or ``slide`` windows), ``eval_crop_size`` and ``eval_stride`` (one int, square, or
    ``[H, W]``), ``eval_scales`` (image scales whose probabilities are averaged) and ``eval_flip``
    (also average the mirrored images); a config without the last two keeps single-scale, unmirrored
    validation. ``batch_size`` is the global batch: with N processes each takes ``batch_size / N``
    samples per step. ``threads`` sets torch's CPU threads per process (0 keeps torch's default).
    ``dist_timeout``: seconds a process waits for its peers in one collective operation before the
    run fails (torchrun runs).

    ``precision``: ``fp32``; ``bf16`` (autocast to bfloat16, no loss scaling: what Ampere and later
    GPUs train in); ``fp16`` (autocast to float16 with a GradScaler). Both half precisions also run
    on CPU, where the SAC operator computes in float32 (its autocast rule). The deprecated key
    ``amp`` is read as ``precision`` (``true``: fp16, ``false``: fp32) with a warning.
    ``channels_last``: model and images in NHWC memory layout (faster convolutions on tensor cores).
    ``compile``: the training forward and backward under ``torch.compile`` (validation and the
    checkpoints use the plain model, so a checkpoint loads without compiling). ``cudnn_benchmark``:
    let cuDNN time its algorithms per shape; ``null`` means on unless ``deterministic`` (autotuning
    may pick a non-deterministic algorithm).
    """

    # What to train.
    model: str = "fcn_resnet18"
    num_classes: int = 7
    output_stride: int = 8
    backbone_weights: str | None = None
    upsample: UpsampleMode = "deconv"
    min_scale: float = DEFAULT_MIN_SCALE
    max_scale: float = DEFAULT_MAX_SCALE
    scale_bound: ScaleBound = "clip"
    baseline_checkpoint: str | None = None
    # A checkpoint whose model weights start the run (optimiser and schedule start afresh); a baseline's
    # (fcn_*) weights also start a sac_* model, whose scale regressors keep their initialisation.
    init_checkpoint: str | None = None
    classifier_dilation: int | None = None
    frozen_bn: bool = False
    sync_bn: bool = False
    # Data.
    dataset: str = "scale_scenes"
    data_root: str = ""
    train_split: str = "train"
    val_split: str = "val"
    scale_scenes_train_images: int = 64
    scale_scenes_val_images: int = 16
    scale_scenes_size: int = 128
    # dataset "folder" (your own data): image and mask folders under data_root ("{split}" becomes
    # the split's name), class names (a list, or a text file of one name a line under data_root),
    # colours ([[r, g, b], ...], default generated) and the mask value that is ignored.
    folder_images: str = "images/{split}"
    folder_masks: str = "masks/{split}"
    folder_classes: list[str] | str | None = None
    folder_palette: list[list[int]] | None = None
    folder_ignore_index: int = 255
    # Training crops: one int (square) or [H, W].
    crop_size: int | list[int] = 500
    scale_min: float = 0.5
    scale_max: float = 1.5
    flip: bool = True
    workers: int = 2
    # Optimisation. A config that leaves out lr and schedule gets a poly decay from 0.01 (the ResNet-18
    # configs' choice): it suits any run length, where the paper's step at epoch 60 (configs/*_r101.yaml
    # set it) would fall at iteration 60 of a run counted in iterations.
    batch_size: int = 8
    epochs: int = 0
    iterations: int = 0
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: Schedule = "poly"
    lr_step: int = 60
    lr_step_factor: float = 0.1
    poly_power: float = 0.9
    grad_clip: float | None = None
    scale_lr_mult: float = 1.0
    # How the steps run (see TrainConfig's docstring): number format, memory layout, torch.compile, cuDNN autotuning.
    precision: Precision = "fp32"
    channels_last: bool = False
    compile: bool = False
    cudnn_benchmark: bool | None = None
    seed: int = 0
    deterministic: bool = True
    device: DeviceName = "auto"
    threads: int = 0
    dist_timeout: float = 600.0
    # Bookkeeping and evaluation.
    val_every: int = 1
    # Also validate (and keep best.pt) before the first step: the starting weights can win the selection.
    val_at_start: bool = False
    checkpoint_every: int = 1
    log_every: int = 10
    eval_mode: InferenceMode = "whole"
    eval_crop_size: int | list[int] | None = None
    eval_stride: int | list[int] | None = None
    eval_scales: list[float] = dataclasses.field(default_factory=lambda: [1.0])
    eval_flip: bool = False
    out_dir: str = "runs/default"


_POSITIVE = (
    "num_classes", "scale_scenes_train_images", "scale_scenes_val_images", "scale_scenes_size",
    "batch_size", "val_every", "checkpoint_every", "log_every", "lr", "scale_lr_mult", "dist_timeout",
)  # fmt: skip
_NON_NEGATIVE = ("epochs", "iterations", "workers", "momentum", "weight_decay", "lr_step", "seed", "threads")


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _unknown_key(key: str) -> str:
    """``"unknown config key 'bach_size'; did you mean 'batch_size'? valid keys: ..."``: the one or two
    keys it is a likely typo of (if any), then every key."""
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    close = difflib.get_close_matches(key, names, n=2, cutoff=0.8)
    hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
    return f"unknown config key {key!r}; {hint}valid keys: {', '.join(names)}"


class _Mismatch(Exception):
    """A value that is not of the annotated type."""


def _check_type(key: str, value: Any, annotation: Any, source: str) -> Any:
    """``value`` as the field's type, or a ValueError naming the key."""
    try:
        return _convert(value, annotation)
    except _Mismatch:
        raise ValueError(
            f"{source}: config key {key!r} must be {_describe(annotation)}, got {value!r} ({type(value).__name__})"
        ) from None


def _convert(value: Any, annotation: Any) -> Any:
    """``value`` as ``annotation`` (bool, int, float, str, None, ``Literal[...]`` of strings, ``list[...]``
    and unions of them, the first union member that fits winning), or ``_Mismatch``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        for member in args:
            with contextlib.suppress(_Mismatch):
                return _convert(value, member)
        raise _Mismatch
    if origin is Literal:
        if value in args and isinstance(value, str):
            return value
        raise _Mismatch
    if origin is list:
        if not isinstance(value, list):
            raise _Mismatch
        return [_convert(item, args[0]) for item in value]
    if annotation is type(None):
        if value is None:
            return None
    elif annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # YAML 1.1 (PyYAML) reads "5e-4" as a string; accept what Python reads as a number.
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a field type this checker does not know is a bug in TrainConfig
        raise TypeError(f"unsupported config type {annotation}")
    raise _Mismatch


def _describe(annotation: Any) -> str:
    """``float | None`` -> "float or null", ``list[str]`` -> "list of str", ``Literal["a", "b"]`` -> "one of a, b"."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(member) for member in args)
    if origin is list:
        return f"list of {_describe(args[0])}"
    if origin is Literal:
        return "one of " + ", ".join(args)
    return "null" if annotation is type(None) else annotation.__name__


def _validate(cfg: TrainConfig, source: str) -> None:
    for key in _POSITIVE:
        if not getattr(cfg, key) > 0:
            raise ValueError(f"{source}: config key {key!r} must be > 0, got {getattr(cfg, key)!r}")
    for key in _NON_NEGATIVE:
        if getattr(cfg, key) < 0:
            raise ValueError(f"{source}: config key {key!r} must be >= 0, got {getattr(cfg, key)!r}")
    try:
        positive_pair(cfg.crop_size, "config key 'crop_size'")
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None
    if (cfg.epochs > 0) == (cfg.iterations > 0):
        raise ValueError(
            f"{source}: set exactly one of config keys 'epochs' and 'iterations' > 0, "
            f"got epochs={cfg.epochs}, iterations={cfg.iterations}"
        )
    if cfg.output_stride not in (8, 16):
        raise ValueError(f"{source}: config key 'output_stride' must be 8 or 16, got {cfg.output_stride}")
    if not 0 < cfg.scale_min <= cfg.scale_max:
        raise ValueError(
            f"{source}: config keys 'scale_min', 'scale_max' need 0 < scale_min <= scale_max, "
            f"got {cfg.scale_min}, {cfg.scale_max}"
        )
    if not 0 <= cfg.min_scale <= cfg.max_scale:  # equal: the scale maps are held at that value
        raise ValueError(
            f"{source}: config keys 'min_scale', 'max_scale' need 0 <= min_scale <= max_scale, "
            f"got {cfg.min_scale}, {cfg.max_scale}"
        )
    if cfg.baseline_checkpoint is not None and cfg.backbone_weights is not None:
        raise ValueError(
            f"{source}: config keys 'baseline_checkpoint' and 'backbone_weights' exclude each other "
            "(the baseline replaces every backbone weight); set backbone_weights: null"
        )
    if cfg.init_checkpoint is not None and (cfg.baseline_checkpoint is not None or cfg.backbone_weights is not None):
        raise ValueError(
            f"{source}: config key 'init_checkpoint' excludes 'baseline_checkpoint' and 'backbone_weights' "
            "(it replaces every weight they would set); set them to null"
        )
    if cfg.classifier_dilation is not None and cfg.classifier_dilation < 1:
        raise ValueError(f"{source}: config key 'classifier_dilation' must be >= 1 or null, got {cfg.classifier_dilation}")
    if cfg.grad_clip is not None and cfg.grad_clip <= 0:
        raise ValueError(f"{source}: config key 'grad_clip' must be > 0 or null, got {cfg.grad_clip}")
    if cfg.dataset == "folder" and cfg.folder_classes is None:
        raise ValueError(f"{source}: config key 'folder_classes' (a list of names or a file) is needed for dataset 'folder'")
    try:
        InferenceOptions.from_config(cfg)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None


def _precision_from_amp(value: Any, source: str) -> str:
    """The ``precision`` that the deprecated key ``amp`` stands for, with a FutureWarning saying so."""
    if not isinstance(value, bool):
        raise ValueError(f"{source}: config key 'amp' (deprecated: use 'precision') must be true or false, got {value!r}")
    precision = "fp16" if value else "fp32"
    warnings.warn(
        f"{source}: config key 'amp' is deprecated; 'amp: {str(value).lower()}' is read as 'precision: {precision}' "
        "(write that instead; fp16 now also runs on CPU)",
        FutureWarning,
        stacklevel=3,
    )
    return precision


def config_from_dict(values: Mapping[str, Any], source: str = "config") -> TrainConfig:
    """A checked ``TrainConfig`` from a flat mapping; keys left out keep the dataclass default.

    Raises ValueError naming the key for an unknown key (suggesting the closest, listing the valid
    ones), a wrong type or an invalid value. ``source`` (e.g. the file name) starts every message.
    The deprecated key ``amp`` is read as ``precision`` (see ``TrainConfig``).
    """
    if not isinstance(values, Mapping):
        raise ValueError(f"{source}: a config must be a flat mapping of key: value, got {type(values).__name__}")
    if "amp" in values:
        precision = _precision_from_amp(values["amp"], source)
        if values.get("precision", precision) != precision:
            raise ValueError(
                f"{source}: config keys 'amp' ({values['amp']}) and 'precision' ({values['precision']!r}) disagree; "
                "drop 'amp' (deprecated)"
            )
        values = {**{k: v for k, v in values.items() if k != "amp"}, "precision": precision}
    types = _field_types()
    checked: dict[str, Any] = {}
    for key, value in values.items():
        if key not in types:
            raise ValueError(f"{source}: {_unknown_key(key)}")
        checked[key] = _check_type(key, value, types[key], source)
    cfg = TrainConfig(**checked)
    _validate(cfg, source)
    return cfg


def load_config(path: str | os.PathLike[str]) -> TrainConfig:
    """Read a flat YAML file into a checked ``TrainConfig`` (errors name the file and the key)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from err
    return config_from_dict(values if values is not None else {}, source=str(path))


def apply_overrides(cfg: TrainConfig, overrides: Iterable[str]) -> TrainConfig:
    """A new config with ``key=value`` strings applied; the value is read as YAML, then type-checked.

    Example: ``apply_overrides(cfg, ["lr=0.01", "grad_clip=null", "model=sac_single_resnet18"])``.
    """
    values = dataclasses.asdict(cfg)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {item!r}")
        if key == "amp":  # deprecated: stands for a precision
            values["precision"] = _precision_from_amp(yaml.safe_load(text), "--set")
            continue
        if key not in values:
            raise ValueError(f"--set: {_unknown_key(key)}")
        try:
            values[key] = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ValueError(f"--set {key}: value {text!r} is not valid YAML: {err}") from err
    return config_from_dict(values, source="--set")


def save_config(cfg: TrainConfig, path: str | os.PathLike[str]) -> None:
    """Write the resolved config as flat YAML in field order (atomically)."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(dataclasses.asdict(cfg), handle, sort_keys=False)
