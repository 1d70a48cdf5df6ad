"""Pictures as arrays: denormalised images, colourised label maps, class legends, overlays and heat maps."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from sacseg.data.transforms import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD
from sacseg.utils.optional import import_optional

__all__ = ["add_legend", "colorize", "denormalize", "heatmap", "overlay"]


def denormalize(image: Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """A normalised image ``[3, H, W]`` back to displayable uint8 RGB ``[H, W, 3]``."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be [3, H, W], got shape {tuple(image.shape)}")
    x = image.detach().to("cpu", torch.float32)
    x = x * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def colorize(labels: Tensor, palette: Tensor | np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """Label map ``[H, W]`` -> uint8 RGB ``[H, W, 3]`` through ``palette`` uint8 ``[K, 3]``; ignored pixels black."""
    if labels.dim() != 2 or labels.is_floating_point():
        raise ValueError(f"labels must be an integer map [H, W], got {labels.dtype} {tuple(labels.shape)}")
    table = palette.detach().cpu() if isinstance(palette, Tensor) else torch.from_numpy(np.asarray(palette))
    if table.dim() != 2 or table.shape[1] != 3 or table.dtype != torch.uint8:
        raise ValueError(f"palette must be uint8 [K, 3], got {table.dtype} {tuple(table.shape)}")
    ids = labels.detach().to("cpu", torch.int64)
    ignored = ids == ignore_index
    bad = ~ignored & ((ids < 0) | (ids >= len(table)))
    if bool(bad.any()):
        raise ValueError(f"labels outside [0, {len(table)}) and not ignore_index: {torch.unique(ids[bad])[:10].tolist()}")
    # black for ignored pixels: an extra palette row
    table = torch.cat([table, torch.zeros(1, 3, dtype=torch.uint8)])
    return table[torch.where(ignored, len(table) - 1, ids)].numpy()


def overlay(image: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Alpha blend ``(1 - alpha) * image + alpha * colours`` of two uint8 RGB ``[H, W, 3]`` arrays."""
    if image.shape != colours.shape or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image and colours must both be [H, W, 3], got {image.shape} and {colours.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    mixed = (1.0 - alpha) * image.astype(np.float32) + alpha * colours.astype(np.float32)
    return np.clip(np.round(mixed), 0, 255).astype(np.uint8)


def heatmap(values: Tensor, vmin: float, vmax: float, cmap: str = "jet") -> np.ndarray:
    """A float map ``[H, W]`` (e.g. scale coefficients) -> uint8 RGB ``[H, W, 3]`` on ``[vmin, vmax]``."""
    if values.dim() != 2:
        raise ValueError(f"values must be a map [H, W], got shape {tuple(values.shape)}")
    if not vmax > vmin:
        raise ValueError(f"vmax must exceed vmin, got vmin={vmin}, vmax={vmax}")
    norm = ((values.detach().to("cpu", torch.float64) - vmin) / (vmax - vmin)).clamp(0, 1).numpy()
    matplotlib = import_optional("matplotlib", "viz", "Heat maps")
    rgba = matplotlib.colormaps[cmap](norm, bytes=True)
    return np.ascontiguousarray(rgba[..., :3])


def add_legend(
    picture: np.ndarray,
    labels: Tensor,
    classes: Sequence[str],
    palette: Tensor | np.ndarray,
    ignore_index: int = IGNORE_INDEX,
) -> np.ndarray:
    """``picture`` uint8 RGB ``[H, W, 3]`` with a legend strip below: the classes present in ``labels``.

    ``labels [H', W']`` holds class indices into ``classes`` and ``palette`` uint8 ``[K, 3]`` (as for
    :func:`colorize`). Each class present gets a swatch of its colour and its name, largest area
    first, on white rows as wide as the picture (an entry wider than the picture is cut at its
    edge). Without a class present (everything ``ignore_index``) the picture comes back unchanged.

    Returns:
        uint8 RGB ``[H + h, W, 3]``; the first ``H`` rows are ``picture``.
    """
    from PIL import Image, ImageDraw, ImageFont

    if picture.dtype != np.uint8 or picture.ndim != 3 or picture.shape[2] != 3:
        raise ValueError(f"picture must be uint8 [H, W, 3], got {picture.dtype} {picture.shape}")
    table = palette.detach().cpu().numpy() if isinstance(palette, Tensor) else np.asarray(palette)
    if table.shape != (len(classes), 3):
        raise ValueError(f"palette must be [{len(classes)}, 3] for {len(classes)} classes, got {table.shape}")
    ids = labels.detach().to("cpu", torch.int64).flatten()
    present, counts = torch.unique(ids[ids != ignore_index], return_counts=True)
    if present.numel() and (int(present.min()) < 0 or int(present.max()) >= len(classes)):
        raise ValueError(f"labels outside [0, {len(classes)}) and not ignore_index: {present.tolist()[:10]}")
    order = present[torch.argsort(counts, descending=True, stable=True)].tolist()
    if not order:
        return picture

    font = ImageFont.load_default()
    _, top, _, bottom = font.getbbox("Ag")
    text_h = int(bottom - top)
    swatch, gap, pad = text_h + 2, 4, 4
    row_h = swatch + pad
    width = picture.shape[1]
    # Flow the entries left to right, wrapping at the picture's width.
    places: list[tuple[int, int, int]] = []
    x, y = pad, pad
    for k in order:
        entry = swatch + gap + int(font.getlength(classes[k])) + 2 * gap
        if x > pad and x + entry > width:
            x, y = pad, y + row_h
        places.append((k, x, y))
        x += entry
    strip = Image.new("RGB", (width, y + row_h + pad // 2), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for k, x, y in places:
        draw.rectangle((x, y, x + swatch - 1, y + swatch - 1), fill=tuple(int(c) for c in table[k]), outline=(64, 64, 64))
        draw.text((x + swatch + gap, y + (swatch - text_h) // 2 - top), classes[k], fill=(0, 0, 0), font=font)
    return np.concatenate([picture, np.asarray(strip)], axis=0)
