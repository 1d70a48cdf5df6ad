"""Bilinear row sampling of channels-last tables, its adjoint and NCHW <-> NHWC, in torch ops: runs everywhere."""

from __future__ import annotations

import torch
from torch import Tensor

from sacseg.ops.sampling.common import Grid


def _corners(grid: Grid) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Table rows (int64), bilinear weights (the positions' dtype, zero outside) and inside masks
    of the four corners of each sample, ``[M]`` each."""
    _, h, w, taps, y, x = grid
    y0, x0 = torch.floor(y), torch.floor(x)
    fy, fx = y - y0, x - x0
    block = torch.arange(y.numel(), device=y.device) % taps if taps > 1 else 0
    rows, weights, insides = [], [], []
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            yi, xi = y0 + dy, x0 + dx
            inside = (yi >= 0) & (yi <= h - 1) & (xi >= 0) & (xi <= w - 1)
            pixel = yi.clamp(0, h - 1).long() * w + xi.clamp(0, w - 1).long()
            rows.append(pixel * taps + block)
            weights.append(wy * wx * inside)
            insides.append(inside)
    return rows, weights, insides


def _weighted(rows: Tensor, weight: Tensor) -> Tensor:
    """``rows * weight[:, None]`` in ``weight``'s dtype, exactly zero where the weight is.

    Masked, not just multiplied by a zero weight: a corner outside the image, or one a whole pixel
    away, must add nothing even where the table (or gradient) holds NaN or Inf, as in F.conv2d.
    """
    return (rows * weight[:, None]).masked_fill_((weight == 0)[:, None], 0)


def transpose(src: Tensor, out: Tensor | None) -> Tensor:
    """:func:`sacseg.ops.sampling.transpose`: a copy even where the transpose is already
    contiguous (R or C of 1), never a view of ``src``."""
    if out is None:
        return src.transpose(1, 2).clone(memory_format=torch.contiguous_format)
    return out.copy_(src.transpose(1, 2))


def sample_rows(grid: Grid, sum_taps: bool, out: Tensor | None) -> Tensor:
    """:func:`sacseg.ops.sampling.sample_rows` (arguments checked there), blended in the weights'
    dtype (float32 for half tables) and rounded to the table's at the end."""
    table, taps, y = grid.table, grid.taps, grid.y
    c = table.shape[1]
    rows, weights, _ = _corners(grid)
    samples = _weighted(table.index_select(0, rows[0]), weights[0])
    for row, weight in zip(rows[1:], weights[1:]):
        samples.add_(_weighted(table.index_select(0, row), weight))
    if sum_taps:
        samples = samples.view(y.numel() // taps, taps, c).sum(1)
    return samples.to(table.dtype) if out is None else out.copy_(samples)


def sample_rows_backward(
    grid: Grid, grad: Tensor, grad_table: Tensor | None, want_positions: bool
) -> tuple[Tensor, Tensor] | None:
    """:func:`sacseg.ops.sampling.sample_rows_backward` (arguments checked there); ``grad_table``
    may have any strides and float dtype. ``index_add_`` is deterministic on CUDA under
    ``torch.use_deterministic_algorithms(True)``."""
    table, _, _, taps, y, x = grid
    m, c = y.numel(), table.shape[1]
    if grad.shape[0] != m:  # the adjoint of summed taps: every tap gets its pixel's gradient
        grad = grad[:, None].expand(m // taps, taps, c).reshape(m, c)
    rows, weights, insides = _corners(grid)
    if grad_table is not None:
        for row, weight in zip(rows, weights):
            grad_table.index_add_(0, row, _weighted(grad, weight).to(grad_table.dtype))
    if not want_positions:
        return None
    # Dot of grad with each corner inside; eq. (14) combines them into position derivatives.
    dots = [
        torch.einsum("mc,mc->m", grad, table.index_select(0, row)).to(y.dtype).masked_fill_(~inside, 0)
        for row, inside in zip(rows, insides)
    ]
    fy, fx = y - torch.floor(y), x - torch.floor(x)
    grad_y = (dots[2] - dots[0]) * (1 - fx) + (dots[3] - dots[1]) * fx
    grad_x = (dots[1] - dots[0]) * (1 - fy) + (dots[3] - dots[2]) * fy
    return grad_y, grad_x
