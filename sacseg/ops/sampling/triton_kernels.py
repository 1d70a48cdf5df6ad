"""Triton kernels for the bilinear row sampling on CUDA (or on CPU through Triton's interpreter).

:func:`sample_rows` and :func:`sample_rows_backward` do what :mod:`sacseg.ops.sampling`'s functions of
those names do, for any strides. SAC has one scale per output pixel shared by every channel, so each
program takes a block of samples x a block of channels: the four corners and weights of a sample
are computed once and reused across its channel block, and the rows of the channels-last table are
read channel-contiguous (vectorised when the channel stride is 1). A corner outside the input, or
one of zero weight, is never read (masked loads): NaN/Inf there cannot leak into a sample.

Dtypes: the table (and ``grad``) may be float16, bfloat16, float32 or float64, the positions are
in :func:`~sacseg.ops.sampling.common.position_dtype` of the table's: weights and sums are float64
for a float64 table, else float32; results take the table's dtype (position gradients torch's
promotion of ``grad``'s and the positions').

``TRITON_INTERPRET=1`` in the environment before this module is imported runs the kernels on CPU
tensors through Triton's interpreter (how the tests check them without a GPU).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from sacseg.ops.sampling.common import Grid, check_adjoint, check_samples

try:
    import triton
    import triton.language as tl
except ImportError:  # the kernels are then never launched: available() is False
    triton = tl = None

_jit = triton.jit if triton is not None else (lambda fn: fn)


# The decorator picks interpreted or compiled kernels when it runs, i.e. at import, from
# TRITON_INTERPRET: read through triton.knobs where it exists (Triton >= 3.4), as triton.jit reads it.
_knobs = getattr(triton, "knobs", None)
_INTERPRETED = triton is not None and (
    bool(_knobs.runtime.interpret) if _knobs is not None else os.environ.get("TRITON_INTERPRET") == "1"
)


def available(tensor: Tensor) -> bool:
    """Whether the kernels can run on ``tensor``: Triton imports and the tensor is on CUDA, or the
    kernels were built for Triton's interpreter (``TRITON_INTERPRET=1``), which runs them on CPU."""
    return triton is not None and (tensor.is_cuda or _INTERPRETED)


# The kernels use builtins of triton.language only, none of its own @jit functions (tl.zeros,
# tl.sum): those are decorated once, when triton is imported, and re-importing this module with
# TRITON_INTERPRET=1 (as the tests do) would not make them run in the interpreter.


@_jit
def _add(a, b):
    """The combiner of the row sums (``tl.reduce``), for ``tl.sum``'s."""
    return a + b


@_jit
def _frame(y, x, h, w):
    """The top-left corner of samples at ``(y, x)`` as integers and the fractions past it."""
    y0 = tl.floor(y)
    x0 = tl.floor(x)
    # Clamped before the conversion, which is undefined for huge positions: from -2 or h (w),
    # both corners are outside, as they are from anywhere beyond.
    iy = tl.minimum(tl.maximum(y0, -2.0), h).to(tl.int64)
    ix = tl.minimum(tl.maximum(x0, -2.0), w).to(tl.int64)
    return iy, ix, y - y0, x - x0


@_jit
def _corner(iy, ix, fy, fx, block, h, w, taps, DY: tl.constexpr, DX: tl.constexpr):
    """Table row, weights along y and x, and inside mask of corner ``(iy + DY, ix + DX)`` of each sample."""
    cy = iy + DY
    cx = ix + DX
    if DY == 1:
        wy = fy
    else:
        wy = 1 - fy
    if DX == 1:
        wx = fx
    else:
        wx = 1 - fx
    inside = (cy >= 0) & (cy < h) & (cx >= 0) & (cx < w)
    return (cy * w + cx) * taps + block, wy, wx, inside


@_jit
def _sample_kernel(
    table, y, x, out,
    n_out, c, h, w, taps,
    stride_row, stride_col, stride_y, stride_x,
    GROUP: tl.constexpr, COMPUTE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """``out[o]``, ``[BLOCK_M, BLOCK_C]`` per program: the sum over ``t < GROUP`` of sample ``o * GROUP + t``,
    which reads row block ``(o * GROUP + t) % taps``. ``GROUP`` (1, or a kernel's tap count) is a
    compile-time constant: a loop bound that is a runtime scalar breaks Triton 3.6's interpreter."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = rows < n_out
    col_ok = cols < c
    col_offsets = cols.to(tl.int64)[None, :] * stride_col
    acc = tl.full([BLOCK_M, BLOCK_C], 0, COMPUTE)
    for t in range(GROUP):
        s = rows.to(tl.int64) * GROUP + t
        iy, ix, fy, fx = _frame(
            tl.load(y + s * stride_y, mask=row_ok, other=0).to(COMPUTE),
            tl.load(x + s * stride_x, mask=row_ok, other=0).to(COMPUTE),
            h,
            w,
        )
        for k in tl.static_range(4):
            row, wy, wx, inside = _corner(iy, ix, fy, fx, s % taps, h, w, taps, k // 2, k % 2)
            weight = wy * wx
            read = (inside & (weight != 0) & row_ok)[:, None] & col_ok[None, :]
            value = tl.load(table + row[:, None] * stride_row + col_offsets, mask=read, other=0)
            acc += weight[:, None] * value.to(COMPUTE)
    offsets = rows.to(tl.int64)[:, None] * c + cols[None, :]
    tl.store(out + offsets, acc.to(out.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@_jit
def _sample_backward_kernel(
    table, y, x, grad, grad_table, part_y, part_x,
    n_grad, m, c, h, w, taps,
    stride_row, stride_col, stride_y, stride_x, stride_grad_row, stride_grad_col,
    SHARE: tl.constexpr, COMPUTE: tl.constexpr, ACCUMULATE: tl.constexpr, POSITIONS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Adjoint of :func:`_sample_kernel` with ``GROUP == SHARE``: each of the ``SHARE`` samples of a
    row of ``grad`` receives that whole row. Adds into the contiguous ``grad_table`` if ``ACCUMULATE``;
    if ``POSITIONS``, writes this channel block's part of the position gradients into ``part_y`` and
    ``part_x``, ``[channel blocks, m]``."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = rows < n_grad
    col_ok = cols < c
    g_offsets = rows.to(tl.int64)[:, None] * stride_grad_row + cols.to(tl.int64)[None, :] * stride_grad_col
    g = tl.load(grad + g_offsets, mask=row_ok[:, None] & col_ok[None, :], other=0).to(COMPUTE)
    col_offsets = cols.to(tl.int64)[None, :] * stride_col
    for t in range(SHARE):
        s = rows.to(tl.int64) * SHARE + t
        iy, ix, fy, fx = _frame(
            tl.load(y + s * stride_y, mask=row_ok, other=0).to(COMPUTE),
            tl.load(x + s * stride_x, mask=row_ok, other=0).to(COMPUTE),
            h,
            w,
        )
        # Eq. (14): the sample's derivatives along y and x, per channel: each inside corner signed
        # by its side of the sample along one axis and weighted along the other. Every inside
        # corner counts, weighted or not: at an integer position the right-hand derivative reads
        # the corner of weight 0.
        d_dy = tl.full([BLOCK_M, BLOCK_C], 0, COMPUTE)
        d_dx = tl.full([BLOCK_M, BLOCK_C], 0, COMPUTE)
        for k in tl.static_range(4):
            row, wy, wx, inside = _corner(iy, ix, fy, fx, s % taps, h, w, taps, k // 2, k % 2)
            valid = (inside & row_ok)[:, None] & col_ok[None, :]
            if ACCUMULATE:
                weight = wy * wx
                target = grad_table + row[:, None] * c + cols[None, :]
                tl.atomic_add(target, g * weight[:, None], mask=valid & (weight != 0)[:, None], sem="relaxed")
            if POSITIONS:
                value = tl.load(table + row[:, None] * stride_row + col_offsets, mask=valid, other=0).to(COMPUTE)
                d_dy += ((2 * (k // 2) - 1) * wx)[:, None] * value
                d_dx += ((2 * (k % 2) - 1) * wy)[:, None] * value
        if POSITIONS:
            where = tl.program_id(1).to(tl.int64) * m + s
            tl.store(part_y + where, tl.reduce(g * d_dy, 1, _add), mask=row_ok)
            tl.store(part_x + where, tl.reduce(g * d_dx, 1, _add), mask=row_ok)


def _blocks(rows: int, c: int, compute: torch.dtype) -> tuple[int, int]:
    """``(BLOCK_M, BLOCK_C)`` for ``rows`` x ``c``: up to 64 channels, 1024 elements per program
    (512 in float64), and no more rows than there are (a small launch pads no masked lanes)."""
    # Sized so that neither kernel spills registers on sm_90 (ptxas's counts: benchmarks/DESIGN_MEASUREMENTS.md).
    block_c = min(64, triton.next_power_of_2(max(c, 1)))
    elements = 512 if compute == torch.float64 else 1024
    return max(1, min(128, elements // block_c, triton.next_power_of_2(max(rows, 1)))), block_c


def _compute_dtype(y: Tensor) -> tuple[torch.dtype, tl.dtype]:
    """The dtype of weights and sums, for torch and for Triton: the positions' ``y``, float32 or float64."""
    return (torch.float64, tl.float64) if y.dtype == torch.float64 else (torch.float32, tl.float32)


def sample_rows(grid: Grid, *, sum_taps: bool = False, run: int = 1, out: Tensor | None = None) -> Tensor:
    """:func:`sacseg.ops.sampling.sample_rows` as a Triton kernel (on CUDA, or in the interpreter).

    Args:
        grid: as in :func:`sacseg.ops.sampling.sample_rows`, its tensors of any strides
            (contiguous channels load fastest).
        sum_taps, out: as in :func:`sacseg.ops.sampling.sample_rows`.
        run: checked, otherwise unused: it only orders the CPU kernel's visits.

    Returns:
        ``[M, C]``, or ``[M / taps, C]`` with ``sum_taps``, in ``table``'s dtype (``out`` when given).
    """
    shape = check_samples(grid, sum_taps, run, out)
    table, h, w, taps, y, x = grid
    y, x, c, group = y.reshape(-1), x.reshape(-1), shape[1], taps if sum_taps else 1
    out = table.new_empty(shape) if out is None else out
    if out.numel():
        compute, compute_tl = _compute_dtype(y)
        block_m, block_c = _blocks(shape[0], c, compute)
        blocks = (triton.cdiv(shape[0], block_m), triton.cdiv(c, block_c))
        strides = (*table.stride(), y.stride(0), x.stride(0))
        _sample_kernel[blocks](table, y, x, out, shape[0], c, h, w, taps, *strides, group, compute_tl, block_m, block_c)
    return out


def sample_rows_backward(
    grid: Grid, grad: Tensor, grad_table: Tensor | None, want_positions: bool, *, run: int = 1
) -> tuple[Tensor, Tensor] | None:
    """:func:`sacseg.ops.sampling.sample_rows_backward` as a Triton kernel (on CUDA, or in the interpreter).

    Adds the table's gradient into ``grad_table`` (``table``'s shape, any strides and float dtype)
    unless it is ``None``, and returns the position gradients ``(grad_y, grad_x)``, ``[M]`` each,
    if ``want_positions``: the right-hand derivative at integer positions. ``grad`` is ``[M, C]``,
    or ``[M / taps, C]`` for the adjoint of ``sample_rows(..., sum_taps=True)``; any strides.

    The table's gradient is summed straight into a contiguous ``grad_table`` of the compute dtype,
    otherwise into a zeroed buffer of that dtype added to it afterwards (so float16/bfloat16
    gradients are summed in float32), by atomic adds: not deterministic. The position gradients are
    per-sample sums over channel blocks, reduced in a fixed order: deterministic.
    """
    share = check_adjoint(grid, grad, grad_table, run)
    table, h, w, taps, y, x = grid
    y, x = y.reshape(-1), x.reshape(-1)
    m, c = y.numel(), table.shape[1]
    compute, compute_tl = _compute_dtype(y)
    target = grad_table
    if grad_table is not None and not (grad_table.is_contiguous() and grad_table.dtype == compute):
        target = torch.zeros(table.shape, dtype=compute, device=table.device)
    atomics = target is not None
    block_m, block_c = _blocks(m // share, c, compute)
    blocks = (triton.cdiv(m // share, block_m), triton.cdiv(c, block_c))
    parts = torch.empty(2, blocks[1], m, dtype=compute, device=table.device) if want_positions else None
    if blocks[0] and blocks[1] and (atomics or want_positions):
        # Pointers that the kernel does not touch without ACCUMULATE or POSITIONS: the table.
        pointers = (table, y, x, grad, target if atomics else table, *((table, table) if parts is None else parts))
        sizes = (m // share, m, c, h, w, taps)
        strides = (*table.stride(), y.stride(0), x.stride(0), *grad.stride())
        _sample_backward_kernel[blocks](*pointers, *sizes, *strides, share, compute_tl, atomics, want_positions, block_m, block_c)
    if grad_table is not None and target is not None and target is not grad_table:
        grad_table.add_(target)
    if parts is None:
        return None
    # Per-channel-block parts summed in a fixed order: deterministic, unlike atomics.
    grad_y, grad_x = parts.sum(1).to(torch.promote_types(grad.dtype, y.dtype))
    return grad_y, grad_x
