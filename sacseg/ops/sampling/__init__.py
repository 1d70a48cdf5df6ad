"""Bilinear row sampling of channels-last tables, its adjoint and NCHW <-> NHWC: one entry point per
operation, dispatched to the torch ops, the compiled CPU kernels or the Triton kernels.

The fast SAC path reads its input (or its projection) as a channels-last "table", ``[H*W*P, C]``,
so that the four corners of a tap are contiguous rows; a :class:`~sacseg.ops.sampling.common.Grid`
names the table and the positions sampled in it. Which leaf runs is the caller's ``kernels``:

- ``"native"``: the compiled C++ kernels (:mod:`.native`) for CPU float32/float64 tables where a
  compiler built them, the torch ops otherwise (half precision, other devices, no compiler);
- ``"triton"``: the Triton kernels (:mod:`.triton_kernels`) for sampling and its adjoint, on CUDA
  or in Triton's interpreter; the transpose in torch ops;
- ``"torch"``: the torch ops (:mod:`.torch_ops`) only.

The leaves import :mod:`.common` and nothing else of each other.
"""

from __future__ import annotations

from types import ModuleType
from typing import Literal

import torch
from torch import Tensor

from sacseg.ops.sampling import native, torch_ops
from sacseg.ops.sampling.common import Grid, check_adjoint, check_out, check_samples, position_dtype

__all__ = ["Grid", "Kernels", "load_triton", "position_dtype", "sample_rows", "sample_rows_backward", "transpose"]

#: Which leaf samples: see the module docstring.
Kernels = Literal["native", "triton", "torch"]


def load_triton() -> ModuleType | None:
    """:mod:`.triton_kernels` if Triton imports, else ``None``; imported on first use, as Triton's
    import is slow and only CUDA needs it."""
    from sacseg.ops.sampling import triton_kernels as kernels

    return kernels if kernels.triton is not None else None


def _triton() -> ModuleType:
    kernels = load_triton()
    if kernels is None:
        raise RuntimeError('kernels="triton" needs Triton, which does not import')
    return kernels


def transpose(src: Tensor, *, kernels: Kernels = "native", out: Tensor | None = None) -> Tensor:
    """``src`` ``[B, R, C]`` transposed into ``out`` or a new contiguous ``[B, C, R]`` (NCHW <-> NHWC, per image).

    The compiled kernel (CPU float32/float64) is faster than ``.transpose(1, 2).contiguous()``
    (benchmarks/DESIGN_MEASUREMENTS.md). Never a view of ``src``.
    """
    b, r, c = src.shape
    check_out(out, (b, c, r), src.dtype)
    lib = native.available(src) if kernels == "native" else None
    return torch_ops.transpose(src, out) if lib is None else native.transpose(lib, src, out)


def sample_rows(
    grid: Grid,
    *,
    sum_taps: bool = False,
    run: int = 1,
    kernels: Kernels = "native",
    out: Tensor | None = None,
) -> Tensor:
    """Bilinear samples of a channels-last table, zeros outside.

    Args:
        grid: the table and the ``[M]`` positions (:class:`~sacseg.ops.sampling.common.Grid`);
            the table contiguous, the positions too.
        sum_taps: return the sum of each run of ``taps`` consecutive samples instead.
        run: the samples are runs of ``run`` taps of one output pixel, tap fastest. It changes
            nothing but the order in which the compiled CPU kernel visits them (see its source).
        kernels: which leaf samples (module docstring).
        out: a contiguous tensor of the result's shape to write into. Chunked callers pass one
            buffer for all chunks: a fresh multi-megabyte tensor per chunk costs a page fault per
            4 KiB on first touch, which can cost more than the sampling itself.

    Returns:
        ``[M, C]``, or ``[M / taps, C]`` with ``sum_taps`` (``out`` when given), in the table's dtype.
    """
    check_samples(grid, sum_taps, run, out)
    if kernels == "triton":
        return _triton().sample_rows(grid, sum_taps=sum_taps, run=run, out=out)
    lib = native.available(grid.table) if kernels == "native" else None
    if lib is not None:
        return native.sample_rows(lib, grid, sum_taps, run, out)
    return torch_ops.sample_rows(grid, sum_taps, out)


def sample_rows_backward(
    grid: Grid,
    grad: Tensor,
    grad_table: Tensor | None,
    want_positions: bool,
    *,
    run: int = 1,
    kernels: Kernels = "native",
) -> tuple[Tensor, Tensor] | None:
    """The adjoint of :func:`sample_rows`.

    Adds the gradient of the table for ``grad`` into ``grad_table`` (same shape as the table,
    contiguous; in the table's dtype, or float32 for a half table, to accumulate in) unless it is
    ``None``, and returns the gradients of the positions ``(grad_y, grad_x)``, each ``[M]`` in the
    positions' dtype, if ``want_positions`` (the right-hand derivative at integer positions, as the
    reference path and ``grid_sample`` take it). ``grad`` is ``[M, C]`` in the table's dtype, or
    ``[M / taps, C]`` for the adjoint of ``sample_rows(..., sum_taps=True)``. ``grid``, ``run``
    and ``kernels`` are :func:`sample_rows`'s.

    Under ``torch.use_deterministic_algorithms(True)`` the table's gradient is summed by the torch
    ops (whose ``index_add_`` is deterministic there) rather than by the Triton kernel's atomic adds.
    """
    check_adjoint(grid, grad, grad_table, run)
    if kernels == "triton":
        if grad_table is not None and torch.are_deterministic_algorithms_enabled():
            # Summed in the positions' dtype (float32 for half tables) and rounded once, as the kernel sums.
            table, y = grid.table, grid.y
            summed = grad_table if grad_table.dtype == y.dtype else torch.zeros(table.shape, dtype=y.dtype, device=table.device)
            torch_ops.sample_rows_backward(grid, grad, summed, False)
            if summed is not grad_table:
                grad_table.add_(summed)
            grad_table = None
        return _triton().sample_rows_backward(grid, grad, grad_table, want_positions, run=run)
    lib = native.available(grid.table) if kernels == "native" else None
    if lib is not None:
        return native.sample_rows_backward(lib, grid, grad, grad_table, want_positions, run)
    return torch_ops.sample_rows_backward(grid, grad, grad_table, want_positions)
