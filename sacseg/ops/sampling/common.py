"""What every sampling backend shares: the dtype of positions and the checks of their arguments."""

from __future__ import annotations

import torch
from torch import Tensor


def position_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of sample positions for a table of ``dtype``: float64 for float64, else float32.

    It is also the dtype of the bilinear weights and of accumulated sums. Half precision holds
    integers exactly only up to 256 (bfloat16) or 2048 (float16), and a position's fraction to a
    few bits, so positions never take the data's dtype; table rows are indexed in int64.
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_positions(table: Tensor, y: Tensor, x: Tensor) -> None:
    """ValueError unless ``y`` and ``x`` are of one shape and of :func:`position_dtype` of the table's."""
    expected = position_dtype(table.dtype)
    if y.dtype != expected or x.dtype != expected or y.shape != x.shape:
        raise ValueError(
            f"positions must be two {expected} tensors of one shape for a {table.dtype} table, "
            f"got {y.dtype} {tuple(y.shape)} and {x.dtype} {tuple(x.shape)}"
        )


def check_out(out: Tensor | None, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """ValueError unless ``out`` is ``None`` or a contiguous ``dtype`` tensor of ``shape``."""
    if out is not None and (tuple(out.shape) != shape or not out.is_contiguous() or out.dtype != dtype):
        raise ValueError(f"out must be a contiguous {dtype} tensor of shape {list(shape)}, got {out.dtype} {tuple(out.shape)}")


def check_runs(m: int, size: int) -> None:
    """ValueError unless ``m`` samples split into runs of ``size``."""
    if size < 1 or m % size:
        raise ValueError(f"{m} samples do not split into runs of {size} taps")
