"""Predictions for image files on disk: colour-coded PNGs, overlays, scale heat maps, class-index and Cityscapes labelId PNGs."""

from __future__ import annotations

import os
import typing
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from tqdm import tqdm

from sacseg.config import TrainConfig
from sacseg.data import Cityscapes
from sacseg.data.transforms import eval_transforms
from sacseg.export.label_png import export_cityscapes_prediction, save_label_png
from sacseg.factory import Labels, dataset_labels
from sacseg.models.inference import predict_labels
from sacseg.options import InferenceOptions, PredictionFormat
from sacseg.utils.device import model_device
from sacseg.utils.io import IMAGE_SUFFIXES, read_image, save_png
from sacseg.viz import add_legend, colorize, overlay, save_scale_map

__all__ = ["PredictionFormat", "find_images", "load_image", "predict_files", "to_model_input"]


def find_images(inputs: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Image files named by ``inputs``: files as given, folders searched (recursively, sorted) for images.

    Image files are those with a suffix in ``sacseg.data``'s list (PNG, JPG, ...). A folder's
    files that ``predict_files`` writes into ``out_dir`` for another image found are left out, so
    an ``out_dir`` equal to or inside an input folder is not predicted again on the next run.
    Raises FileNotFoundError for a missing path and ValueError for a folder without images.
    """
    found: list[Path] = []
    searched: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            images = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
            found.extend(images)
            searched.extend(images)
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"image or folder not found: {path}")
    if out_dir is None:
        return found
    out, stems = Path(out_dir).resolve(), {p.stem for p in found}
    outputs = {p for p in searched if _is_output_of(p.resolve(), stems, out)}
    return [p for p in found if p not in outputs]


def _is_output_of(path: Path, stems: set[str], out_dir: Path) -> bool:
    """Whether ``path`` is a file ``predict_files`` writes into ``out_dir`` for an image whose stem is in ``stems``."""
    name = path.name
    if path.parent == out_dir:  # <stem>_color.png, <stem>_overlay.png, <stem>_scale_<layer>.png
        for suffix in ("_color.png", "_overlay.png"):
            if name.endswith(suffix) and name[: -len(suffix)] in stems:
                return True
        cut = name.find("_scale_")
        while cut > 0 and name.endswith(".png"):
            if name[:cut] in stems:
                return True
            cut = name.find("_scale_", cut + 1)
    suffix = "_pred_labelIds.png"  # cityscapes_result_path: <city>/<city>_<seq>_<frame>_pred_labelIds.png
    return path.parent.parent == out_dir and name.endswith(suffix) and f"{name[: -len(suffix)]}_leftImg8bit" in stems


def to_model_input(picture: Image.Image) -> Tensor:
    """An RGB picture as the normalised tensor ``[3, H, W]`` models take (the evaluation transform)."""
    # The eval transform is joint (image, label); an empty label keeps one normalisation for both uses.
    image, _ = eval_transforms()(picture, torch.zeros(picture.height, picture.width, dtype=torch.uint8))
    return image


def load_image(path: str | os.PathLike[str]) -> tuple[np.ndarray, Tensor]:
    """An image file as uint8 RGB ``[H, W, 3]`` and as the normalised tensor ``[3, H, W]`` models take.

    ValueError names a file that cannot be decoded.
    """
    picture = read_image(Path(path))
    return np.asarray(picture), to_model_input(picture)


def _output_stems(paths: Sequence[Path]) -> list[str]:
    seen: dict[str, Path] = {}
    for path in paths:
        if path.stem in seen:
            raise ValueError(f"two images would write the same outputs ({path.stem}_*.png): {seen[path.stem]} and {path}")
        seen[path.stem] = path
    return list(seen)


def predict_files(
    model: nn.Module,
    cfg: TrainConfig,
    paths: Sequence[Path],
    out_dir: str | os.PathLike[str],
    fmt: PredictionFormat = "color",
    options: InferenceOptions = InferenceOptions(),
    progress: bool = False,
    legend: bool = True,
    class_labels: Labels | None = None,
) -> list[Path]:
    """Predict each image file with ``model`` (eval mode) and write the results into ``out_dir``; return them.

    ``fmt="color"`` writes per image ``<stem>_color.png`` (the prediction in the palette of the
    config's dataset), ``<stem>_overlay.png`` (half-transparent over the image), both with a
    legend strip below naming the classes present (``legend=False``: none; the pictures then have
    the image's size) and, for SAC models, ``<stem>_scale_<layer>.png`` per scale map: a heat map
    with a colour bar, from one whole-image pass at scale 1. ``fmt="index"`` writes
    ``<stem>_index.png``: the class indices ``0..K-1``, one channel, 8-bit for ``K <= 255`` (so 255
    stays the ignore value, as in the data sets' label maps) and 16-bit above. ``fmt="cityscapes"``
    (Cityscapes configs only) writes
    ``<city>/<city>_<seq>_<frame>_pred_labelIds.png`` with official labelIds for
    ``cityscapesscripts``' evaluator. The labels are predicted under ``options`` (see ``predict``).
    ``class_labels`` (names, palette) default to the config's data set's; an ONNX file's are in its metadata.
    """
    if fmt not in typing.get_args(PredictionFormat):
        raise ValueError(f"unknown prediction format {fmt!r}; valid: {', '.join(typing.get_args(PredictionFormat))}")
    if fmt == "cityscapes" and cfg.dataset != "cityscapes":
        raise ValueError(
            f"--format cityscapes needs a model trained on Cityscapes trainIds; its config says dataset {cfg.dataset!r}"
        )
    classes, palette = dataset_labels(cfg) if class_labels is None else class_labels
    stems = _output_stems(paths)
    device = model_device(model)
    out_dir = Path(out_dir)
    written: list[Path] = []
    for path, stem in tqdm(list(zip(paths, stems)), desc="predict", unit="image", disable=not progress, dynamic_ncols=True):
        picture, image = load_image(path)
        x = image.unsqueeze(0).to(device)
        if fmt == "cityscapes":
            pred = predict_labels(model, x, options, with_scales=False)[0][0]
            written.append(export_cityscapes_prediction(pred, path, out_dir, Cityscapes.train_id_to_label_id))
            continue
        if fmt == "index":
            written.append(out_dir / f"{stem}_index.png")
            labels = predict_labels(model, x, options, with_scales=False)[0][0]
            save_label_png(labels, written[-1], bits=8 if cfg.num_classes <= 255 else 16)
            continue
        labels, scale_maps = predict_labels(model, x, options)
        colours = colorize(labels[0], palette)
        outputs = {out_dir / f"{stem}_color.png": colours, out_dir / f"{stem}_overlay.png": overlay(picture, colours)}
        for target, array in outputs.items():
            if legend:
                array = add_legend(array, labels[0], classes, palette)
            save_png(array, target)
            written.append(target)
        for name, scale in scale_maps.items():
            target = out_dir / f"{stem}_scale_{name}.png"
            save_scale_map(scale[0, 0], target, title=f"scale coefficients ({name})")
            written.append(target)
    return written
