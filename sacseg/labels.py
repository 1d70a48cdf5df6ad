"""A data set's class names, colours and ignored mask value: read from a config, and recorded in checkpoints."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from torch import Tensor

from sacseg.config import TrainConfig
from sacseg.data import DATASETS, SegmentationFolder, index_palette
from sacseg.data.protocol import SegmentationDataset
from sacseg.data.transforms import IGNORE_INDEX, JointTransform

__all__ = [
    "Labels",
    "OnDiskDataset",
    "dataset_class",
    "dataset_labels",
    "ignored_mask_value",
    "record_labels",
    "with_recorded_labels",
]

#: A data set's class names and colours (uint8 ``[K, 3]``).
Labels = tuple[tuple[str, ...], Tensor]


class OnDiskDataset(Protocol):
    """A data set class read from one folder, whose labels are class attributes (Cityscapes, ADE20K, CamVid):
    what ``sacseg.data.DATASETS`` holds besides ScaleScenes (generated) and SegmentationFolder (labels from the config)."""

    classes: tuple[str, ...]
    palette: Tensor

    def __call__(self, root: Path, split: str, transforms: JointTransform | None = None) -> SegmentationDataset: ...


def dataset_class(cfg: TrainConfig) -> type[SegmentationDataset]:
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
    kind = dataset_class(cfg)
    if kind is SegmentationFolder:
        classes, palette = _folder_labels(cfg)
    else:  # every other data set's labels are class attributes (ScaleScenes' too)
        fixed = cast(OnDiskDataset, kind)
        classes, palette = tuple(fixed.classes), fixed.palette
    if len(classes) != cfg.num_classes or len(palette) != cfg.num_classes:
        raise ValueError(f"config key 'num_classes' is {cfg.num_classes} but dataset {cfg.dataset!r} has {len(classes)} classes")
    return classes, palette


def ignored_mask_value(cfg: TrainConfig) -> int:
    """The label value that scoring leaves out: a folder data set's ``folder_ignore_index`` (the value in
    its own masks), else 255 (the value sacseg's data sets give their unlabelled pixels)."""
    return cfg.folder_ignore_index if cfg.dataset == "folder" else IGNORE_INDEX


def record_labels(cfg: TrainConfig) -> dict[str, Any]:
    """What a checkpoint records of the config's labels, as plain lists (``torch.load(weights_only=True)``
    reads them): ``{"dataset": name, "classes": [name, ...], "palette": [[r, g, b], ...]}``.

    Errors as :func:`dataset_labels` (a class-name file that is missing, a count that is not ``num_classes``).
    """
    classes, palette = dataset_labels(cfg)
    return {"dataset": cfg.dataset, "classes": list(classes), "palette": palette.tolist()}


def with_recorded_labels(cfg: TrainConfig, record: Mapping[str, Any] | None) -> TrainConfig:
    """``cfg`` with the labels of a checkpoint's ``record`` (:func:`record_labels`) filling in what it does
    not hold itself: a folder data set's ``folder_classes`` when it names a file (which lies beside the
    data, and a trained model needs no data) and ``folder_palette`` when it is null.

    So a checkpoint's config names its classes wherever the checkpoint is used. ``cfg`` comes back
    unchanged without a record (checkpoints of sacseg 0.1.0), or when either is not a folder data set.
    """
    if record is None or cfg.dataset != "folder" or record["dataset"] != "folder":
        return cfg
    classes = cfg.folder_classes if isinstance(cfg.folder_classes, list) else list(record["classes"])
    palette = cfg.folder_palette if cfg.folder_palette is not None else [list(c) for c in record["palette"]]
    return dataclasses.replace(cfg, folder_classes=classes, folder_palette=palette)
