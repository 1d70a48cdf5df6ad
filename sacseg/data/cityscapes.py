"""Cityscapes fine annotations (leftImg8bit / gtFine layout) with labelIds mapped to the 19 trainIds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from cityscapesscripts.helpers.labels import labels as _CS_LABELS

from ._base import PairedSegmentation, list_files, make_lut, pair_files, require_dir, suffix_key
from .transforms import IGNORE_INDEX, JointTransform

# The official table (cityscapesscripts) is the single source of truth; "license plate" has id -1 and
# never occurs in labelIds images, so only ids 0..33 are known label values.
_TRAIN_LABELS = sorted((l for l in _CS_LABELS if 0 <= l.trainId < IGNORE_INDEX), key=lambda l: l.trainId)
CLASSES: tuple[str, ...] = tuple(l.name for l in _TRAIN_LABELS)
PALETTE = torch.tensor([l.color for l in _TRAIN_LABELS], dtype=torch.uint8)
LABEL_TO_TRAIN_ID: dict[int, int] = {l.id: (l.trainId if 0 <= l.trainId < IGNORE_INDEX else IGNORE_INDEX) for l in _CS_LABELS if l.id >= 0}
# Exported predictions: 255 (ignore / unknown) becomes labelId 0 "unlabeled", which evaluation ignores.
VOID_LABEL_ID = 0
_TRAIN_TO_LABEL = np.full(256, VOID_LABEL_ID, dtype=np.int64)
_TRAIN_TO_LABEL[[l.trainId for l in _TRAIN_LABELS]] = [l.id for l in _TRAIN_LABELS]

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
    cityscapesscripts table. ``split`` is "train", "val" or "test".
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
        super().__init__(pair_files(images, labels, image_dir, label_dir), make_lut(LABEL_TO_TRAIN_ID), CLASSES, PALETTE, transforms)
        self.root, self.split = root, split


def _city_key(folder: Path, suffix: str) -> Callable[[Path], str | None]:
    """Key ``<city>/<frame>`` so that frames pair within their city folder."""
    strip = suffix_key(suffix)

    def key(path: Path) -> str | None:
        frame = strip(path)
        return None if frame is None else f"{path.parent.relative_to(folder)}/{frame}"

    return key
