"""What every sampling backend shares: the grid that is sampled, the dtype of positions and the checks of their arguments."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class Grid(NamedTuple):
    """``M`` bilinear samples of a channels-last table: what :func:`sacseg.ops.sampling.sample_rows` reads.

    Attributes:
        table: ``[h * w * taps, C]``. With ``taps > 1`` pixel ``i`` owns rows
            ``i * taps .. i * taps + taps - 1`` and sample ``r`` reads row block ``r % taps``.
        h, w: the image's size in pixels.
        taps: row blocks per pixel.
        y, x: ``[M]`` positions in pixels (row, column), in :func:`position_dtype` of the table's
            dtype (float32, or float64 for a float64 table).
    """

    table: Tensor
    h: int
    w: int
    taps: int
    y: Tensor
    x: Tensor


def position_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of sample positions for a table of ``dtype``: float64 for float64, else float32.

    It is also the dtype of the bilinear weights and of accumulated sums. Half precision holds
    integers exactly only up to 256 (bfloat16) or 2048 (float16), and a position's fraction to a
    few bits, so positions never take the data's dtype; table rows are indexed in int64.
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_grid(grid: Grid) -> None:
    # The compiled kernels read wherever the positions point inside h x w: a table of another size
    # would be read out of bounds, where torch's index_select would raise.
    table, h, w, taps, y, x = grid
    if table.dim() != 2 or table.shape[0] != h * w * taps:
        raise ValueError(f"table must be [h * w * taps, C] = [{h * w * taps}, C], got {tuple(table.shape)}")
    expected = position_dtype(table.dtype)
    if y.dtype != expected or x.dtype != expected or y.shape != x.shape:
        raise ValueError(
            f"positions must be two {expected} tensors of one shape for a {table.dtype} table, "
            f"got {y.dtype} {tuple(y.shape)} and {x.dtype} {tuple(x.shape)}"
        )


def check_samples(grid: Grid, sum_taps: bool, run: int, out: Tensor | None) -> tuple[int, int]:
    """The shape of :func:`sacseg.ops.sampling.sample_rows`' result, ``[M, C]`` or ``[M / taps, C]``
    with ``sum_taps``; ValueError unless its arguments are as it says."""
    _check_grid(grid)
    m, c = grid.y.numel(), grid.table.shape[1]
    check_runs(m, grid.taps if sum_taps else 1)
    check_runs(m, run)
    shape = (m // grid.taps if sum_taps else m, c)
    check_out(out, shape, grid.table.dtype)
    return shape


def check_adjoint(grid: Grid, grad: Tensor, grad_table: Tensor | None, run: int) -> int:
    """How many samples share a row of ``grad``: 1 for ``[M, C]``, ``taps`` for ``[M / taps, C]``
    (the adjoint of summed taps); ValueError unless the arguments are as
    :func:`sacseg.ops.sampling.sample_rows_backward` says."""
    _check_grid(grid)
    m, c = grid.y.numel(), grid.table.shape[1]
    share = 1 if grad.shape[0] == m else grid.taps
    if tuple(grad.shape) != (m // share, c) or m % share:
        raise ValueError(f"grad of shape {tuple(grad.shape)} fits neither {m} samples nor their runs of {grid.taps} taps")
    check_runs(m, run)
    if grad_table is not None and grad_table.shape != grid.table.shape:
        raise ValueError(f"grad_table must have the table's shape {tuple(grid.table.shape)}, got {tuple(grad_table.shape)}")
    return share


def check_out(out: Tensor | None, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """ValueError unless ``out`` is ``None`` or a contiguous ``dtype`` tensor of ``shape``."""
    if out is not None and (tuple(out.shape) != shape or not out.is_contiguous() or out.dtype != dtype):
        raise ValueError(f"out must be a contiguous {dtype} tensor of shape {list(shape)}, got {out.dtype} {tuple(out.shape)}")


def check_runs(m: int, size: int) -> None:
    """ValueError unless ``m`` samples split into runs of ``size``."""
    if size < 1 or m % size:
        raise ValueError(f"{m} samples do not split into runs of {size} taps")
