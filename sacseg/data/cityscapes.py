"""Cityscapes fine annotations (leftImg8bit / gtFine layout) with labelIds mapped to the 19 trainIds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ._base import PairedSegmentation, list_files, make_lut, pair_files, require_dir, suffix_key
from .transforms import IGNORE_INDEX, JointTransform

# The 19 evaluated classes of the official table (cityscapesscripts' helpers/labels.py, which a test
# compares against): (labelId, name, colour) in trainId order. Every other labelId 0..33 is ignored;
# "license plate" has id -1 and never occurs in labelIds images. Copied so that the data set does not
# need the evaluation scripts installed.
_TRAIN_LABELS: tuple[tuple[int, str, tuple[int, int, int]], ...] = (
    (7, "road", (128, 64, 128)),
    (8, "sidewalk", (244, 35, 232)),
    (11, "building", (70, 70, 70)),
    (12, "wall", (102, 102, 156)),
    (13, "fence", (190, 153, 153)),
    (17, "pole", (153, 153, 153)),
    (19, "traffic light", (250, 170, 30)),
    (20, "traffic sign", (220, 220, 0)),
    (21, "vegetation", (107, 142, 35)),
    (22, "terrain", (152, 251, 152)),
    (23, "sky", (70, 130, 180)),
    (24, "person", (220, 20, 60)),
    (25, "rider", (255, 0, 0)),
    (26, "car", (0, 0, 142)),
    (27, "truck", (0, 0, 70)),
    (28, "bus", (0, 60, 100)),
    (31, "train", (0, 80, 100)),
    (32, "motorcycle", (0, 0, 230)),
    (33, "bicycle", (119, 11, 32)),
)
_NUM_LABEL_IDS = 34
CLASSES: tuple[str, ...] = tuple(name for _, name, _ in _TRAIN_LABELS)
PALETTE = torch.tensor([colour for _, _, colour in _TRAIN_LABELS], dtype=torch.uint8)
LABEL_TO_TRAIN_ID: dict[int, int] = dict.fromkeys(range(_NUM_LABEL_IDS), IGNORE_INDEX) | {
    label_id: train_id for train_id, (label_id, _, _) in enumerate(_TRAIN_LABELS)
}
# Exported predictions: 255 (ignore / unknown) becomes labelId 0 "unlabeled", which evaluation ignores.
VOID_LABEL_ID = 0
_TRAIN_TO_LABEL = np.full(256, VOID_LABEL_ID, dtype=np.int64)
_TRAIN_TO_LABEL[: len(_TRAIN_LABELS)] = [label_id for label_id, _, _ in _TRAIN_LABELS]

SPLITS = ("train", "val", "test")


def train_id_to_label_id(train_ids: torch.Tensor) -> torch.Tensor:
    """Map trainIds (0..18, 255) -> official labelIds for export; any other value (incl. 255) -> 0 "unlabeled".

    ``train_ids``: integer tensor of any shape; returns a long tensor of the same shape and device.
    """
    if train_ids.dtype.is_floating_point or train_ids.dtype == torch.bool:
        raise TypeError(f"train_ids must be an integer tensor, got {train_ids.dtype}")
    table = torch.as_tensor(_TRAIN_TO_LABEL, device=train_ids.device)
    ids = train_ids.long()
    inside = (ids >= 0) & (ids < len(table))
    return torch.where(inside, table[ids.clamp(0, len(table) - 1)], torch.full_like(ids, VOID_LABEL_ID))


class Cityscapes(PairedSegmentation):
    """``root/leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with ``root/gtFine/<split>/<city>/*_gtFine_labelIds.png``.

    Targets are trainIds 0..18 (``CLASSES``) with every other labelId -> 255, through the official
    Cityscapes table. ``split`` is "train", "val" or "test".
    """

    # Class-level too, so that pictures of a trained model can be coloured without the data at hand.
    classes: tuple[str, ...] = CLASSES
    palette: torch.Tensor = PALETTE

    train_id_to_label_id = staticmethod(train_id_to_label_id)

    def __init__(self, root: str | Path, split: str, transforms: JointTransform | None = None) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown Cityscapes split {split!r}; valid: {', '.join(SPLITS)}")
        root = Path(root)
        image_dir = require_dir(root / "leftImg8bit" / split, "Cityscapes image")
        label_dir = require_dir(root / "gtFine" / split, "Cityscapes label")
        images = list_files(image_dir, _city_key(image_dir, "_leftImg8bit.png"), recursive=True)
        labels = list_files(label_dir, _city_key(label_dir, "_gtFine_labelIds.png"), recursive=True)
        super().__init__(
            pair_files(images, labels, image_dir, label_dir), make_lut(LABEL_TO_TRAIN_ID), CLASSES, PALETTE, transforms
        )
        self.root, self.split = root, split


def _city_key(folder: Path, suffix: str) -> Callable[[Path], str | None]:
    """Key ``<city>/<frame>`` so that frames pair within their city folder."""
    strip = suffix_key(suffix)

    def key(path: Path) -> str | None:
        frame = strip(path)
        return None if frame is None else f"{path.parent.relative_to(folder)}/{frame}"

    return key
