"""The data check before training: every bad file found before a run starts, each good file decoded once."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sacseg.cli import main
from sacseg.config import config_from_dict, save_config
from sacseg.data import ScaleScenes, SegmentationFolder
from sacseg.data import check as check_module
from sacseg.data.check import check_datasets

CLASSES = ["a", "b", "c"]


def _folder(root: Path, pairs: int = 2, size: int = 16) -> SegmentationFolder:
    """``pairs`` random PNG images with masks of stripes of the classes 0, 1, 2 and the ignored value 255."""
    rng = np.random.default_rng(0)
    for sub in ("img", "mask"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(pairs):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / "img" / f"{i}.png")
        Image.fromarray(np.array([0, 1, 2, 255], np.uint8).repeat(size // 4)[None].repeat(size, 0)).save(
            root / "mask" / f"{i}.png"
        )
    return SegmentationFolder(root / "img", root / "mask", CLASSES)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _save_jpeg(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path.with_suffix(".jpg"), quality=75)
    path.unlink()
    return path.with_suffix(".jpg")


def _damage(root: Path, kind: str, size: int = 16) -> Path:
    """Spoil pair 1 of ``_folder(root, size=size)`` as a user's data can be; returns the bad file."""
    image, mask = root / "img" / "1.png", root / "mask" / "1.png"
    if kind == "truncated JPEG image":
        image = _save_jpeg(image, np.asarray(Image.open(image)))
        _truncate(image)
        return image
    if kind == "truncated PNG mask":
        _truncate(mask)
    elif kind == "RGB mask":
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(mask)
    elif kind == "JPEG mask":  # class 0 beside ignored 255, inside a block: the compression blurs the edge
        return _save_jpeg(mask, np.where(np.arange(16) < 5, 0, 255).astype(np.uint8)[None].repeat(16, 0))
    elif kind == "class id 200":
        Image.fromarray(np.full((size, size), 200, np.uint8)).save(mask)
    else:  # sizes that differ
        Image.fromarray(np.zeros((16, 12), np.uint8)).save(mask)
    return mask


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("truncated JPEG image", "cannot read image file {path}"),
        ("truncated PNG mask", "cannot read label file {path}"),
        ("RGB mask", "label file {path} must be a single-channel integer image"),
        ("JPEG mask", "label file {path} has values outside the known set: ["),
        ("class id 200", "label file {path} has values outside the known set: [200]; known values: 0-2 (classes), "
         "255 (ignored) (the ignored value is config key folder_ignore_index; class ids are 0..num_classes-1)"),
        ("sizes that differ", "image {image} is 16x16 but label {path} is 12x16 (W x H)"),
    ],
)  # fmt: skip
def test_every_bad_file_is_found_and_named(tmp_path: Path, kind: str, message: str) -> None:
    _folder(tmp_path)
    bad = _damage(tmp_path, kind)
    dataset = SegmentationFolder(tmp_path / "img", tmp_path / "mask", CLASSES)
    with pytest.raises(ValueError, match="^data check: " + re.escape(message.format(path=bad, image=tmp_path / "img" / "1.png"))):
        check_datasets([dataset], progress=False)
    if kind == "JPEG mask":
        hint = "JPEG compression changes a mask's values: store masks as PNG$"
        with pytest.raises(ValueError, match=hint):
            check_datasets([dataset], progress=False)
        with pytest.raises(ValueError, match=hint):
            dataset.load(1)  # the loader's own message says the same


def test_each_file_is_decoded_once_until_it_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = _folder(tmp_path / "data")
    first = check_datasets([dataset, ScaleScenes(1, size=64)], progress=False)
    assert first is not None and (first.files, first.decoded) == (4, 4)
    assert json.loads(first.cache.read_text())["version"] == 1
    assert [p.name for p in first.cache.parent.iterdir() if p.name.startswith(".")] == []  # written whole

    def no_decoding(path: Any) -> None:
        raise AssertionError(f"{path} decoded again")

    with monkeypatch.context() as patch:
        patch.setattr(check_module, "read_image", no_decoding)
        patch.setattr(check_module, "read_label", no_decoding)
        again = check_datasets([dataset], progress=False)
    assert again is not None and again.decoded == 0 and again.cache == first.cache

    mask = tmp_path / "data" / "mask" / "0.png"
    Image.fromarray(np.full((16, 16), 200, np.uint8)).save(mask)
    os.utime(mask, ns=(1, 1))  # a new modification time, however coarse the file system's clock
    with pytest.raises(ValueError, match=re.escape(f"{mask} has values outside the known set: [200]")):
        check_datasets([dataset], progress=False)
    Image.fromarray(np.ones((16, 16), np.uint8)).save(mask)
    fixed = check_datasets([dataset], progress=False)
    assert fixed is not None and fixed.decoded == 1
    assert check_datasets([ScaleScenes(1, size=64)]) is None  # generated data needs no check


@pytest.mark.usefixtures("single_thread")
def test_a_start_on_bad_data_writes_nothing_and_a_rerun_after_the_fix_trains(
    two_step_settings: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _folder(tmp_path / "data" / "train", size=32)
    _folder(tmp_path / "data" / "val", pairs=1, size=32)
    settings = {
        **two_step_settings, "dataset": "folder", "data_root": str(tmp_path / "data"), "folder_images": "{split}/img",
        "folder_masks": "{split}/mask", "folder_classes": CLASSES, "num_classes": 3, "crop_size": 32,
    }  # fmt: skip
    save_config(config_from_dict(settings), tmp_path / "folder.yaml")
    bad = _damage(tmp_path / "data" / "train", "class id 200", size=32)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(tmp_path / "folder.yaml"), "--out", str(out)])
    assert exit_info.value.code == 2
    assert not out.exists()  # nothing written: the folder takes a run once the data is fixed
    err = capsys.readouterr().err
    assert err.endswith(f"error: data check: label file {bad} has values outside the known set: [200]; known values: "
                        "0-2 (classes), 255 (ignored) (the ignored value is config key folder_ignore_index; class ids are "
                        "0..num_classes-1)\n")  # fmt: skip

    Image.fromarray(np.ones((32, 32), np.uint8)).save(bad)  # fixed
    assert main(["train", "--config", str(tmp_path / "folder.yaml"), "--out", str(out)]) == 0
    assert "data check: 6 files, 1 decoded now, 5 remembered in" in (out / "train.log").read_text()
