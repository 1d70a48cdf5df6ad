"""Report figures with matplotlib (Agg, no display): scale-coefficient maps and comparison grids."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from sacseg.utils.io import atomic_open
from sacseg.utils.optional import import_optional

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["save_report_grid", "save_scale_map"]

Cell = np.ndarray | Tensor | None


def _new_figure(width: float, height: float) -> Figure:
    # A bare Figure on an Agg canvas: no pyplot state, no GUI backend, safe in worker processes.
    backend = import_optional("matplotlib.backends.backend_agg", "viz", "Figures (scale maps, report grids)")
    figure = import_optional("matplotlib.figure", "viz", "Figures (scale maps, report grids)")
    fig = figure.Figure(figsize=(width, height), layout="constrained")
    fig.get_layout_engine().set(w_pad=0.02, h_pad=0.02, wspace=0.01, hspace=0.01)
    backend.FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike[str], dpi: int) -> None:
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=dpi)


def _as_map(values: np.ndarray | Tensor, where: str) -> np.ndarray:
    array = values.detach().to("cpu", torch.float32).numpy() if isinstance(values, Tensor) else np.asarray(values)
    array = np.squeeze(array)
    if array.ndim != 2:
        raise ValueError(f"{where} must be a map [H, W] (or [1, H, W]), got shape {tuple(np.shape(values))}")
    return array


def _range(maps: Sequence[np.ndarray], vmin: float | None, vmax: float | None) -> tuple[float, float]:
    lo = float(min(np.nanmin(m) for m in maps)) if vmin is None else vmin
    hi = float(max(np.nanmax(m) for m in maps)) if vmax is None else vmax
    if not hi > lo:  # a constant map still needs a non-empty colour range
        hi = lo + 1e-6
    return lo, hi


def save_scale_map(
    scale: np.ndarray | Tensor,
    path: str | os.PathLike[str],
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "jet",
    title: str | None = None,
    height: float = 4.0,
    dpi: int = 100,
) -> None:
    """A scale-coefficient map ``[H, W]`` as a heat map with a colour bar (the paper's Figure 4).

    The colour range defaults to the map's min and max. The PNG is ``height * dpi`` pixels high,
    as wide as the map's aspect ratio needs plus the colour bar.
    """
    values = _as_map(scale, "scale")
    lo, hi = _range([values], vmin, vmax)
    h, w = values.shape
    fig = _new_figure(height * w / h + 1.0, height)
    ax = fig.add_subplot()
    im = ax.imshow(values, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.05, pad=0.02)
    _save(fig, path, dpi)


def save_report_grid(
    rows: Sequence[Sequence[Cell]],
    path: str | os.PathLike[str],
    column_titles: Sequence[str],
    scale_range: tuple[float | None, float | None] = (None, None),
    cmap: str = "jet",
    cell_height: float = 2.5,
    dpi: int = 100,
) -> None:
    """A grid of pictures, one example per row, e.g. image / baseline / SAC / ground truth / scale map.

    A cell is a uint8 RGB array ``[H, W, 3]`` (an image or a colourised label map, see
    ``colorize``), a float map ``[H, W]`` (a scale map, drawn as a heat map on the shared
    ``scale_range``, defaulting to the min and max over all such cells, with one colour bar), or
    ``None`` (left empty). All rows must have ``len(column_titles)`` cells.
    """
    if not rows:
        raise ValueError("rows is empty")
    for i, row in enumerate(rows):
        if len(row) != len(column_titles):
            raise ValueError(f"row {i} has {len(row)} cells for {len(column_titles)} column titles")
    cells = [[_as_cell(c, f"row {i} column {j}") for j, c in enumerate(row)] for i, row in enumerate(rows)]
    maps = [c for row in cells for c in row if c is not None and c.ndim == 2]
    lo, hi = _range(maps, *scale_range) if maps else (0.0, 1.0)
    first = next(c for row in cells for c in row if c is not None)
    aspect = first.shape[1] / first.shape[0]
    n_rows, n_cols = len(cells), len(column_titles)
    fig = _new_figure(cell_height * aspect * n_cols + (0.8 if maps else 0.1), cell_height * n_rows + 0.3)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    image = None
    for i, row in enumerate(cells):
        for j, cell in enumerate(row):
            ax = axes[i][j]
            ax.set_axis_off()
            if i == 0:
                ax.set_title(column_titles[j])
            if cell is None:
                continue
            if cell.ndim == 2:
                image = ax.imshow(cell, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
            else:
                ax.imshow(cell, interpolation="nearest")
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.02, pad=0.01)
    _save(fig, path, dpi)


def _as_cell(cell: Cell, where: str) -> np.ndarray | None:
    if cell is None:
        return None
    array = cell.detach().cpu().numpy() if isinstance(cell, Tensor) else np.asarray(cell)
    if array.ndim == 3 and array.shape[2] == 3 and array.dtype == np.uint8:
        return array
    return _as_map(array, where)
