"""Predictions for image files on disk: colour-coded PNGs, overlays, scale heat maps, class-index and Cityscapes labelId PNGs."""

from __future__ import annotations

import os
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from tqdm import tqdm

from sacseg.config import TrainConfig
from sacseg.data import Cityscapes
from sacseg.data.transforms import eval_transforms
from sacseg.export.label_png import cityscapes_result_path, export_cityscapes_prediction, save_label_png
from sacseg.factory import dataset_labels
from sacseg.labels import Labels
from sacseg.models.inference import predict_labels
from sacseg.options import InferenceOptions, PredictionFormat, ScaleFormat
from sacseg.utils.device import model_device
from sacseg.utils.io import IMAGE_SUFFIXES, read_image, save_float_map, save_png
from sacseg.viz import add_legend, colorize, overlay, save_scale_map

__all__ = [
    "PREDICTIONS_MARKER",
    "ImageFile",
    "PredictionFormat",
    "find_image_files",
    "find_images",
    "load_image",
    "predict_files",
    "to_model_input",
]


#: The file ``predict_files`` leaves in its output folder: ``find_images`` searches no folder holding one.
PREDICTIONS_MARKER = ".sacseg-predictions"

# What predict_files writes per image, after its stem (a scale map's layer name comes between "_scale_" and
# the suffix of its format).
_OUTPUT_SUFFIXES = ("_color.png", "_overlay.png", "_index.png")
_SCALE_SUFFIXES: dict[ScaleFormat, str] = {"png": ".png", "npy": ".npy", "tiff": ".tif"}


class ImageFile(NamedTuple):
    """An image to predict, and the folder under the output folder that its outputs go to: the path of
    its own folder relative to the input folder it was found in (``.`` for a file given by name)."""

    path: Path
    subfolder: Path


def find_image_files(inputs: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str] | None = None) -> list[ImageFile]:
    """Image files named by ``inputs``, each with the output subfolder that mirrors where it was found.

    Files are taken as given; folders are searched recursively (sorted) for files with a suffix in
    ``sacseg.data``'s list (PNG, JPG, ...), except in ``out_dir`` and in any folder below holding
    ``PREDICTIONS_MARKER`` (an earlier ``predict_files`` output folder). Where ``out_dir`` is an input
    folder itself, the files ``predict_files`` writes there for the images found are left out, so a
    second run does not predict its own outputs. Raises FileNotFoundError for a missing path and
    ValueError for a folder without images.
    """
    out = Path(out_dir).resolve() if out_dir is not None else None
    found: list[ImageFile] = []
    searched: set[Path] = set()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            images = [ImageFile(p, p.parent.relative_to(path)) for p in _search(path, out)]
            if not images:
                raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
            found.extend(images)
            searched.update(image.path for image in images)
        elif path.is_file():
            found.append(ImageFile(path, Path()))
        else:
            raise FileNotFoundError(f"image or folder not found: {path}")
    if out is None:
        return found
    stems: dict[Path, set[str]] = {}  # output folder -> the stems of the images whose outputs go there
    for image in found:
        stems.setdefault((out / image.subfolder).resolve(), set()).add(image.path.stem)
    return [image for image in found if image.path not in searched or not _is_output_of(image.path.resolve(), stems, out)]


def find_images(inputs: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """The paths of :func:`find_image_files`."""
    return [image.path for image in find_image_files(inputs, out_dir)]


def _search(folder: Path, out_dir: Path | None) -> list[Path]:
    """The image files below ``folder``, sorted, from no subfolder that is ``out_dir`` or holds ``PREDICTIONS_MARKER``."""
    images: list[Path] = []
    for parent, subfolders, files in os.walk(folder):
        here = Path(parent)
        subfolders[:] = [
            name for name in subfolders
            if not (here / name / PREDICTIONS_MARKER).exists() and (here / name).resolve() != out_dir
        ]  # fmt: skip
        images.extend(here / name for name in files if Path(name).suffix.lower() in IMAGE_SUFFIXES)
    return sorted(images)


def _is_output_of(path: Path, stems: dict[Path, set[str]], out_dir: Path) -> bool:
    """Whether ``path`` is a file ``predict_files`` writes for an image found, given the stems of the
    images whose outputs go to each folder."""
    name, here = path.name, stems.get(path.parent, set())
    for suffix in _OUTPUT_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in here:
            return True
    cut = name.find("_scale_")
    while cut > 0 and name.endswith(tuple(_SCALE_SUFFIXES.values())):
        if name[:cut] in here:
            return True
        cut = name.find("_scale_", cut + 1)
    suffix = "_pred_labelIds.png"  # cityscapes_result_path: <city>/<city>_<seq>_<frame>_pred_labelIds.png
    every = set().union(*stems.values())
    return path.parent.parent == out_dir and name.endswith(suffix) and f"{name[: -len(suffix)]}_leftImg8bit" in every


def to_model_input(picture: Image.Image | Tensor) -> Tensor:
    """An RGB picture (PIL, or a tensor ``[3, H, W]``: uint8 0..255 or float 0..1) as the normalised
    tensor ``[3, H, W]`` models take (the evaluation transform)."""
    height, width = (picture.height, picture.width) if isinstance(picture, Image.Image) else picture.shape[-2:]
    # The eval transform is joint (image, label); an empty label keeps one normalisation for both uses.
    image, _ = eval_transforms()(picture, torch.zeros(height, width, dtype=torch.uint8))
    return image


def load_image(path: str | os.PathLike[str]) -> tuple[np.ndarray, Tensor]:
    """An image file as uint8 RGB ``[H, W, 3]`` and as the normalised tensor ``[3, H, W]`` models take.

    ValueError names a file that cannot be decoded.
    """
    picture = read_image(Path(path))
    return np.asarray(picture), to_model_input(picture)


def _output_prefixes(images: Sequence[ImageFile], out_dir: Path, fmt: PredictionFormat) -> list[Path]:
    """``out_dir / subfolder / stem`` per image, the start of its output names (for ``fmt="cityscapes"``
    the one file it writes); ValueError naming two images whose outputs would be the same files."""
    seen: dict[Path, Path] = {}
    for image in images:
        if fmt == "cityscapes":
            prefix = cityscapes_result_path(image.path, out_dir)
        else:
            prefix = out_dir / image.subfolder / image.path.stem
        if prefix in seen:
            raise ValueError(f"two images would write the same outputs ({prefix}_*): {seen[prefix]} and {image.path}")
        seen[prefix] = image.path
    return list(seen)


def _mark(out_dir: Path, images: Sequence[ImageFile]) -> None:
    """Leave ``PREDICTIONS_MARKER`` in ``out_dir``, unless it holds input images: searched from above, the
    folder is then still searched (its outputs are told apart by name)."""
    folder = out_dir.resolve()
    if any(image.path.resolve().is_relative_to(folder) for image in images):
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    marker = out_dir / PREDICTIONS_MARKER
    if not marker.exists():
        marker.write_text("sacseg predict wrote this folder; sacseg predict searches no folder holding this file\n")


def predict_files(
    model: nn.Module,
    cfg: TrainConfig,
    paths: Sequence[Path | ImageFile],
    out_dir: str | os.PathLike[str],
    fmt: PredictionFormat = "color",
    options: InferenceOptions = InferenceOptions(),
    progress: bool = False,
    legend: bool = True,
    on_unreadable: Callable[[Path, ValueError], None] | None = None,
    scale_format: ScaleFormat = "png",
    class_labels: Labels | None = None,
) -> list[Path]:
    """Predict each image file with ``model`` (eval mode) and write the results into ``out_dir``; return them.

    Each image's outputs go into ``out_dir / subfolder`` for an :class:`ImageFile` (what
    :func:`find_image_files` gives: the input folders' structure mirrored), into ``out_dir`` for a
    path; two images whose outputs would be the same files are a ValueError before anything is
    written. ``out_dir`` gets ``PREDICTIONS_MARKER``, so that it is not searched for inputs again (not
    where it holds input images). ``on_unreadable(path, error)``, if given, is called for an image
    file that cannot be read instead of raising the ValueError, and the other images are predicted.

    ``fmt="color"`` writes per image ``<stem>_color.png`` (the prediction in the palette of the
    config's dataset), ``<stem>_overlay.png`` (half-transparent over the image), both with a
    legend strip below naming the classes present (``legend=False``: none; the pictures then have
    the image's size) and, for SAC models, one file per scale map (from one whole-image pass at scale 1):
    ``<stem>_scale_<layer>.png``, a heat map with a colour bar on the model's fixed range
    ``[min_scale, max_scale]`` (the config's), so that colours compare across images; with
    ``scale_format`` ``"npy"`` or ``"tiff"`` the raw float32 values ``[H, W]`` instead,
    ``<stem>_scale_<layer>.npy`` or ``.tif``. ``fmt="index"`` writes
    ``<stem>_index.png``: the class indices ``0..K-1``, one channel, 8-bit for ``K <= 255`` (so 255
    stays the ignore value, as in the data sets' label maps) and 16-bit above. ``fmt="cityscapes"``
    (Cityscapes configs only) writes
    ``<city>/<city>_<seq>_<frame>_pred_labelIds.png`` with official labelIds for
    ``cityscapesscripts``' evaluator. The labels are predicted under ``options`` (see ``predict``).
    ``class_labels`` (names, palette) default to the config's data set's; an ONNX file's are in its metadata.
    """
    if fmt not in typing.get_args(PredictionFormat):
        raise ValueError(f"unknown prediction format {fmt!r}; valid: {', '.join(typing.get_args(PredictionFormat))}")
    if scale_format not in typing.get_args(ScaleFormat):
        raise ValueError(f"unknown scale-map format {scale_format!r}; valid: {', '.join(typing.get_args(ScaleFormat))}")
    if fmt == "cityscapes" and cfg.dataset != "cityscapes":
        raise ValueError(
            f"--format cityscapes needs a model trained on Cityscapes trainIds; its config says dataset {cfg.dataset!r}"
        )
    classes, palette = dataset_labels(cfg) if class_labels is None else class_labels
    out_dir = Path(out_dir)
    images = [p if isinstance(p, ImageFile) else ImageFile(Path(p), Path()) for p in paths]
    prefixes = _output_prefixes(images, out_dir, fmt)
    _mark(out_dir, images)
    device = model_device(model)
    written: list[Path] = []
    for (path, _), prefix in tqdm(
        list(zip(images, prefixes)), desc="predict", unit="image", disable=not progress, dynamic_ncols=True
    ):
        try:
            picture, image = load_image(path)
        except ValueError as err:
            if on_unreadable is None:
                raise
            on_unreadable(path, err)
            continue
        x = image.unsqueeze(0).to(device)
        if fmt == "cityscapes":
            pred = predict_labels(model, x, options, with_scales=False)[0][0]
            written.append(export_cityscapes_prediction(pred, path, out_dir, Cityscapes.train_id_to_label_id))
            continue
        if fmt == "index":
            written.append(Path(f"{prefix}_index.png"))
            labels = predict_labels(model, x, options, with_scales=False)[0][0]
            save_label_png(labels, written[-1], bits=8 if cfg.num_classes <= 255 else 16)
            continue
        labels, scale_maps = predict_labels(model, x, options)
        colours = colorize(labels[0], palette)
        outputs = {Path(f"{prefix}_color.png"): colours, Path(f"{prefix}_overlay.png"): overlay(picture, colours)}
        for target, array in outputs.items():
            if legend:
                array = add_legend(array, labels[0], classes, palette)
            save_png(array, target)
            written.append(target)
        for name, scale in scale_maps.items():
            target = Path(f"{prefix}_scale_{name}{_SCALE_SUFFIXES[scale_format]}")
            if scale_format == "png":
                title = f"scale coefficients ({name})"
                save_scale_map(scale[0, 0], target, vmin=cfg.min_scale, vmax=cfg.max_scale, title=title)
            else:
                save_float_map(scale[0, 0].float().cpu().numpy(), target)
            written.append(target)
    return written
