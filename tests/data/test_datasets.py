"""Tests of Cityscapes, ADE20K, CamVid and SegmentationFolder on the real samples in shared/data."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from cityscapesscripts.helpers.labels import id2label
from PIL import Image

from sacseg.data import (
    ADE20K,
    DATASETS,
    CamVid,
    Cityscapes,
    SegmentationFolder,
    ade20k,
    build_dataset,
    camvid,
    train_id_to_label_id,
)


def _raw(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


def _check_common(ds, num_classes: int) -> None:
    assert len(ds.classes) == num_classes and ds.ignore_index == 255
    assert ds.palette.dtype == torch.uint8 and tuple(ds.palette.shape) == (num_classes, 3)


def test_cityscapes_maps_label_ids_through_the_official_table(shared_data: Path) -> None:
    root = shared_data / "cityscapes_sample"
    train = Cityscapes(root, "train")
    assert len(train) == 8
    _check_common(train, 19)
    assert train.classes[0] == "road" and train.classes[18] == "bicycle"
    val = Cityscapes(root, "val")
    # One full-resolution train frame and the small val frame: 2048x1024 frames are slow to decode.
    for ds, index in ((train, 4), (val, 0)):
        image, target = ds[index]
        raw = _raw(ds.pairs[index][1])
        expected = np.vectorize(lambda v: id2label[v].trainId if 0 <= id2label[v].trainId < 255 else 255)(raw)
        assert image.dtype == torch.float32 and tuple(image.shape) == (3, *raw.shape)
        assert target.dtype == torch.long
        np.testing.assert_array_equal(target.numpy(), expected)
        # Exporting back: every pixel of a training class recovers its labelId; ignored pixels become 0.
        exported = train_id_to_label_id(target).numpy()
        np.testing.assert_array_equal(exported[expected != 255], raw[expected != 255])
        assert (exported[expected == 255] == 0).all()


def test_train_id_to_label_id_values() -> None:
    ids = torch.tensor([[0, 10, 18], [255, 19, -1]])
    assert train_id_to_label_id(ids).tolist() == [[7, 23, 33], [0, 0, 0]]
    with pytest.raises(TypeError, match="integer"):
        train_id_to_label_id(ids.float())


def test_ade20k_validation_shifts_labels(shared_data: Path) -> None:
    ds = ADE20K(shared_data / "ade20k_sample", "val")
    assert len(ds) == 3 and ds.split == "validation"
    _check_common(ds, 150)
    assert ds.classes == ade20k.CLASSES  # the shipped names are those of objectInfo150.txt
    for index in range(len(ds)):
        image, target = ds[index]
        raw = _raw(ds.pairs[index][1]).astype(np.int64)
        assert tuple(image.shape) == (3, *raw.shape)
        np.testing.assert_array_equal(target.numpy(), np.where(raw == 0, 255, raw - 1))
    with pytest.raises(FileNotFoundError, match="training"):
        ADE20K(shared_data / "ade20k_sample", "train")  # the sample has no training split


@pytest.mark.parametrize("split,count", [("train", 367), ("val", 101)])
def test_camvid_maps_void_to_ignore(shared_data: Path, split: str, count: int) -> None:
    ds = CamVid(shared_data / "camvid", split)
    assert len(ds) == count
    _check_common(ds, 11)
    for index in (0, count - 1):
        image, target = ds[index]
        raw = _raw(ds.pairs[index][1]).astype(np.int64)
        assert tuple(image.shape) == (3, 360, 480) and tuple(target.shape) == (360, 480)
        np.testing.assert_array_equal(target.numpy(), np.where(raw == 11, 255, raw))


def test_segmentation_folder_on_camvid_copy(shared_data: Path, tmp_path: Path) -> None:
    source = CamVid(shared_data / "camvid", "val")
    (tmp_path / "img").mkdir()
    (tmp_path / "mask").mkdir()
    for image_path, label_path in source.pairs[:3]:
        shutil.copy(image_path, tmp_path / "img" / image_path.name)
        shutil.copy(label_path, tmp_path / "mask" / label_path.name)
    ds = SegmentationFolder(tmp_path / "img", tmp_path / "mask", camvid.CLASSES, ignore_index=11)
    assert len(ds) == 3
    _check_common(ds, 11)
    for index in range(3):
        image, target = ds[index]
        expected_image, expected_target = source[index]
        assert torch.equal(image, expected_image) and torch.equal(target, expected_target)


def test_build_dataset(shared_data: Path) -> None:
    assert set(DATASETS) == {"cityscapes", "ade20k", "camvid", "folder", "scale_scenes"}
    assert len(build_dataset("camvid", root=shared_data / "camvid", split="val")) == 101
    with pytest.raises(KeyError, match="valid: ade20k, camvid, cityscapes"):
        build_dataset("pascal", root=".")


def test_cityscapes_table_is_the_official_one() -> None:
    from sacseg.data.cityscapes import LABEL_TO_TRAIN_ID

    labels = pytest.importorskip("cityscapesscripts.helpers.labels").labels
    official = sorted((label for label in labels if 0 <= label.trainId < 255), key=lambda label: label.trainId)
    assert Cityscapes.classes == tuple(label.name for label in official)
    assert Cityscapes.palette.tolist() == [list(label.color) for label in official]
    ignored = {label.id: (label.trainId if 0 <= label.trainId < 255 else 255) for label in labels if label.id >= 0}
    assert ignored == LABEL_TO_TRAIN_ID
