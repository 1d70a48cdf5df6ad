"""The folder a page's examples run in: the repository's configs and tiny generated stand-ins for the data sets."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
# What the examples use from the repository, linked (read-only use) rather than copied.
LINKED = ("configs", "benchmarks", "studies", "hubconf.py")
# CamVid's file name that the pages predict on; the other names are made up.
CAMVID_FRAME = "0016E5_07959"
CITYSCAPES_FRAME = ("frankfurt", "frankfurt_000000_000294")
# Cityscapes labelIds painted into the generated frame (road, building, sky, car) and the one class
# with instances, so that the official evaluator has both IoU and iIoU to score.
CITYSCAPES_LABEL_IDS = (7, 11, 23, 26)
CITYSCAPES_CAR = 26


def _paint(rng: np.random.Generator, height: int, width: int, labels: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """A label map of horizontal bands of ``labels[:-1]`` with a box of ``labels[-1]``, and an image
    coloured by label with noise: enough structure for two training steps to have something to fit."""
    mask = np.empty((height, width), np.uint8)
    for i, band in enumerate(np.array_split(np.arange(height), len(labels) - 1)):
        mask[band] = labels[i]
    top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
    mask[top : top + height // 3, left : left + width // 3] = labels[-1]
    colours = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    image = colours[mask] // 2 + rng.integers(0, 128, (height, width, 3), dtype=np.uint8)
    return image, mask


def _save_pair(image: np.ndarray, mask: np.ndarray, image_path: Path, mask_path: Path) -> None:
    for path, array in ((image_path, image), (mask_path, mask)):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path)


def write_camvid(root: Path, rng: np.random.Generator) -> None:
    """CamVid's layout at its 360x480 size: 4 training and 2 validation frames, classes 0..10 and void 11."""
    for split, names in (("train", [f"0001TP_{i:06d}" for i in range(4)]), ("val", [CAMVID_FRAME, "0016E5_08000"])):
        for name in names:
            image, mask = _paint(rng, 360, 480, (0, 1, 3, 4, 11, 8))
            _save_pair(image, mask, root / split / f"{name}.png", root / f"{split}annot" / f"{name}.png")


def write_cityscapes(root: Path, rng: np.random.Generator) -> None:
    """One val frame in Cityscapes' layout (at a quarter of its size) with labelIds and instanceIds."""
    city, frame = CITYSCAPES_FRAME
    image, label_ids = _paint(rng, 256, 512, CITYSCAPES_LABEL_IDS)
    gt = root / "gtFine" / "val" / city
    _save_pair(
        image, label_ids, root / "leftImg8bit" / "val" / city / f"{frame}_leftImg8bit.png", gt / f"{frame}_gtFine_labelIds.png"
    )
    # Cityscapes' instance encoding: labelId * 1000 + instance number for classes with instances.
    instance_ids = label_ids.astype(np.uint16)
    instance_ids[label_ids == CITYSCAPES_CAR] = CITYSCAPES_CAR * 1000
    Image.fromarray(instance_ids).save(gt / f"{frame}_gtFine_instanceIds.png")


def write_folder(root: Path, rng: np.random.Generator) -> None:
    """``configs/folder_example.yaml``'s layout: JPEG images, masks of classes 0..2 and 9 for unlabelled pixels."""
    for split, count in (("train", 4), ("val", 2)):
        for i in range(count):
            image, mask = _paint(rng, 64, 64, (0, 1, 9, 2))
            _save_pair(image, mask, root / "images" / split / f"frame_{i:02d}.jpg", root / "masks" / split / f"frame_{i:02d}.png")


def create() -> Path:
    """A new temporary folder ``<tmp>/repo`` to run examples in (the caller deletes ``<tmp>``).

    Beside it, ``../shared/data/camvid`` and ``../shared/data/cityscapes_sample`` hold tiny generated
    data sets where the repository's configs and the pages expect the real samples; ``my_dataset`` is
    a generated image folder for ``dataset: folder``. Same seed every time, so the outputs repeat.
    """
    top = Path(tempfile.mkdtemp(prefix="sacseg-docs-"))
    work = top / "repo"
    work.mkdir()
    for name in LINKED:
        (work / name).symlink_to(REPO / name)
    rng = np.random.default_rng(0)
    write_camvid(top / "shared" / "data" / "camvid", rng)
    write_cityscapes(top / "shared" / "data" / "cityscapes_sample", rng)
    write_folder(work / "my_dataset", rng)
    return work


def remove(work: Path) -> None:
    """Deletes a folder made by :func:`create`, with everything the examples wrote into it."""
    shutil.rmtree(work.parent)
