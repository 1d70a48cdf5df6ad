"""The fast path's backward: equations (10)-(17), the samples recomputed chunk by chunk instead of saved."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

import sacseg.ops._plan as _plan
from sacseg.ops._compat import linear
from sacseg.ops._geometry import rows_span, sample_positions, tap_positions
from sacseg.ops.sampling import Grid, Kernels, position_dtype, sample_rows, sample_rows_backward, transpose

#: ``(i, p0, p1) -> (y, x, grad_out [length, C_out])`` of output rows ``p0:p1`` of image ``i``.
Chunk = Callable[[int, int, int], tuple[Tensor, Tensor, Tensor]]


def backward(
    grad_out: Tensor,
    input: Tensor | None,
    scale: Tensor,
    weight: Tensor,
    tables: Tensor,
    size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    output_mask: Sequence[bool],
    *,
    project: bool,
    kernels: Kernels,
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """The gradients of input, scale, weight and bias that ``output_mask`` asks for.

    The samples are recomputed instead of saved, into one buffer reused by every chunk. All
    gradients come back contiguous, as F.conv2d's do.

    Args:
        grad_out: ``[N, C_out, H_out, W_out]``.
        input: ``[N, C_in, H, W]``, needed only when multiplying first (for the weight's gradient), else ``None``.
        tables: the forward's (:func:`sacseg.ops._forward.forward`), made with the same ``project``.
        size: the input's ``(H, W)``.
        kernels: which sampling kernels run (:mod:`sacseg.ops.sampling`).
    """
    (h, w), (need_input, need_scale, need_weight, need_bias) = size, output_mask
    n = tables.shape[0]
    c_out, c_in, kh, kw = weight.shape
    taps = kh * kw
    h_out, w_out = scale.shape[-2:]
    row_bytes = w_out * taps * c_in * weight.element_size()  # of sampled columns, when sampling first
    ys, xs = tap_positions(*sample_positions(scale, (kh, kw), stride, padding, dilation))
    grad_out_cl = grad_out.permute(0, 2, 3, 1)

    def chunk(i: int, p0: int, p1: int) -> tuple[Tensor, Tensor, Tensor]:
        span = rows_span(p0, p1, w_out, taps)
        return ys[i, span], xs[i, span], grad_out_cl[i, p0:p1].reshape((p1 - p0) * w_out, c_out)

    grad_weight = None
    if need_weight and not project:
        # A pass of its own before the input's, so that its buffer and the input pass's column
        # gradient never coexist: the extra memory stays at about one (forward-sized) chunk.
        chunks = _plan.row_chunks(h_out, row_bytes, _plan.CHUNK_BYTES)
        grad_weight = _weight_gradient(tables, (h, w), weight.shape, chunk, chunks, w_out, kernels)
    # Half-size chunks: the column gradient coexists with the weight's gradient and its reordered
    # weight. Multiplying first, the gradient of the sums is grad_out itself: no buffer, one chunk.
    chunks = [(0, h_out)] if project else _plan.row_chunks(h_out, row_bytes, _plan.CHUNK_BYTES // 2)

    # Half-precision tables accumulate their gradient in float32: a row takes up to 4 * taps sums.
    accumulate = position_dtype(tables.dtype)
    need_tables = need_input or (need_weight and project)
    grad_tables = torch.zeros(tables.shape, dtype=accumulate, device=tables.device) if need_tables else None
    grad_scale = scale.new_zeros(scale.shape) if need_scale else None  # contiguous, as the fake says
    if grad_tables is not None or need_scale:
        opts: dict[str, Any] = {"dtype": accumulate, "device": scale.device}
        oy = ((torch.arange(kh, **opts) - kh // 2) * dilation[0]).repeat_interleave(kw)  # d position / d scale
        ox = ((torch.arange(kw, **opts) - kw // 2) * dilation[1]).repeat(kh)
        matrix_t = None if project else _plan.column_weight(weight, kernels).t()
        for i in range(n):
            for p0, p1 in chunks:
                y, x, g = chunk(i, p0, p1)
                length = g.shape[0]
                # Multiplying first, the forward summed the taps: each tap's sample gets the whole gradient.
                grad_z = g if matrix_t is None else linear(g, matrix_t).view(length * taps, c_in)
                grad_table = None if grad_tables is None else grad_tables[i]
                tap_blocks, run = (taps, 1) if project else (1, taps)
                grid = Grid(tables[i], h, w, tap_blocks, y, x)
                positions = sample_rows_backward(grid, grad_z, grad_table, need_scale, run=run, kernels=kernels)
                if grad_scale is not None and positions is not None:
                    gy, gx = positions
                    ds = gy.view(length, taps) @ oy + gx.view(length, taps) @ ox
                    grad_scale[i, 0, p0:p1] = ds.view(p1 - p0, w_out)
                del grad_z  # before the next chunk's exists
    grad_input = None
    if grad_tables is not None:
        grad_tables = grad_tables.to(tables.dtype)
    if project and grad_tables is not None:
        assert input is not None  # saved when multiplying first
        grad_weight, grad_input = _projection_gradients(input, weight, grad_tables, need_weight, need_input, kernels)
    elif need_input and grad_tables is not None:
        # NCHW like F.conv2d's: a channels-last gradient would be copied by whatever reads it.
        grad_input = transpose(grad_tables, kernels=kernels).view(n, c_in, h, w)
    grad_bias = grad_out.sum((0, 2, 3)) if need_bias else None
    return grad_input, grad_scale, grad_weight, grad_bias


def _projection_gradients(
    input: Tensor, weight: Tensor, grad_tables: Tensor, need_weight: bool, need_input: bool, kernels: Kernels
) -> tuple[Tensor | None, Tensor | None]:
    """Multiplying first: the gradients ``(weight, input)`` from the projection's, ``grad_tables``
    ``[N, H*W*taps, C_out]``.

    oneDNN copies a transposed first operand (not a transposed second one): both GEMMs are laid
    out so that their first operand is contiguous.
    """
    n, c_in, h, w = input.shape
    c_out, _, kh, kw = weight.shape
    taps = kh * kw
    grad_proj = grad_tables.view(n, h * w, taps * c_out)
    grad_weight = grad_input = None
    # The weight's gradient first: its [C_in, taps*C_out] product is freed just before the
    # reordered weight of the same size is made, which then takes pages already mapped (a
    # fresh page costs a fault).
    if need_weight:
        planes = input.reshape(n, c_in, h * w)
        # Summed over images in float32 for half precision (a no-op otherwise).
        accumulate = position_dtype(grad_tables.dtype)
        grad_projection_t = (linear(planes[0], grad_proj[0].t()) if n else weight.new_zeros(c_in, taps * c_out)).to(accumulate)
        for i in range(1, n):
            grad_projection_t += linear(planes[i], grad_proj[i].t())
        grad_projection_t = grad_projection_t.to(weight.dtype)
        # [C_in * taps, C_out] -> [C_out, C_in * taps]: contiguous, as autograd stores a weight's gradient.
        grad_weight = transpose(grad_projection_t.view(1, c_in * taps, c_out), kernels=kernels).view(c_out, c_in, kh, kw)
        del grad_projection_t
    if need_input:
        # [C_in, taps*C_out]: (co, ci, t) -> (ci, t, co)
        projection_t = transpose(weight.reshape(1, c_out, c_in * taps), kernels=kernels).view(c_in, taps * c_out)
        grad_input = _plan.stack([linear(projection_t, grad_proj[i]) for i in range(n)], (0, c_in, h * w), input)
        grad_input = grad_input.view(n, c_in, h, w)
    return grad_weight, grad_input


def _weight_gradient(
    tables: Tensor,
    size: tuple[int, int],
    weight_shape: torch.Size,
    chunk: Chunk,
    chunks: list[tuple[int, int]],
    w_out: int,
    kernels: Kernels,
) -> Tensor:
    """``sum over chunks of grad_out^T @ columns``, the columns sampled again chunk by chunk.

    Args:
        tables: ``[N, H*W, C_in]`` channels-last input.
        chunk: see :data:`Chunk`.

    Returns:
        ``[C_out, C_in, kh, kw]``, contiguous as autograd stores a weight's gradient.
    """
    c_out, c_in, kh, kw = weight_shape
    taps, (h, w_in) = kh * kw, size
    buffer = _plan.chunk_buffer(chunks, w_out, taps * c_in, tables)
    total: Tensor | None = None  # the first chunk's product, then the sum over chunks
    for i in range(tables.shape[0]):
        for p0, p1 in chunks:
            y, x, g = chunk(i, p0, p1)
            length = g.shape[0]
            z = buffer[:length].view(length * taps, c_in)
            z = sample_rows(Grid(tables[i], h, w_in, 1, y, x), run=taps, kernels=kernels, out=z)
            # oneDNN reads the transposes as they are (faster here than MKL's addmm_).
            part = linear(g.t(), z.view(length, taps * c_in).t())
            # Summed in float32 for half precision (a no-op otherwise).
            total = part.to(position_dtype(part.dtype)) if total is None else total.add_(part)
            del part  # before the next chunk's exists
    if total is None:  # no image to sum over
        return tables.new_zeros(c_out, c_in, kh, kw)
    return transpose(total.to(tables.dtype).view(c_out, taps, c_in), kernels=kernels).view(c_out, c_in, kh, kw)
