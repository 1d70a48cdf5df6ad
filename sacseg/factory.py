"""A model or a data set from a config: the one place that train, eval, predict and export build them.

Nothing here imports the training loop (or TensorBoard), so the commands that only run a trained
model load neither.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from sacseg.checkpoint import load_checkpoint, read_checkpoint
from sacseg.config import TrainConfig, config_from_dict
from sacseg.data import ScaleScenes, SegmentationFolder
from sacseg.data.protocol import SegmentationDataset
from sacseg.data.transforms import JointTransform, eval_transforms, train_transforms
from sacseg.labels import OnDiskDataset, dataset_class, dataset_labels, with_recorded_labels
from sacseg.models import build_model, load_baseline, load_baseline_and_freeze

__all__ = ["build_datasets", "build_eval_dataset", "build_model_from_config", "dataset_labels", "load_trained_model"]


# ScaleScenes' convention: each split is generated from its own seed, so validation is held out.
_SCALE_SCENES_SEEDS = {"train": 0, "val": 1, "test": 2}


def _build(cfg: TrainConfig, split: str, transforms: JointTransform, training: bool) -> SegmentationDataset:
    """One split of the config's data set; ScaleScenes and folders take config keys of their own, the
    others are read from ``data_root`` as ``kind(root, split, transforms=...)``."""
    kind = dataset_class(cfg)
    classes, palette = dataset_labels(cfg)  # fails on a class-count mismatch before any image is read
    if kind is ScaleScenes:
        if split not in _SCALE_SCENES_SEEDS:
            raise ValueError(f"scale_scenes split {split!r} is unknown; valid: {', '.join(_SCALE_SCENES_SEEDS)}")
        count = cfg.scale_scenes_train_images if training else cfg.scale_scenes_val_images
        return ScaleScenes(count, size=cfg.scale_scenes_size, seed=_SCALE_SCENES_SEEDS[split], transforms=transforms)
    root = Path(cfg.data_root)
    if kind is SegmentationFolder:
        images, masks = root / cfg.folder_images.format(split=split), root / cfg.folder_masks.format(split=split)
        return SegmentationFolder(images, masks, classes, cfg.folder_ignore_index, transforms, palette)
    return cast(OnDiskDataset, kind)(root, split, transforms=transforms)


def build_eval_dataset(cfg: TrainConfig, split: str | None = None) -> SegmentationDataset:
    """The config's data set, split ``split`` (default ``val_split``), with eval transforms only."""
    return _build(cfg, cfg.val_split if split is None else split, eval_transforms(), training=False)


def build_datasets(cfg: TrainConfig) -> tuple[SegmentationDataset, SegmentationDataset]:
    """The training set (with the paper's augmentation) and the validation set (eval transforms)."""
    train_tf = train_transforms(cfg.crop_size, (cfg.scale_min, cfg.scale_max), cfg.flip)
    return _build(cfg, cfg.train_split, train_tf, training=True), build_eval_dataset(cfg)


def build_model_from_config(cfg: TrainConfig) -> nn.Module:
    """``build_model`` with the config's options; ``init_checkpoint`` configs start from its weights,
    "-only" configs load and freeze their baseline."""
    options: dict[str, Any] = {
        "output_stride": cfg.output_stride,
        "backbone_weights": cfg.backbone_weights,
        "upsample": cfg.upsample,
        "classifier_dilation": cfg.classifier_dilation,
        "frozen_bn": cfg.frozen_bn,
    }
    if cfg.model.startswith("sac_"):
        options.update(min_scale=cfg.min_scale, max_scale=cfg.max_scale, scale_bound=cfg.scale_bound)
    model = build_model(cfg.model, cfg.num_classes, **options)
    if cfg.init_checkpoint is not None:
        load_baseline(model, load_checkpoint(cfg.init_checkpoint)["model"], source=cfg.init_checkpoint)
    if cfg.baseline_checkpoint is not None:
        load_baseline_and_freeze(model, load_checkpoint(cfg.baseline_checkpoint)["model"])
    return model


def load_trained_model(
    path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    default_config: TrainConfig | None = None,
) -> tuple[nn.Module, TrainConfig]:
    """The trained model of a checkpoint, in eval mode on ``device``, and the config it was built from.

    Reads any file holding ``{"model": state_dict, "config": {...}}`` (``save_checkpoint`` writes
    both), rebuilds the model with ``build_model_from_config`` and loads the weights strictly.
    ``default_config`` is used only when the checkpoint stores no config. The labels the checkpoint
    records fill in a folder data set's class-name file and generated palette
    (``sacseg.labels.with_recorded_labels``), so the config needs no file beside the data. The config's
    ``backbone_weights``, ``baseline_checkpoint`` and ``init_checkpoint`` are not read: the checkpoint holds
    every weight, so neither an ImageNet download nor the baseline file of a "-only" run is needed.
    FileNotFoundError / ValueError name the file (missing, corrupt, no config, weights that do not
    fit the model).
    """
    path = Path(path)
    state = read_checkpoint(path)
    if state.get("config") is not None:
        cfg = config_from_dict(state["config"], source=f"config stored in checkpoint {path}")
    elif default_config is not None:
        cfg = default_config
    else:
        raise ValueError(f"checkpoint {path} stores no config: give the training config (--config)")
    cfg = with_recorded_labels(cfg, state["labels"])
    model = build_model_from_config(
        dataclasses.replace(cfg, backbone_weights=None, baseline_checkpoint=None, init_checkpoint=None)
    )
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise ValueError(f"checkpoint {path}: its weights do not fit model {cfg.model!r} of its config: {err}") from err
    return model.to(device).eval(), cfg
