"""A model or a data set from a config: the one place that train, eval, predict and export build them.

Nothing here imports the training loop (or TensorBoard), so the commands that only run a trained
model load neither.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from torch import Tensor, nn

from sacseg.checkpoint import load_checkpoint, read_checkpoint
from sacseg.config import TrainConfig, config_from_dict
from sacseg.data import DATASETS, ScaleScenes, SegmentationFolder, index_palette
from sacseg.data.protocol import SegmentationDataset
from sacseg.data.transforms import JointTransform, eval_transforms, train_transforms
from sacseg.models import build_model, load_baseline, load_baseline_and_freeze

__all__ = ["build_datasets", "build_eval_dataset", "build_model_from_config", "dataset_labels", "load_trained_model"]


#: A data set's class names and colours (uint8 ``[K, 3]``).
Labels = tuple[tuple[str, ...], Tensor]

# ScaleScenes' convention: each split is generated from its own seed, so validation is held out.
_SCALE_SCENES_SEEDS = {"train": 0, "val": 1, "test": 2}


class _OnDisk(Protocol):
    """A data set class read from one folder, whose labels are class attributes (Cityscapes, ADE20K, CamVid):
    what ``sacseg.data.DATASETS`` holds besides ScaleScenes (generated) and SegmentationFolder (labels from the config)."""

    classes: tuple[str, ...]
    palette: Tensor

    def __call__(self, root: Path, split: str, transforms: JointTransform | None = None) -> SegmentationDataset: ...


def _dataset_class(cfg: TrainConfig) -> type[SegmentationDataset]:
    """The class that ``sacseg.data.DATASETS``, the one registry of data sets, holds under the config's ``dataset``."""
    if cfg.dataset not in DATASETS:
        raise ValueError(f"config key 'dataset': {cfg.dataset!r} is unknown; valid: {', '.join(sorted(DATASETS))}")
    return DATASETS[cfg.dataset]


def _folder_labels(cfg: TrainConfig) -> Labels:
    """``folder_classes`` (the list itself, or the names in the file it names under ``data_root``) and
    ``folder_palette`` (default: generated)."""
    if isinstance(cfg.folder_classes, list):
        classes = tuple(cfg.folder_classes)
    else:
        path = Path(cfg.data_root) / str(cfg.folder_classes)
        if not path.is_file():
            raise FileNotFoundError(f"config key 'folder_classes': class-name file not found: {path}")
        classes = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
        if not classes:
            raise ValueError(f"config key 'folder_classes': no class names in {path}")
    if cfg.folder_palette is None:
        return classes, index_palette(len(classes))
    palette = cfg.folder_palette
    if len(palette) != len(classes) or any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in palette):
        raise ValueError(
            f"config key 'folder_palette' must be {len(classes)} colours [r, g, b] in 0..255 (one per class), got {palette}"
        )
    return classes, torch.tensor(palette, dtype=torch.uint8)


def dataset_labels(cfg: TrainConfig) -> Labels:
    """The class names and the palette (uint8 ``[K, 3]``) of the config's data set, read without its
    data (so a trained model's pictures need none on disk); ValueError when their count is not the
    config's ``num_classes``."""
    kind = _dataset_class(cfg)
    if kind is SegmentationFolder:
        classes, palette = _folder_labels(cfg)
    else:  # every other data set's labels are class attributes (ScaleScenes' too)
        fixed = cast(_OnDisk, kind)
        classes, palette = tuple(fixed.classes), fixed.palette
    if len(classes) != cfg.num_classes or len(palette) != cfg.num_classes:
        raise ValueError(f"config key 'num_classes' is {cfg.num_classes} but dataset {cfg.dataset!r} has {len(classes)} classes")
    return classes, palette


def _build(cfg: TrainConfig, split: str, transforms: JointTransform, training: bool) -> SegmentationDataset:
    """One split of the config's data set; ScaleScenes and folders take config keys of their own, the
    others are read from ``data_root`` as ``kind(root, split, transforms=...)``."""
    kind = _dataset_class(cfg)
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
    return cast(_OnDisk, kind)(root, split, transforms=transforms)


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
    ``default_config`` is used only when the checkpoint stores no config. The config's
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
    model = build_model_from_config(
        dataclasses.replace(cfg, backbone_weights=None, baseline_checkpoint=None, init_checkpoint=None)
    )
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise ValueError(f"checkpoint {path}: its weights do not fit model {cfg.model!r} of its config: {err}") from err
    return model.to(device).eval(), cfg
