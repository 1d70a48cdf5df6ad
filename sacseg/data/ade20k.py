"""ADE20K SceneParsing (ADEChallengeData2016 layout): 150 classes, label 0 ignored."""

from __future__ import annotations

from pathlib import Path

import torch

from ._base import PairedSegmentation, index_palette, list_files, make_lut, pair_files, require_dir, suffix_key
from .transforms import IGNORE_INDEX, JointTransform

# First name of each row of the official objectInfo150.txt (Idx 1..150), used when the root lacks that file.
CLASSES: tuple[str, ...] = (
    "wall",
    "building",
    "sky",
    "floor",
    "tree",
    "ceiling",
    "road",
    "bed",
    "windowpane",
    "grass",
    "cabinet",
    "sidewalk",
    "person",
    "earth",
    "door",
    "table",
    "mountain",
    "plant",
    "curtain",
    "chair",
    "car",
    "water",
    "painting",
    "sofa",
    "shelf",
    "house",
    "sea",
    "mirror",
    "rug",
    "field",
    "armchair",
    "seat",
    "fence",
    "desk",
    "rock",
    "wardrobe",
    "lamp",
    "bathtub",
    "railing",
    "cushion",
    "base",
    "box",
    "column",
    "signboard",
    "chest of drawers",
    "counter",
    "sand",
    "sink",
    "skyscraper",
    "fireplace",
    "refrigerator",
    "grandstand",
    "path",
    "stairs",
    "runway",
    "case",
    "pool table",
    "pillow",
    "screen door",
    "stairway",
    "river",
    "bridge",
    "bookcase",
    "blind",
    "coffee table",
    "toilet",
    "flower",
    "book",
    "hill",
    "bench",
    "countertop",
    "stove",
    "palm",
    "kitchen island",
    "computer",
    "swivel chair",
    "boat",
    "bar",
    "arcade machine",
    "hovel",
    "bus",
    "towel",
    "light",
    "truck",
    "tower",
    "chandelier",
    "awning",
    "streetlight",
    "booth",
    "television",
    "airplane",
    "dirt track",
    "apparel",
    "pole",
    "land",
    "bannister",
    "escalator",
    "ottoman",
    "bottle",
    "buffet",
    "poster",
    "stage",
    "van",
    "ship",
    "fountain",
    "conveyer belt",
    "canopy",
    "washer",
    "plaything",
    "swimming pool",
    "stool",
    "barrel",
    "basket",
    "waterfall",
    "tent",
    "bag",
    "minibike",
    "cradle",
    "oven",
    "ball",
    "food",
    "step",
    "tank",
    "trade name",
    "microwave",
    "pot",
    "animal",
    "bicycle",
    "lake",
    "dishwasher",
    "screen",
    "blanket",
    "sculpture",
    "hood",
    "sconce",
    "vase",
    "traffic light",
    "tray",
    "ashcan",
    "fan",
    "pier",
    "crt screen",
    "plate",
    "monitor",
    "bulletin board",
    "shower",
    "radiator",
    "glass",
    "clock",
    "flag",
)
PALETTE = index_palette(len(CLASSES))
SPLITS = {"train": "training", "training": "training", "val": "validation", "validation": "validation"}


def read_object_info(path: Path) -> tuple[str, ...]:
    """Class names (first synonym of each row) from an ``objectInfo150.txt`` (header + rows Idx..Name, tab separated)."""
    rows = path.read_text().splitlines()[1:]
    names: list[str] = []
    for number, row in enumerate(rows, start=2):
        fields = row.split("\t")
        if len(fields) < 5 or not fields[0].strip().isdigit() or int(fields[0]) != len(names) + 1:
            raise ValueError(
                f"{path} line {number}: expected 'Idx<TAB>Ratio<TAB>Train<TAB>Val<TAB>Name' with Idx {len(names) + 1}"
            )
        names.append(fields[4].split(",")[0].strip())
    if len(names) != len(CLASSES):
        raise ValueError(f"{path} lists {len(names)} classes, expected {len(CLASSES)}")
    return tuple(names)


class ADE20K(PairedSegmentation):
    """``root/ADEChallengeData2016/images/<split>/*.jpg`` with ``.../annotations/<split>/*.png``.

    ``root`` may be the folder holding ``ADEChallengeData2016`` or that folder itself. ``split`` is
    "training"/"train" or "validation"/"val". Label 0 ("other") -> 255, k in 1..150 -> class k-1.
    Class names come from ``objectInfo150.txt`` when present, else from the shipped ``CLASSES``.
    """

    # Class-level too, so that pictures of a trained model can be coloured without the data at hand.
    classes: tuple[str, ...] = CLASSES
    palette: torch.Tensor = PALETTE

    def __init__(self, root: str | Path, split: str, transforms: JointTransform | None = None) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown ADE20K split {split!r}; valid: {', '.join(SPLITS)}")
        root = Path(root)
        if (root / "ADEChallengeData2016").is_dir():
            root = root / "ADEChallengeData2016"
        image_dir = require_dir(root / "images" / SPLITS[split], "ADE20K image")
        label_dir = require_dir(root / "annotations" / SPLITS[split], "ADE20K label")
        images = list_files(image_dir, suffix_key(".jpg"))
        labels = list_files(label_dir, suffix_key(".png"))
        info = root / "objectInfo150.txt"
        classes = read_object_info(info) if info.is_file() else CLASSES
        lut = make_lut({0: IGNORE_INDEX, **{k: k - 1 for k in range(1, len(CLASSES) + 1)}})
        super().__init__(pair_files(images, labels, image_dir, label_dir), lut, classes, PALETTE, transforms)
        self.root, self.split = root, SPLITS[split]
