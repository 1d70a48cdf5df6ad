"""A generic segmentation data set from an image folder and a mask folder matched by file stem."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ._base import PairedSegmentation, image_stem_key, index_palette, list_files, make_lut, pair_files, require_dir
from .transforms import IGNORE_INDEX, JointTransform


class SegmentationFolder(PairedSegmentation):
    """Images in ``images_dir`` and single-channel masks in ``masks_dir`` paired by file stem.

    Mask values are class indices 0..len(classes)-1; the value ``ignore_index`` is ignored (becomes 255);
    any other value is an error. ``palette`` defaults to generated distinct colours (``index_palette``).
    """

    label_hint = " (the ignored value is config key folder_ignore_index; class ids are 0..num_classes-1)"

    def __init__(
        self,
        images_dir: str | Path,
        masks_dir: str | Path,
        classes: Sequence[str],
        ignore_index: int = IGNORE_INDEX,
        transforms: JointTransform | None = None,
        palette: torch.Tensor | None = None,
    ) -> None:
        classes = tuple(classes)
        if not classes:
            raise ValueError("classes must not be empty")
        if len(classes) > IGNORE_INDEX:
            raise ValueError(f"at most {IGNORE_INDEX} classes are supported, got {len(classes)}")
        if not (len(classes) <= ignore_index <= 255):
            raise ValueError(f"ignore_index must be in [{len(classes)}, 255] (not a class index), got {ignore_index}")
        image_dir = require_dir(Path(images_dir), "image")
        mask_dir = require_dir(Path(masks_dir), "mask")
        pairs = pair_files(list_files(image_dir, image_stem_key), list_files(mask_dir, image_stem_key), image_dir, mask_dir)
        lut = make_lut({**{k: k for k in range(len(classes))}, ignore_index: IGNORE_INDEX})
        super().__init__(pairs, lut, classes, palette if palette is not None else index_palette(len(classes)), transforms)
