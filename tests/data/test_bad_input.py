"""Every bad-input case of the file-based data sets raises an error naming the file (or folder) at fault."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sacseg.data import ADE20K, CamVid, Cityscapes, SegmentationFolder
from sacseg.utils.io import read_image


def _write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _rgb(h: int = 8, w: int = 12) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _label(value: int = 1, h: int = 8, w: int = 12) -> np.ndarray:
    return np.full((h, w), value, dtype=np.uint8)


def _camvid(root: Path, names: tuple[str, ...] = ("a", "b")) -> Path:
    for name in names:
        _write(root / "train" / f"{name}.png", _rgb())
        _write(root / "trainannot" / f"{name}.png", _label())
    return root


def _named(path: Path) -> str:
    return re.escape(str(path))


@pytest.mark.parametrize(
    "make,missing",
    [
        (lambda root: Cityscapes(root, "val"), "leftImg8bit/val"),
        (lambda root: ADE20K(root, "val"), "images/validation"),
        (lambda root: CamVid(root, "test"), "test"),
        (lambda root: SegmentationFolder(root / "images", root / "masks", ["a"]), "images"),
    ],
)
def test_missing_split_folder(tmp_path: Path, make, missing: str) -> None:
    with pytest.raises(FileNotFoundError, match=_named(tmp_path / missing)):
        make(tmp_path)


def test_image_without_label(tmp_path: Path) -> None:
    root = _camvid(tmp_path)
    _write(root / "train" / "orphan.png", _rgb())
    with pytest.raises(ValueError, match=_named(root / "train" / "orphan.png")):
        CamVid(root, "train")


def test_label_without_image(tmp_path: Path) -> None:
    root = _camvid(tmp_path)
    _write(root / "trainannot" / "orphan.png", _label())
    with pytest.raises(ValueError, match=_named(root / "trainannot" / "orphan.png")):
        CamVid(root, "train")


def test_cityscapes_pairs_within_city(tmp_path: Path) -> None:
    _write(tmp_path / "leftImg8bit/train/bonn/bonn_000000_000001_leftImg8bit.png", _rgb())
    label = _write(tmp_path / "gtFine/train/ulm/bonn_000000_000001_gtFine_labelIds.png", _label(7))
    with pytest.raises(ValueError, match=_named(label)):
        Cityscapes(tmp_path, "train")


def test_empty_split(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "trainannot").mkdir()
    with pytest.raises(ValueError, match=f"no image files found in {_named(tmp_path / 'train')}"):
        CamVid(tmp_path, "train")


def test_unreadable_file(tmp_path: Path) -> None:
    root = _camvid(tmp_path)
    (root / "train" / "b.png").write_bytes(b"not a png at all")
    ds = CamVid(root, "train")
    ds[0]
    with pytest.raises(ValueError, match=f"cannot read image file {_named(root / 'train' / 'b.png')}"):
        ds[1]


def test_truncated_label(tmp_path: Path) -> None:
    root = _camvid(tmp_path)
    path = root / "trainannot" / "a.png"
    _write(path, np.random.default_rng(1).integers(0, 11, (64, 64), dtype=np.uint8))
    _write(root / "train" / "a.png", _rgb(64, 64))
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(ValueError, match=f"cannot read label file {_named(path)}"):
        CamVid(root, "train")[0]


def test_size_mismatch(tmp_path: Path) -> None:
    root = _camvid(tmp_path)
    label = _write(root / "trainannot" / "a.png", _label(h=9))
    with pytest.raises(ValueError, match=f"{_named(root / 'train' / 'a.png')} is 12x8 but label {_named(label)} is 12x9"):
        CamVid(root, "train")[0]


@pytest.mark.parametrize("value", [12, 255])
def test_camvid_label_out_of_range(tmp_path: Path, value: int) -> None:
    root = _camvid(tmp_path)
    label = _write(root / "trainannot" / "b.png", _label(value))
    with pytest.raises(ValueError, match=f"{_named(label)} has values outside the known set: \\[{value}\\]"):
        CamVid(root, "train")[1]


def test_cityscapes_and_ade_label_out_of_range(tmp_path: Path) -> None:
    _write(tmp_path / "cs/leftImg8bit/val/bonn/bonn_0_1_leftImg8bit.png", _rgb())
    label = _write(tmp_path / "cs/gtFine/val/bonn/bonn_0_1_gtFine_labelIds.png", _label(34))
    with pytest.raises(ValueError, match=f"{_named(label)} has values outside the known set: \\[34\\]"):
        Cityscapes(tmp_path / "cs", "val")[0]
    _write(tmp_path / "ade/images/training/x.jpg", _rgb())
    label = _write(tmp_path / "ade/annotations/training/x.png", _label(151))
    with pytest.raises(ValueError, match=f"{_named(label)} has values outside the known set: \\[151\\]"):
        ADE20K(tmp_path / "ade", "train")[0]


def test_folder_label_out_of_range_and_16_bit(tmp_path: Path) -> None:
    _write(tmp_path / "img/x.jpg", _rgb())
    label = _write(tmp_path / "mask/x.png", _label(3))
    ds = SegmentationFolder(tmp_path / "img", tmp_path / "mask", ["a", "b", "c"])
    with pytest.raises(ValueError, match=f"{_named(label)} has values outside the known set: \\[3\\]"):
        ds[0]
    Image.fromarray(np.full((8, 12), 1000, dtype=np.uint16)).save(label)
    with pytest.raises(ValueError, match=f"{_named(label)} has values outside the known set: \\[1000\\]"):
        ds[0]


def test_folder_rgb_mask(tmp_path: Path) -> None:
    _write(tmp_path / "img/x.png", _rgb())
    label = _write(tmp_path / "mask/x.png", _rgb())
    with pytest.raises(ValueError, match=f"label file {_named(label)} must be a single-channel"):
        SegmentationFolder(tmp_path / "img", tmp_path / "mask", ["a"])[0]


def test_folder_rejects_bad_ignore_index(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ignore_index"):
        SegmentationFolder(tmp_path, tmp_path, ["a", "b"], ignore_index=1)


def test_16_bit_grey_images_are_scaled_and_16_bit_masks_kept_exact(tmp_path: Path) -> None:
    grey = np.arange(8 * 12, dtype=np.uint16).reshape(8, 12) * 2  # 0..190
    image = _write(tmp_path / "img/x.png", grey * 257)  # the same picture at 16 bits: 0..48830
    mask = np.array([0, 1, 2, 255] * 24, dtype=np.uint16).reshape(8, 12)
    _write(tmp_path / "mask/x.png", mask)
    with Image.open(image) as img:
        assert img.mode.startswith("I")  # what a 16-bit PNG decodes to
    expected = np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)
    np.testing.assert_array_equal(np.asarray(read_image(image)), expected)  # predict's reader too
    picture, target = SegmentationFolder(tmp_path / "img", tmp_path / "mask", ["a", "b", "c"]).load(0)
    np.testing.assert_array_equal(np.asarray(picture), expected)
    np.testing.assert_array_equal(target.numpy(), mask)  # class indices, not scaled
    _write(tmp_path / "white.png", np.full((4, 4), 65535, dtype=np.uint16))
    assert np.asarray(read_image(tmp_path / "white.png")).min() == 255


def test_float_and_wide_integer_images_are_refused(tmp_path: Path) -> None:
    floats = _write(tmp_path / "floats.tif", np.full((4, 4), 0.5, dtype=np.float32))
    with pytest.raises(ValueError, match=f"cannot read image file {_named(floats)}: PIL mode F"):
        read_image(floats)
    wide = _write(tmp_path / "wide.tif", np.full((4, 4), 70000, dtype=np.int32))
    with pytest.raises(ValueError, match=f"cannot read image file {_named(wide)}: PIL mode I with values 70000..70000"):
        read_image(wide)
