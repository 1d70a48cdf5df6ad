"""The fast path's forward: equations (7)-(9) as a chunked sampled im2col + GEMM."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

import sacseg.ops._plan as _plan
from sacseg.ops._compat import linear
from sacseg.ops._geometry import rows_span, sample_positions, tap_positions
from sacseg.ops.sampling import Grid, Kernels, sample_rows, transpose


def forward(
    input: Tensor,
    scale: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    *,
    project: bool,
    kernels: Kernels,
) -> tuple[Tensor, Tensor]:
    """Equations (7)-(9) as sampled im2col + GEMM, chunked over images and output rows.

    Sampling reads a channels-last table (``[N, H*W, C_in]``, or the projection
    ``[N, H*W*taps, C_out]`` when multiplying first, ``project``), so the four corners of a tap are
    contiguous rows.

    Args:
        input: ``[N, C_in, H, W]``.
        scale: ``[N, 1, H_out, W_out]``, finite; float32 next to half-precision data is allowed
            (as under CUDA autocast).
        weight: ``[C_out, C_in, kh, kw]``; bias ``[C_out]`` or ``None``.
        project: multiply before sampling (:func:`~sacseg.ops._plan.project_first`).
        kernels: which sampling kernels run (:mod:`sacseg.ops.sampling`).

    Returns:
        ``(out [N, C_out, H_out, W_out], tables)``: the tables are kept for the backward, which
        would otherwise redo the copy (or the projection's GEMM).
    """
    n, c_in, h, w = input.shape
    c_out, _, kh, kw = weight.shape
    taps = kh * kw
    h_out, w_out = scale.shape[-2:]
    if project:
        # [H*W, taps*C_out] per image. The GEMM writes [taps*C_out, H*W] from the NCHW input and
        # the transpose follows, which is faster than reading the input transposed.
        planes, projection = input.reshape(n, c_in, h * w), _plan.projection_weight(weight, kernels)
        tables = input.new_empty(n, h * w, taps * c_out)
        for i in range(n):
            transpose(linear(projection, planes[i].t())[None], kernels=kernels, out=tables[i : i + 1])
        tables = tables.view(n, h * w * taps, c_out)
    else:
        # Channels-last, so that the four corners of a tap are contiguous rows.
        tables = transpose(input.reshape(n, c_in, h * w), kernels=kernels)
        matrix = _plan.column_weight(weight, kernels)
    # The buffer holds a chunk's sampled columns, or (multiplying first) their sums over taps,
    # which are no larger than the output: one chunk, one kernel call, at classifier shapes.
    channels = c_out if project else taps * c_in
    chunks = _plan.row_chunks(h_out, w_out * channels * input.element_size(), _plan.CHUNK_BYTES)
    buffer = _plan.chunk_buffer(chunks, w_out, channels, input)
    # Once per call, not per chunk: a dozen small ops whose overhead would add up.
    ys, xs = tap_positions(*sample_positions(scale, (kh, kw), stride, padding, dilation))
    out = input.new_empty(n, c_out, h_out, w_out)
    for i in range(n):
        for p0, p1 in chunks:
            length = (p1 - p0) * w_out
            span = rows_span(p0, p1, w_out, taps)
            y, x = ys[i, span], xs[i, span]
            if project:
                res = sample_rows(Grid(tables[i], h, w, taps, y, x), sum_taps=True, kernels=kernels, out=buffer[:length]).t()
            else:
                z = buffer[:length].view(length * taps, c_in)
                z = sample_rows(Grid(tables[i], h, w, 1, y, x), run=taps, kernels=kernels, out=z)
                res = linear(matrix, z.view(length, taps * c_in))  # [C_out, length]: NCHW without a transpose
            out[i, :, p0:p1] = res.view(c_out, p1 - p0, w_out)
    if bias is not None:
        out += bias.view(1, c_out, 1, 1)
    return out, tables
