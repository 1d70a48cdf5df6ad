"""Shared machinery of the file-based data sets: pairing image and label files, checked reading, id mapping."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from sacseg.utils.io import IMAGE_SUFFIXES, read_image

from .transforms import IGNORE_INDEX, JointTransform, eval_transforms


def require_dir(path: Path, what: str) -> Path:
    """Return ``path`` if it is a directory, else raise FileNotFoundError naming it."""
    if not path.is_dir():
        raise FileNotFoundError(f"{what} folder not found: {path}")
    return path


def list_files(folder: Path, key: Callable[[Path], str | None], recursive: bool = False) -> dict[str, Path]:
    """Map ``key(path)`` -> path for the files of ``folder`` whose key is not None (sorted by key)."""
    paths = folder.rglob("*") if recursive else folder.iterdir()
    found: dict[str, Path] = {}
    for path in paths:
        if not path.is_file():
            continue
        k = key(path)
        if k is None:
            continue
        if k in found:
            raise ValueError(f"two files share the key {k!r}: {found[k]} and {path}")
        found[k] = path
    return dict(sorted(found.items()))


def suffix_key(suffix: str) -> Callable[[Path], str | None]:
    """Key function: the path name without ``suffix`` (None for names not ending in it)."""

    def key(path: Path) -> str | None:
        return path.name[: -len(suffix)] if path.name.endswith(suffix) else None

    return key


def image_stem_key(path: Path) -> str | None:
    """Key function: the file stem for files with a known image suffix."""
    return path.stem if path.suffix.lower() in IMAGE_SUFFIXES else None


def pair_files(
    images: Mapping[str, Path], labels: Mapping[str, Path], image_dir: Path, label_dir: Path
) -> list[tuple[Path, Path]]:
    """Pair image and label files by key; raise ValueError naming unpaired files (either way) or no files."""
    missing_labels = [images[k] for k in images if k not in labels]
    missing_images = [labels[k] for k in labels if k not in images]
    problems = []
    if missing_labels:
        problems.append(f"{len(missing_labels)} image(s) without a label in {label_dir}, e.g. {_some(missing_labels)}")
    if missing_images:
        problems.append(f"{len(missing_images)} label(s) without an image in {image_dir}, e.g. {_some(missing_images)}")
    if problems:
        raise ValueError("; ".join(problems))
    if not images:
        raise ValueError(f"no image files found in {image_dir}")
    return [(images[k], labels[k]) for k in images]


def _some(paths: Sequence[Path], n: int = 3) -> str:
    return ", ".join(str(p) for p in paths[:n]) + (", ..." if len(paths) > n else "")


def read_label(path: Path) -> np.ndarray:
    """Decode a single-channel label image to an integer array [H, W]; errors name the file."""
    try:
        with Image.open(path) as img:
            img.load()
            array = np.array(img)
    except (OSError, ValueError, SyntaxError) as exc:
        raise ValueError(f"cannot read label file {path}: {exc}") from exc
    if array.ndim != 2 or array.dtype.kind not in "ui":
        raise ValueError(f"label file {path} must be a single-channel integer image, got shape {array.shape} {array.dtype}")
    return array


def make_lut(mapping: Mapping[int, int]) -> np.ndarray:
    """Lookup table int64 [256]: raw label value -> target value, -1 for values outside ``mapping``."""
    lut = np.full(256, -1, dtype=np.int64)
    for raw, target in mapping.items():
        lut[raw] = target
    return lut


def map_label(array: np.ndarray, lut: np.ndarray, path: Path, hint: str = "") -> torch.Tensor:
    """Map raw label values through ``lut`` -> uint8 tensor [H, W]; ValueError naming ``path`` on unknown values
    (see ``unknown_values_message``)."""
    inside = array.min() >= 0 and array.max() < len(lut)
    mapped = lut[array] if inside else None
    if mapped is None or (mapped < 0).any():
        raise ValueError(unknown_values_message(path, np.unique(array).tolist(), lut, hint))
    return torch.from_numpy(mapped.astype(np.uint8))


def unknown_values_message(path: Path, values: Iterable[int], lut: np.ndarray, hint: str = "") -> str | None:
    """None when ``lut`` maps each of ``values`` (a label file's distinct values); else the error: the
    label file, its unknown values (the first 10), the known ones and ``hint`` (e.g. the config key that sets them)."""
    unknown = sorted(v for v in set(values) if not 0 <= v < len(lut) or lut[v] < 0)
    if not unknown:
        return None
    classes = np.flatnonzero((lut >= 0) & (lut != IGNORE_INDEX)).tolist()
    ignored = np.flatnonzero(lut == IGNORE_INDEX).tolist()
    known = f"{_ranges(classes)} (classes)" + (f", {_ranges(ignored)} (ignored)" if ignored else "")
    message = f"label file {path} has values outside the known set: {unknown[:10]}; known values: {known}{hint}"
    if path.suffix.lower() in (".jpg", ".jpeg"):  # lossy: the edges of every region get in-between values
        message += "; JPEG compression changes a mask's values: store masks as PNG"
    return message


def _ranges(values: Sequence[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> "0-2, 5, 7-8"."""
    runs: list[list[int]] = []
    for value in values:
        if runs and value == runs[-1][-1] + 1:
            runs[-1].append(value)
        else:
            runs.append([value])
    return ", ".join(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in runs)


def size_mismatch_message(
    image_path: Path, image_size: tuple[int, int], label_path: Path, label_size: tuple[int, int]
) -> str | None:
    """None when an image and its label have the same (height, width); else the error naming both files."""
    if image_size == label_size:
        return None
    return (
        f"image {image_path} is {image_size[1]}x{image_size[0]} but label {label_path} is {label_size[1]}x{label_size[0]} (W x H)"
    )


def _lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB uint8 ``[..., 3]`` -> CIELAB (D65) ``[..., 3]``: distances there follow perceived colour differences."""
    c = rgb / 255.0
    linear = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = linear @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).T
    xyz = xyz / np.array([0.9505, 1.0, 1.089])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def index_palette(num_classes: int) -> torch.Tensor:
    """Distinct colours uint8 ``[num_classes, 3]`` for class lists without a palette of their own.

    Greedy farthest points in CIELAB among the colours of a 16-level RGB grid: each class gets the
    candidate farthest from every colour already taken, so the first classes differ most and no two
    look alike. Near-black is left out, as black draws ignored pixels. Deterministic.
    """
    levels = np.arange(0, 256, 17)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(-1, 3)
    lab = _lab(grid)
    grid, lab = grid[lab[:, 0] > 25], lab[lab[:, 0] > 25]
    chosen = [int(np.argmax(np.hypot(lab[:, 1], lab[:, 2])))]  # start from the most saturated colour
    nearest = np.linalg.norm(lab - lab[chosen[0]], axis=1)
    for _ in range(1, num_classes):
        chosen.append(int(np.argmax(nearest)))
        nearest = np.minimum(nearest, np.linalg.norm(lab - lab[chosen[-1]], axis=1))
    return torch.from_numpy(grid[chosen[:num_classes]].astype(np.uint8)).reshape(num_classes, 3)


class PairedSegmentation(Dataset):
    """Base of the file-based data sets: ``ds[i] -> (image float [3, H, W], target long [H, W])``.

    Subclasses supply the ``(image path, label path)`` pairs and a lookup table from raw label values to
    targets (class index or 255); values missing from the table are an error naming the label file.
    """

    ignore_index: int = IGNORE_INDEX
    #: Appended to the error about unknown label values: how to change the values a data set knows.
    label_hint: str = ""

    def __init__(
        self,
        pairs: Sequence[tuple[Path, Path]],
        lut: np.ndarray,
        classes: Iterable[str],
        palette: torch.Tensor,
        transforms: JointTransform | None = None,
    ) -> None:
        self.pairs = list(pairs)
        self.lut = lut
        self.classes = tuple(classes)
        self.palette = palette
        self.transforms = transforms if transforms is not None else eval_transforms()
        if palette.shape != (len(self.classes), 3) or palette.dtype != torch.uint8:
            raise ValueError(f"palette must be uint8 [{len(self.classes)}, 3], got {palette.dtype} {tuple(palette.shape)}")

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[Image.Image, torch.Tensor]:
        """Untransformed sample: (RGB PIL image, target uint8 tensor [H, W] of class indices and 255)."""
        image_path, label_path = self.pairs[index]
        image = read_image(image_path)
        label = read_label(label_path)
        mismatch = size_mismatch_message(image_path, (image.height, image.width), label_path, (label.shape[0], label.shape[1]))
        if mismatch is not None:
            raise ValueError(mismatch)
        return image, map_label(label, self.lut, label_path, self.label_hint)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, target = self.load(index)
        return self.transforms(image, target)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} images, {len(self.classes)} classes)"
