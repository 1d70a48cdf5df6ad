"""Segmentation data sets (Cityscapes, ADE20K, CamVid, image folders, synthetic ScaleScenes) and joint transforms."""

from __future__ import annotations

from typing import Any

from ._base import index_palette
from .ade20k import ADE20K
from .camvid import CamVid
from .cityscapes import Cityscapes, train_id_to_label_id
from .folder import SegmentationFolder
from .protocol import SegmentationDataset
from .scale_scenes import ScaleScenes
from .transforms import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD, eval_transforms, train_transforms

#: The data sets by name, the one registry: ``build_dataset``'s names and the config key ``dataset``'s
#: values (``sacseg.factory`` builds a config's data set from its class).
DATASETS: dict[str, type[SegmentationDataset]] = {
    "cityscapes": Cityscapes,
    "ade20k": ADE20K,
    "camvid": CamVid,
    "folder": SegmentationFolder,
    "scale_scenes": ScaleScenes,
}


def build_dataset(name: str, **kwargs: Any) -> SegmentationDataset:
    """``DATASETS[name](**kwargs)``; an unknown name raises KeyError listing the valid ones."""
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; valid: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](**kwargs)


__all__ = [
    "ADE20K",
    "DATASETS",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CamVid",
    "Cityscapes",
    "ScaleScenes",
    "SegmentationDataset",
    "SegmentationFolder",
    "build_dataset",
    "eval_transforms",
    "index_palette",
    "train_id_to_label_id",
    "train_transforms",
]
