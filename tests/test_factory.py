"""Tests for the factory: every registered data set built from a config, labels known without the data, clear errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from sacseg.config import TrainConfig
from sacseg.data import DATASETS, SegmentationDataset
from sacseg.factory import build_datasets, dataset_labels

_CLASSES = {"cityscapes": 19, "ade20k": 150, "camvid": 11, "folder": 3, "scale_scenes": 7}


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_labels_of_every_registered_data_set_are_known_without_the_data(
    tiny_config: Callable[..., TrainConfig], tmp_path: Path, name: str
) -> None:
    classes = _CLASSES[name]  # a data set added to sacseg.data.DATASETS is added here too
    cfg = tiny_config(tmp_path, dataset=name, num_classes=classes, data_root=str(tmp_path / "absent"),
                      folder_classes=["background", "road", "vehicle"])  # fmt: skip
    names, palette = dataset_labels(cfg)
    assert len(names) == classes and tuple(palette.shape) == (classes, 3)


def test_unknown_names_and_class_counts_are_named(tiny_config: Callable[..., TrainConfig], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="config key 'dataset': 'pascal' is unknown; valid: ade20k, camvid, cityscapes, folder"):
        dataset_labels(tiny_config(tmp_path, dataset="pascal"))
    with pytest.raises(ValueError, match="config key 'num_classes' is 5 but dataset 'scale_scenes' has 7 classes"):
        build_datasets(tiny_config(tmp_path, num_classes=5))


def test_train_and_validation_sets_follow_the_protocol(tiny_config: Callable[..., TrainConfig], tmp_path: Path) -> None:
    train_set, val_set = build_datasets(tiny_config(tmp_path))
    for dataset, count in ((train_set, 2), (val_set, 1)):  # the tiny config's scale_scenes_*_images
        assert isinstance(dataset, SegmentationDataset) and len(dataset) == count
        image, target = dataset[0]
        assert image.shape == (3, 64, 64) and target.shape == (64, 64)
        assert int(target.max()) < len(dataset.classes) or int(target.max()) == dataset.ignore_index
