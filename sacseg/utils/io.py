"""File I/O shared by every layer: atomic writes (an interrupted run never leaves a truncated file) and image files."""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageOps

__all__ = ["IMAGE_SUFFIXES", "atomic_open", "read_image", "save_float_map", "save_png", "stale_temp_files"]

#: The file name suffixes read as images (lower case).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# atomic_open's temporary files: ".<name>.<8 random characters from mkstemp>.tmp" next to the target.
_TEMP_SUFFIX = ".tmp"


def _temp_prefix(target: Path) -> str:
    return f".{target.name}."


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on a clean exit it replaces ``path`` in one step.

    The parent folder is created when missing. ``mode`` is ``"w"`` (text) or ``"wb"`` (binary);
    extra keyword arguments go to ``open`` (e.g. ``encoding``). On an exception the temporary
    file is removed and ``path`` is left as it was; an OSError (disk full, read-only folder,
    ``path`` a folder) comes back as an OSError whose message names ``path``.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=_temp_prefix(target), suffix=_TEMP_SUFFIX)
    except OSError as err:
        raise OSError(f"cannot write {target}: {err.strerror or err}") from err
    try:
        # mkstemp makes the file private (0600); results are meant to be shared like any output.
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise OSError(f"cannot write {target}: {err.strerror or err}") from err
        raise


def stale_temp_files(path: str | os.PathLike[str]) -> list[Path]:
    """The temporary files ``atomic_open`` left next to ``path`` when its process was killed mid-write.

    Only names of ``atomic_open``'s own pattern are listed. They are stale only if no process is
    still writing ``path``: the caller must know that (e.g. by holding the run folder's lock).
    """
    target = Path(path)
    random_part = "?" * 8  # tempfile.mkstemp's random names are 8 characters long
    pattern = glob.escape(_temp_prefix(target)) + random_part + _TEMP_SUFFIX
    return sorted(p for p in target.parent.glob(pattern) if p.is_file())


def save_png(array: np.ndarray, path: str | os.PathLike[str]) -> None:
    """Write a uint8 array ``[H, W]`` (grey / label ids) or ``[H, W, 3]`` (RGB), or a uint16 ``[H, W]``
    (16-bit label ids), as a PNG, atomically."""
    grey = array.ndim == 2 and array.dtype in (np.uint8, np.uint16)
    if not grey and not (array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3):
        raise ValueError(
            f"expected a uint8 array [H, W] or [H, W, 3], or a uint16 [H, W], for {path}, got {array.dtype} {array.shape}"
        )
    with atomic_open(path, "wb") as handle:
        Image.fromarray(array).save(handle, format="PNG")


def save_float_map(values: np.ndarray, path: str | os.PathLike[str]) -> None:
    """Write a map ``[H, W]`` as float32, atomically: a NumPy ``.npy`` file, or for ``.tif`` / ``.tiff`` a
    one-channel 32-bit float TIFF (PIL mode ``F``, which image tools and ``tifffile`` read)."""
    if values.ndim != 2:
        raise ValueError(f"expected a map [H, W] for {path}, got shape {values.shape}")
    suffix = Path(path).suffix.lower()
    if suffix not in (".npy", ".tif", ".tiff"):
        raise ValueError(f"a float map is written as .npy, .tif or .tiff, not {suffix!r}: {path}")
    values = np.ascontiguousarray(values, dtype=np.float32)
    with atomic_open(path, "wb") as handle:
        if suffix == ".npy":
            np.save(handle, values)
        else:
            Image.fromarray(values, mode="F").save(handle, format="TIFF")


def read_image(path: str | os.PathLike[str]) -> Image.Image:
    """Decode an image fully (so truncation is detected here) as 8-bit RGB; errors name the file.

    An EXIF orientation (as phones and cameras write) is applied, so the pixels are those an image
    viewer shows, not the sensor's rows.

    16-bit greyscale (PIL modes ``I;16*``, and ``I`` holding values in 0..65535, as 16-bit PNGs
    and TIFFs decode) is scaled to 0..255 (``/ 257``): PIL's own conversion clips it, which turns
    nearly every pixel white. Wider integer and floating-point images are refused.
    """
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode.startswith("I") or img.mode == "F":
                return _grey16_to_rgb(img)
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError) as exc:
        raise ValueError(f"cannot read image file {path}: {exc}") from exc


def _grey16_to_rgb(img: Image.Image) -> Image.Image:
    array = np.asarray(img)
    if img.mode == "F" or array.min() < 0 or array.max() > 65535:
        raise ValueError(
            f"PIL mode {img.mode} with values {array.min()}..{array.max()} is not an 8- or 16-bit image; "
            "convert it to 8 or 16 bits per channel"
        )
    return Image.fromarray(np.rint(array / 257.0).astype(np.uint8)).convert("RGB")  # 65535 -> 255
