"""Segmentation data sets (Cityscapes, ADE20K, CamVid, image folders, synthetic ScaleScenes) and joint transforms."""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

from .ade20k import ADE20K
from .camvid import CamVid
from .cityscapes import Cityscapes, train_id_to_label_id
from .folder import SegmentationFolder
from .scale_scenes import ScaleScenes
from .transforms import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD, eval_transforms, train_transforms

DATASETS: dict[str, type[Dataset]] = {
    "cityscapes": Cityscapes,
    "ade20k": ADE20K,
    "camvid": CamVid,
    "folder": SegmentationFolder,
    "scale_scenes": ScaleScenes,
}


def build_dataset(name: str, **kwargs: Any) -> Dataset:
    """``DATASETS[name](**kwargs)``; an unknown name raises KeyError listing the valid ones."""
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; valid: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](**kwargs)


__all__ = [
    "ADE20K", "CamVid", "Cityscapes", "DATASETS", "IGNORE_INDEX", "IMAGENET_MEAN", "IMAGENET_STD",
    "SegmentationFolder", "ScaleScenes", "build_dataset", "eval_transforms", "train_id_to_label_id", "train_transforms",
]
