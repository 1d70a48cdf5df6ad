"""Prediction exports: label-id PNGs (8- or 16-bit), named as the official Cityscapes evaluator expects."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sacseg.utils.io import save_png

__all__ = ["cityscapes_result_path", "export_cityscapes_prediction", "save_label_png"]

_CITYSCAPES_IMAGE = re.compile(r"^(?P<city>[a-z_]+)_(?P<seq>\d{6})_(?P<frame>\d{6})_leftImg8bit\.png$")


def cityscapes_result_path(image_path: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """``.../<city>_<seq>_<frame>_leftImg8bit.png`` -> ``out_dir/<city>/<city>_<seq>_<frame>_pred_labelIds.png``.

    ``evalPixelLevelSemanticLabeling`` finds the prediction for a ground-truth frame by the
    pattern ``<city>_<seq>_<frame>*.png`` anywhere under its results folder.
    """
    name = Path(image_path).name
    match = _CITYSCAPES_IMAGE.match(name)
    if match is None:
        raise ValueError(f"not a Cityscapes image name (<city>_<seq>_<frame>_leftImg8bit.png): {image_path}")
    prefix = f"{match['city']}_{match['seq']}_{match['frame']}"
    return Path(out_dir) / match["city"] / f"{prefix}_pred_labelIds.png"


def save_label_png(
    labels: Tensor, path: str | os.PathLike[str], id_map: Callable[[Tensor], Tensor] | None = None, bits: int = 8
) -> None:
    """Write a label map ``[H, W]`` as a single-channel 8-bit (or ``bits=16``) PNG (atomically).

    ``id_map`` converts the ids first, e.g. ``Cityscapes.train_id_to_label_id`` for trainIds ->
    labelIds. The written ids must lie in ``[0, 2**bits - 1]``.
    """
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    if labels.dim() != 2 or labels.is_floating_point():
        raise ValueError(f"labels for {path} must be an integer map [H, W], got {labels.dtype} {tuple(labels.shape)}")
    ids = id_map(labels) if id_map is not None else labels
    ids = ids.detach().to("cpu", torch.int64)
    top = 2**bits - 1
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) > top):
        raise ValueError(f"label ids for {path} must lie in [0, {top}], got [{int(ids.min())}, {int(ids.max())}]")
    save_png(ids.numpy().astype(np.uint8 if bits == 8 else np.uint16), path)


def export_cityscapes_prediction(
    pred: Tensor,
    image_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    train_id_to_label_id: Callable[[Tensor], Tensor],
) -> Path:
    """Save a trainId prediction ``[H, W]`` for the Cityscapes image as a labelId PNG; return its path."""
    path = cityscapes_result_path(image_path, out_dir)
    save_label_png(pred, path, train_id_to_label_id)
    return path
