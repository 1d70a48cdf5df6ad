"""Pictures as arrays: denormalised images, colourised label maps, overlays and heat maps."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from sacseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["denormalize", "colorize", "overlay", "heatmap"]


def denormalize(
    image: Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> np.ndarray:
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
        raise ValueError(
            f"labels outside [0, {len(table)}) and not ignore_index: {torch.unique(ids[bad])[:10].tolist()}"
        )
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
    import matplotlib

    if values.dim() != 2:
        raise ValueError(f"values must be a map [H, W], got shape {tuple(values.shape)}")
    if not vmax > vmin:
        raise ValueError(f"vmax must exceed vmin, got vmin={vmin}, vmax={vmax}")
    norm = ((values.detach().to("cpu", torch.float64) - vmin) / (vmax - vmin)).clamp(0, 1).numpy()
    rgba = matplotlib.colormaps[cmap](norm, bytes=True)
    return np.ascontiguousarray(rgba[..., :3])
