"""The scale-adaptive convolution operator (Zhang et al., ICCV 2017, section 3.3)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from sacseg.ops._bilinear import position_dtype, sample_rows, sample_rows_backward, transpose
from sacseg.utils.pair import IntOrPair, pair

__all__ = ["SAC_IMPLEMENTATIONS", "sac_conv2d", "sac_output_size"]


def sac_output_size(
    in_size: tuple[int, int],
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[int, int]:
    """The ``(H_out, W_out)`` that ``F.conv2d`` gives for the same geometry."""
    return tuple(  # type: ignore[return-value]
        (size + 2 * p - d * (k - 1) - 1) // s + 1 for size, k, s, p, d in zip(in_size, kernel_size, stride, padding, dilation)
    )


def _check_args(
    input: Tensor,
    scale: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: IntOrPair,
    padding: IntOrPair,
    dilation: IntOrPair,
    one_dtype: bool = True,
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    stride_, padding_, dilation_ = pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")
    if min(stride_) < 1:
        raise ValueError(f"stride must be >= 1, got {stride_}")
    if min(padding_) < 0:
        raise ValueError(f"padding must be >= 0, got {padding_}")
    if min(dilation_) < 1:
        raise ValueError(f"dilation must be >= 1, got {dilation_}")
    if input.dim() != 4:
        raise ValueError(f"input must be a 4-D tensor [N, C_in, H, W], got shape {tuple(input.shape)}")
    if weight.dim() != 4:
        raise ValueError(f"weight must be a 4-D tensor [C_out, C_in, kh, kw], got shape {tuple(weight.shape)}")
    n, c_in, h, w = input.shape
    c_out, w_in, kh, kw = weight.shape
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(
            f"weight kernel size must be odd (the taps are placed around a centre), got {kh}x{kw} "
            f"from weight shape {tuple(weight.shape)}"
        )
    if w_in != c_in:
        raise ValueError(
            f"channel mismatch: input has C_in={c_in} (shape {tuple(input.shape)}) but weight expects "
            f"{w_in} (shape {tuple(weight.shape)})"
        )
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != c_out):
        raise ValueError(f"bias must have shape [{c_out}] (C_out), got {tuple(bias.shape)}")
    h_out, w_out = sac_output_size((h, w), (kh, kw), stride_, padding_, dilation_)
    if h_out < 1 or w_out < 1:
        raise ValueError(
            f"input of shape {tuple(input.shape)} is too small for a {kh}x{kw} kernel with stride {stride_}, "
            f"padding {padding_}, dilation {dilation_}: the output would be {h_out}x{w_out}"
        )
    if scale.dim() != 4 or tuple(scale.shape) != (n, 1, h_out, w_out):
        raise ValueError(
            f"scale must have shape [N, 1, H_out, W_out] = [{n}, 1, {h_out}, {w_out}] (the output grid of "
            f"F.conv2d for this input, stride, padding and dilation), got {tuple(scale.shape)}"
        )
    tensors = {"input": input, "scale": scale, "weight": weight}
    if bias is not None:
        tensors["bias"] = bias
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        raise RuntimeError(f"all tensors must be on one device, got {devices}")
    dtypes = {name: t.dtype for name, t in tensors.items()}
    if one_dtype and len(set(dtypes.values())) > 1:
        raise RuntimeError(f"all tensors must have one dtype, got {dtypes}")
    if not all(dtype.is_floating_point for dtype in dtypes.values()):
        raise RuntimeError(f"sac_conv2d needs floating-point tensors, got {dtypes}")
    return stride_, padding_, dilation_


def _check_scale_finite(scale: Tensor) -> None:
    """A clear error for NaN or Inf in a scale map, whose taps would have no position.

    One reduction and one host sync per call, small next to the convolution.
    """
    bad = int(scale.numel() - torch.isfinite(scale).sum())
    if bad:
        raise ValueError(
            f"scale has {bad} non-finite value(s) (NaN or Inf) among {scale.numel()} of shape "
            f"{tuple(scale.shape)}: every tap position must be finite"
        )


def _capturing() -> bool:
    """Whether a graph is being recorded (ONNX export by either exporter, torch.jit.trace,
    torch.compile, torch.export) rather than run."""
    return torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or torch.compiler.is_compiling()


def sample_positions(
    scale: Tensor,
    kernel_size: tuple[int, int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
) -> tuple[Tensor, Tensor]:
    """Input coordinates of every tap, equation (7): ``centre + offset * dilation * scale``.

    Args:
        scale: ``[N, 1, H_out, W_out]``.

    Returns:
        ``(y, x)``, each ``[N, kh, kw, H_out, W_out]`` in input pixels (row, column), in
        :func:`~sacseg.ops._bilinear.position_dtype` of ``scale``'s dtype. With ``scale == 1``
        they are exact integers, the taps of ``F.conv2d``.
    """
    kh, kw = kernel_size
    _, _, h_out, w_out = scale.shape
    opts: dict[str, Any] = {"dtype": position_dtype(scale.dtype), "device": scale.device}
    scale = scale.to(opts["dtype"])
    # Centre of the patch of output (p, q); the taps spread from it by (a - kh//2) * d * s.
    cy = torch.arange(h_out, **opts) * stride[0] - padding[0] + (kh // 2) * dilation[0]
    cx = torch.arange(w_out, **opts) * stride[1] - padding[1] + (kw // 2) * dilation[1]
    oy = (torch.arange(kh, **opts) - kh // 2) * dilation[0]
    ox = (torch.arange(kw, **opts) - kw // 2) * dilation[1]
    s = scale[:, :, None]  # [N, 1, 1, H_out, W_out]
    y = cy.view(1, 1, 1, h_out, 1) + oy.view(1, kh, 1, 1, 1) * s
    x = cx.view(1, 1, 1, 1, w_out) + ox.view(1, 1, kw, 1, 1) * s
    return y.expand(-1, kh, kw, h_out, w_out), x.expand(-1, kh, kw, h_out, w_out)


def _bilinear_gather(input: Tensor, y: Tensor, x: Tensor) -> Tensor:
    """Equation (8): bilinear samples of ``input`` at real positions, zero outside.

    Args:
        input: ``[N, C, H, W]``.
        y, x: ``[N, P]`` positions in input pixels, float32 (float64 for float64 data).

    Returns:
        ``[N, C, P]`` in ``input``'s dtype. The corners are ``floor`` and ``floor + 1``, so the
        derivative in a position is eq. (14) and, at integer positions, its right-hand limit (as
        in spatial transformers, ``grid_sample`` and ``deform_conv2d``).
    """
    n, c, h, w = input.shape
    flat = input.reshape(n, c, h * w)
    y0, x0 = torch.floor(y), torch.floor(x)
    fy, fx = y - y0, x - x0
    # The sum starts from the first corner, not from zeros: a static-shape ONNX export would
    # constant-fold a [N, C, P] zero tensor into the file (75 MB per layer at 512x512).
    out: Tensor | None = None
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            yi, xi = y0 + dy, x0 + dx
            inside = (yi >= 0) & (yi <= h - 1) & (xi >= 0) & (xi <= w - 1)
            index = yi.clamp(0, h - 1).long() * w + xi.clamp(0, w - 1).long()
            values = flat.gather(2, index[:, None, :].expand(n, c, -1))
            weight = (wy * wx * inside)[:, None, :]
            # A corner of zero weight (outside, or a whole pixel away) adds nothing even where the
            # input is NaN or Inf, as in F.conv2d; its value still enters the position's derivative
            # (the right-hand limit at integer positions), so it is made finite rather than zero.
            values = torch.where(weight != 0, values, values.nan_to_num(0.0, 0.0, 0.0))
            corner = values * weight
            out = corner if out is None else out + corner
    assert out is not None
    return out.to(input.dtype)


def _sac_reference(
    input: Tensor,
    scale: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> Tensor:
    """Equations (7)-(9) as written; autograd derives (10)-(17) from them."""
    if not _capturing():  # a recorded graph cannot raise on data: see sac_conv2d's docstring
        _check_scale_finite(scale)
    n, c_in = input.shape[:2]
    c_out, _, kh, kw = weight.shape
    y, x = sample_positions(scale, (kh, kw), stride, padding, dilation)
    h_out, w_out = y.shape[-2:]
    taps = kh * kw * h_out * w_out
    z = _bilinear_gather(input, y.reshape(n, taps), x.reshape(n, taps))  # [N, C_in, kh*kw*H_out*W_out]
    columns = z.reshape(n, c_in * kh * kw, h_out * w_out)
    out = weight.reshape(c_out, c_in * kh * kw) @ columns
    if bias is not None:
        out = out + bias[:, None]
    return out.reshape(n, c_out, h_out, w_out)


#: Bytes of sampled values one chunk of output rows may hold: keeps the fast path's extra memory
#: near F.conv2d's while the GEMMs stay large enough to run at full speed, and the weight passes
#: through the cache (evicting the table being sampled) few times (benchmarks/DESIGN_MEASUREMENTS.md); backward's input pass
#: takes half, as its column gradient coexists with the weight's gradient.
_CHUNK_BYTES = 16 << 20
#: Cost of one sampled value in GEMM multiply-adds (memory-bound gather vs compute-bound GEMM;
#: see benchmarks/DESIGN_MEASUREMENTS.md), for choosing the order of sampling and GEMM.
_SAMPLE_COST = 64


def _project_first(c_in: int, c_out: int, taps: int, in_pixels: int, out_pixels: int) -> bool:
    """Whether to multiply first (sample ``taps * C_out`` projected channels) or sample first.

    Sampling is linear and shared by the channels, so ``sum_t K_t sample_t(A) = sum_t
    sample_t(K_t A)``: the GEMM costs ``taps*C_out*C_in`` per input pixel instead of per output
    pixel, and only ``taps*C_out`` channels are sampled instead of ``taps*C_in``. It pays for
    classifiers (2048 -> 19); the projection is kept for backward, so it must not outgrow the input.
    """
    columns = taps * c_out * c_in * out_pixels + _SAMPLE_COST * taps * c_in * out_pixels
    project = taps * c_out * c_in * in_pixels + _SAMPLE_COST * taps * c_out * out_pixels
    return taps * c_out <= c_in and project < columns


_ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _linear(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b.T``, ``[M, K] x [N, K] -> [M, N]``.

    On CPU float32 this is oneDNN's matmul, the kernels F.conv2d runs on (faster than MKL's sgemm
    at these shapes: benchmarks/DESIGN_MEASUREMENTS.md).
    """
    if _ONEDNN_LINEAR and a.device.type == "cpu" and a.dtype == torch.float32 and a.numel() > 0 and b.numel() > 0:
        if not (b.is_contiguous() or b.t().is_contiguous()):
            # A strided view (e.g. of an input sliced in height) sends oneDNN to a reference kernel
            # that is orders of magnitude slower; a transposed contiguous one is read as it is.
            b = b.contiguous()
        return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
    return a @ b.t()


def _stack(items: list[Tensor], empty_shape: tuple[int, ...], like: Tensor) -> Tensor:
    """``torch.stack(items)`` without a copy for one item, and of shape ``empty_shape`` for none."""
    if not items:
        return like.new_empty(empty_shape)
    return items[0][None] if len(items) == 1 else torch.stack(items)


def _row_chunks(rows: int, bytes_per_row: int, budget: int) -> list[tuple[int, int]]:
    """``[(p0, p1), ...]`` covering ``range(rows)`` in as few chunks as ``budget`` bytes allow, of even sizes."""
    step = max(1, budget // max(1, bytes_per_row))
    count = -(-rows // step)
    bounds = [rows * k // count for k in range(count + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def _chunk_buffer(chunks: list[tuple[int, int]], w_out: int, channels: int, like: Tensor) -> Tensor:
    """``[rows * W_out, channels]`` for the largest chunk: one buffer reused chunk after chunk."""
    rows = max(p1 - p0 for p0, p1 in chunks)
    return like.new_empty(rows * w_out, channels)


def _tap_positions(
    scale: Tensor,
    kernel_size: tuple[int, int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
) -> tuple[Tensor, Tensor]:
    """Every tap's position, ``[N, H_out * W_out * kh * kw]`` each, tap fastest: output rows
    ``p0:p1`` of image ``i`` are the contiguous slice ``[i, _rows_span(p0, p1, W_out, kh * kw)]``.

    Args:
        scale: ``[N, 1, H_out, W_out]``.
    """
    # Once per call, not per chunk: a dozen small ops whose overhead would add up.
    y, x = sample_positions(scale, kernel_size, stride, padding, dilation)
    n, taps = scale.shape[0], kernel_size[0] * kernel_size[1]
    shape = (n, scale.shape[2] * scale.shape[3] * taps)
    return y.permute(0, 3, 4, 1, 2).reshape(shape), x.permute(0, 3, 4, 1, 2).reshape(shape)


def _rows_span(p0: int, p1: int, w_out: int, taps: int) -> slice:
    """Where output rows ``p0:p1`` sit along the last axis of :func:`_tap_positions`' results."""
    return slice(p0 * w_out * taps, p1 * w_out * taps)


def _fast_forward(
    input: Tensor,
    scale: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    project: bool,
    native: bool,
) -> tuple[Tensor, Tensor]:
    """Equations (7)-(9) as sampled im2col + GEMM, chunked over images and output rows.

    Sampling reads a channels-last table (``[N, H*W, C_in]``, or the projection
    ``[N, H*W*taps, C_out]`` when multiplying first, ``project``), so the four corners of a tap are
    contiguous rows. ``scale`` may be float32 next to half-precision data (as under CUDA autocast).

    Returns:
        ``(out [N, C_out, H_out, W_out], tables)``: the tables are kept for :func:`_fast_backward`,
        which would otherwise redo the copy (or the projection's GEMM).
    """
    _check_scale_finite(scale)
    n, c_in, h, w = input.shape
    c_out, _, kh, kw = weight.shape
    taps = kh * kw
    h_out, w_out = scale.shape[-2:]
    if project:
        # [H*W, taps*C_out] per image. The GEMM writes [taps*C_out, H*W] from the NCHW input and
        # the transpose follows, which is faster than reading the input transposed.
        planes, projection = input.reshape(n, c_in, h * w), _projection_weight(weight, native)
        tables = input.new_empty(n, h * w, taps * c_out)
        for i in range(n):
            transpose(_linear(projection, planes[i].t())[None], native=native, out=tables[i : i + 1])
        tables = tables.view(n, h * w * taps, c_out)
    else:
        # Channels-last, so that the four corners of a tap are contiguous rows.
        tables = transpose(input.reshape(n, c_in, h * w), native=native)
        matrix = _column_weight(weight, native)
    # The buffer holds a chunk's sampled columns, or (multiplying first) their sums over taps,
    # which are no larger than the output: one chunk, one kernel call, at classifier shapes.
    channels = c_out if project else taps * c_in
    chunks = _row_chunks(h_out, w_out * channels * input.element_size(), _CHUNK_BYTES)
    buffer = _chunk_buffer(chunks, w_out, channels, input)
    ys, xs = _tap_positions(scale, (kh, kw), stride, padding, dilation)
    out = input.new_empty(n, c_out, h_out, w_out)
    for i in range(n):
        for p0, p1 in chunks:
            length = (p1 - p0) * w_out
            span = _rows_span(p0, p1, w_out, taps)
            y, x = ys[i, span], xs[i, span]
            if project:
                res = sample_rows(tables[i], h, w, taps, y, x, sum_taps=True, native=native, out=buffer[:length]).t()
            else:
                z = sample_rows(tables[i], h, w, 1, y, x, run=taps, native=native, out=buffer[:length].view(length * taps, c_in))
                res = _linear(matrix, z.view(length, taps * c_in))  # [C_out, length]: NCHW without a transpose
            out[i, :, p0:p1] = res.view(c_out, p1 - p0, w_out)
    if bias is not None:
        out += bias.view(1, c_out, 1, 1)
    return out, tables


def _fast_backward(
    grad_out: Tensor,
    input: Tensor | None,
    scale: Tensor,
    weight: Tensor,
    tables: Tensor,
    size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    project: bool,
    native: bool,
    output_mask: Sequence[bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """Equations (10)-(17): the gradients of input, scale, weight and bias that ``output_mask`` asks for.

    The samples are recomputed instead of saved, into one buffer reused by every chunk. All
    gradients come back contiguous, as F.conv2d's do.

    Args:
        input: needed only when multiplying first (for the weight's gradient), else ``None``.
        tables: :func:`_fast_forward`'s.
        size: the input's ``(H, W)``.
    """
    (h, w), (need_input, need_scale, need_weight, need_bias) = size, output_mask
    n = tables.shape[0]
    c_out, c_in, kh, kw = weight.shape
    taps = kh * kw
    h_out, w_out = scale.shape[-2:]
    row_bytes = w_out * taps * c_in * weight.element_size()  # of sampled columns, when sampling first
    ys, xs = _tap_positions(scale, (kh, kw), stride, padding, dilation)
    grad_out_cl = grad_out.permute(0, 2, 3, 1)

    def chunk(i: int, p0: int, p1: int) -> tuple[Tensor, Tensor, Tensor]:
        """Positions and output gradient ``[length, C_out]`` of output rows ``p0:p1`` of image ``i``."""
        span = _rows_span(p0, p1, w_out, taps)
        return ys[i, span], xs[i, span], grad_out_cl[i, p0:p1].reshape((p1 - p0) * w_out, c_out)

    grad_weight = None
    if need_weight and not project:
        # A pass of its own before the input's, so that its buffer and the input pass's column
        # gradient never coexist: the extra memory stays at about one (forward-sized) chunk.
        chunks = _row_chunks(h_out, row_bytes, _CHUNK_BYTES)
        grad_weight = _weight_gradient(tables, (h, w), weight.shape, chunk, chunks, w_out, native)
    # Half-size chunks: the column gradient coexists with the weight's gradient and its reordered
    # weight. Multiplying first, the gradient of the sums is grad_out itself: no buffer, one chunk.
    chunks = [(0, h_out)] if project else _row_chunks(h_out, row_bytes, _CHUNK_BYTES // 2)

    # Half-precision tables accumulate their gradient in float32: a row takes up to 4 * taps sums.
    accumulate = position_dtype(tables.dtype)
    need_tables = need_input or (need_weight and project)
    grad_tables = torch.zeros(tables.shape, dtype=accumulate, device=tables.device) if need_tables else None
    grad_scale = scale.new_zeros(scale.shape) if need_scale else None  # contiguous, as the fake says
    if grad_tables is not None or need_scale:
        opts: dict[str, Any] = {"dtype": accumulate, "device": scale.device}
        oy = ((torch.arange(kh, **opts) - kh // 2) * dilation[0]).repeat_interleave(kw)  # d position / d scale
        ox = ((torch.arange(kw, **opts) - kw // 2) * dilation[1]).repeat(kh)
        matrix_t = None if project else _column_weight(weight, native).t()
        for i in range(n):
            for p0, p1 in chunks:
                y, x, g = chunk(i, p0, p1)
                length = g.shape[0]
                # Multiplying first, the forward summed the taps: each tap's sample gets the whole gradient.
                grad_z = g if matrix_t is None else _linear(g, matrix_t).view(length * taps, c_in)
                positions = sample_rows_backward(
                    tables[i],
                    h,
                    w,
                    taps if project else 1,
                    y,
                    x,
                    grad_z,
                    None if grad_tables is None else grad_tables[i],
                    need_scale,
                    run=1 if project else taps,
                    native=native,
                )
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
        # oneDNN copies a transposed first operand (not a transposed second one): both GEMMs
        # are laid out so that their first operand is contiguous.
        grad_proj = grad_tables.view(n, h * w, taps * c_out)
        # The weight's gradient first: its [C_in, taps*C_out] product is freed just before the
        # reordered weight of the same size is made, which then takes pages already mapped (a
        # fresh page costs a fault).
        if need_weight:
            planes = input.reshape(n, c_in, h * w)
            # Summed over images in float32 for half precision (a no-op otherwise).
            grad_projection_t = (_linear(planes[0], grad_proj[0].t()) if n else weight.new_zeros(c_in, taps * c_out)).to(
                accumulate
            )
            for i in range(1, n):
                grad_projection_t += _linear(planes[i], grad_proj[i].t())
            grad_projection_t = grad_projection_t.to(weight.dtype)
            # [C_in * taps, C_out] -> [C_out, C_in * taps]: contiguous, as autograd stores a weight's gradient.
            grad_weight = transpose(grad_projection_t.view(1, c_in * taps, c_out), native=native).view(c_out, c_in, kh, kw)
            del grad_projection_t
        if need_input:
            # [C_in, taps*C_out]: (co, ci, t) -> (ci, t, co)
            projection_t = transpose(weight.reshape(1, c_out, c_in * taps), native=native).view(c_in, taps * c_out)
            grad_input = _stack([_linear(projection_t, grad_proj[i]) for i in range(n)], (0, c_in, h * w), input)
            grad_input = grad_input.view(n, c_in, h, w)
    elif need_input and grad_tables is not None:
        # NCHW like F.conv2d's: a channels-last gradient would be copied by whatever reads it.
        grad_input = transpose(grad_tables, native=native).view(n, c_in, h, w)
    grad_bias = grad_out.sum((0, 2, 3)) if need_bias else None
    return grad_input, grad_scale, grad_weight, grad_bias


def _weight_gradient(
    tables: Tensor,
    size: tuple[int, int],
    weight_shape: torch.Size,
    chunk: Callable[[int, int, int], tuple[Tensor, Tensor, Tensor]],
    chunks: list[tuple[int, int]],
    w_out: int,
    native: bool,
) -> Tensor:
    """``sum over chunks of grad_out^T @ columns``, the columns sampled again chunk by chunk.

    Args:
        tables: ``[N, H*W, C_in]`` channels-last input.
        chunk: ``(i, p0, p1) -> (y, x, grad_out [length, C_out])`` of output rows ``p0:p1`` of image ``i``.

    Returns:
        ``[C_out, C_in, kh, kw]``, contiguous as autograd stores a weight's gradient.
    """
    c_out, c_in, kh, kw = weight_shape
    taps, (h, w_in) = kh * kw, size
    buffer = _chunk_buffer(chunks, w_out, taps * c_in, tables)
    total: Tensor | None = None  # the first chunk's product, then the sum over chunks
    for i in range(tables.shape[0]):
        for p0, p1 in chunks:
            y, x, g = chunk(i, p0, p1)
            length = g.shape[0]
            z = sample_rows(tables[i], h, w_in, 1, y, x, run=taps, native=native, out=buffer[:length].view(length * taps, c_in))
            # oneDNN reads the transposes as they are (faster here than MKL's addmm_).
            part = _linear(g.t(), z.view(length, taps * c_in).t())
            # Summed in float32 for half precision (a no-op otherwise).
            total = part.to(position_dtype(part.dtype)) if total is None else total.add_(part)
            del part  # before the next chunk's exists
    if total is None:  # no image to sum over
        return tables.new_zeros(c_out, c_in, kh, kw)
    return transpose(total.to(tables.dtype).view(c_out, taps, c_in), native=native).view(c_out, c_in, kh, kw)


def _column_weight(weight: Tensor, native: bool) -> Tensor:
    """``[C_out, kh*kw*C_in]``, matching sampled columns laid out tap-major, channel-minor."""
    c_out, c_in, kh, kw = weight.shape
    return transpose(weight.reshape(c_out, c_in, kh * kw), native=native).view(c_out, kh * kw * c_in)


def _projection_weight(weight: Tensor, native: bool) -> Tensor:
    """``[kh*kw*C_out, C_in]``: a 1x1 convolution producing every tap's projection at once."""
    c_out, c_in, kh, kw = weight.shape
    return transpose(weight.reshape(1, c_out * c_in, kh * kw), native=native).view(kh * kw * c_out, c_in)


# The fast path as a PyTorch operator: torch.compile and torch.export keep it as one opaque node
# (no graph break: its fake implementation gives dynamo the output shapes), autograd reaches its
# hand-written backward, also an operator, and its own autocast rule picks the dtypes.
@torch.library.custom_op("sacseg::sac_conv2d", mutates_args=())
def _sac_conv2d_op(
    input: Tensor,
    scale: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    project: bool,
    native: bool,
) -> tuple[Tensor, Tensor]:
    """``torch.ops.sacseg.sac_conv2d``: :func:`_fast_forward`, ``(out, tables)``. The tables are
    the backward's, not a result: a gradient that reaches them is ignored.

    ``project`` multiplies before sampling (see :func:`_project_first`); ``native`` samples with
    the compiled CPU kernels where they exist.
    """
    return _fast_forward(input, scale, weight, bias, stride, padding, dilation, project, native)


@_sac_conv2d_op.register_fake
def _(input, scale, weight, bias, stride, padding, dilation, project, native):  # type: ignore[no-untyped-def]
    n, c_in, h, w = input.shape
    c_out, _, kh, kw = weight.shape
    tables = input.new_empty(n, h * w * kh * kw, c_out) if project else input.new_empty(n, h * w, c_in)
    return input.new_empty(n, c_out, scale.shape[2], scale.shape[3]), tables


@torch.library.custom_op("sacseg::sac_conv2d_backward", mutates_args=())
def _sac_conv2d_backward_op(
    grad_out: Tensor,
    input: Tensor | None,
    scale: Tensor,
    weight: Tensor,
    tables: Tensor,
    size: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    project: bool,
    native: bool,
    output_mask: list[bool],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``torch.ops.sacseg.sac_conv2d_backward``: the gradients of (input, scale, weight, bias)
    that ``output_mask`` asks for, the others empty (:func:`_fast_backward`)."""
    grads = _fast_backward(grad_out, input, scale, weight, tables, size, stride, padding, dilation, project, native, output_mask)
    return tuple(grad_out.new_empty(0) if g is None else g for g in grads)  # type: ignore[return-value]


@_sac_conv2d_backward_op.register_fake
def _(grad_out, input, scale, weight, tables, size, stride, padding, dilation, project, native, output_mask):  # type: ignore[no-untyped-def]
    shapes = ((tables.shape[0], weight.shape[1], *size), scale.shape, weight.shape, (weight.shape[0],))
    dtypes = (tables.dtype, scale.dtype, weight.dtype, grad_out.dtype)
    return tuple(
        grad_out.new_empty(shape if wanted else (0,), dtype=dtype if wanted else grad_out.dtype)
        for shape, dtype, wanted in zip(shapes, dtypes, output_mask)
    )


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    input, scale, weight, _, stride, padding, dilation, project, native = inputs
    ctx.geometry = (list(input.shape[2:]), stride, padding, dilation, project, native)
    # The tables stay differentiable, so that a second derivative through them reaches
    # _no_double_backward and raises; nothing downstream uses them, so no gradient is made for them.
    ctx.set_materialize_grads(False)
    # Only multiplying first needs the input itself again (for the weight's gradient).
    ctx.save_for_backward(input if project else None, scale, weight, output[1])


def _backward(ctx: Any, grad_out: Tensor | None, _grad_tables: Tensor | None) -> tuple[Tensor | None, ...]:
    if grad_out is None:  # an undefined gradient (autograd's check_undefined_grad)
        return (None,) * 9
    input, scale, weight, tables = ctx.saved_tensors
    mask = list(ctx.needs_input_grad[:4])
    grads = torch.ops.sacseg.sac_conv2d_backward(grad_out, input, scale, weight, tables, *ctx.geometry, mask)
    return (*(g if wanted else None for g, wanted in zip(grads, mask)), None, None, None, None, None)


def _no_double_backward(ctx: Any, *grads: Tensor) -> tuple[None, ...]:
    raise RuntimeError("sacseg::sac_conv2d is differentiable once: its backward is hand-written and has no derivative")


_sac_conv2d_op.register_autograd(_backward, setup_context=_setup_context)
# Gradients made with create_graph=True carry this, so that a second derivative raises instead of
# silently leaving the operator out.
_sac_conv2d_backward_op.register_autograd(_no_double_backward, setup_context=lambda ctx, inputs, output: None)


_LIBRARY = torch.library.Library("sacseg", "FRAGMENT")  # for the autocast kernels, living as long as the module


def _register_autocast(device_type: str) -> None:
    """Under autocast, CPU runs the operator in float32 (its GEMMs gain nothing in half precision
    there); other devices run the data (and GEMMs) in the autocast dtype. The scale stays float32
    everywhere, so positions, bilinear weights and the scale's gradient keep their precision."""
    key = "Autocast" + torch._C._dispatch_key_for_device(device_type)
    excluded = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key))

    def cast(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
        return t if t is None or t.dtype == torch.float64 or t.device.type != device_type else t.to(dtype)

    def kernel(_keyset: Any, input: Tensor, scale: Tensor, weight: Tensor, bias: Tensor | None, *rest: Any) -> Any:
        data = torch.float32 if device_type == "cpu" else torch.get_autocast_dtype(device_type)
        with torch._C._ExcludeDispatchKeyGuard(excluded):
            return torch.ops.sacseg.sac_conv2d.default(
                cast(input, data), cast(scale, torch.float32), cast(weight, data), cast(bias, data), *rest
            )

    _LIBRARY.impl("sac_conv2d", kernel, key, with_keyset=True)


for _device_type in ("cpu", "cuda"):
    _register_autocast(_device_type)


def _fast_impl(native: bool) -> SacImpl:
    """The fast path, sampling with the compiled kernels when ``native`` (C++ on CPU where a compiler
    is present, Triton on CUDA; torch ops elsewhere), or with torch ops only."""

    def impl(
        input: Tensor,
        scale: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int],
    ) -> Tensor:
        c_out, c_in, kh, kw = weight.shape
        project = _project_first(c_in, c_out, kh * kw, input.shape[2] * input.shape[3], scale.shape[2] * scale.shape[3])
        geometry = (list(stride), list(padding), list(dilation))
        return torch.ops.sacseg.sac_conv2d(input, scale.contiguous(), weight, bias, *geometry, project, native)[0]

    return impl


_sac_fast = _fast_impl(native=True)


SacImpl = Callable[[Tensor, Tensor, Tensor, "Tensor | None", tuple[int, int], tuple[int, int], tuple[int, int]], Tensor]
#: Implementations by name; ``"auto"`` in :func:`sac_conv2d` picks the fastest for the call.
SAC_IMPLEMENTATIONS: dict[str, SacImpl] = {
    "reference": _sac_reference,
    "fast": _sac_fast,
    "fast_torch": _fast_impl(native=False),
}


def _exporting_onnx() -> bool:
    """Whether an ONNX export (by either exporter) or the torch.jit.trace under the legacy one runs."""
    return torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()


def _choose_impl() -> SacImpl:
    # An ONNX graph may hold default-domain operators only: the reference is made of them (floor,
    # gather, arithmetic, matmul). torch.compile and torch.export keep the fast path's operator.
    if _exporting_onnx():
        return _sac_reference
    # The fast path wins at every measured shape (benchmarks/bench_sac_conv.py); its native kernels
    # are C++ for CPU float32/float64 and Triton on CUDA, elsewhere it falls back to torch ops itself.
    return _sac_fast


def sac_conv2d(
    input: Tensor,
    scale: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
    *,
    impl: Literal["auto", "reference", "fast", "fast_torch"] | str = "auto",
) -> Tensor:
    r"""Scale-adaptive convolution: a convolution whose taps spread with a per-output scale.

    Where ``F.conv2d`` reads tap ``(a, b)`` of output ``(p, q)`` at
    ``(cy + (a - kh//2) * dil_h, cx + (b - kw//2) * dil_w)`` around the patch centre
    ``cy = p * stride_h - pad_h + (kh//2) * dil_h`` (likewise ``cx``), this reads at
    ``(cy + (a - kh//2) * dil_h * s, cx + (b - kw//2) * dil_w * s)`` with ``s = scale[n, 0, p, q]``,
    by bilinear interpolation, zeros outside the input (equations (7)-(9) of the paper).
    ``scale == 1`` is ``F.conv2d``; an integer scale ``m`` is the convolution with dilation
    ``m * dilation``. Differentiable in ``input``, ``scale``, ``weight`` and ``bias``.

    Args:
        input: ``[N, C_in, H, W]``.
        scale: ``[N, 1, H_out, W_out]``, where ``(H_out, W_out)`` is the output size of
            ``F.conv2d`` with the same stride, padding and dilation.
        weight: ``[C_out, C_in, kh, kw]`` with odd ``kh`` and ``kw``.
        bias: ``[C_out]`` or ``None``.
        stride, padding, dilation: an int or a ``(h, w)`` pair, as in ``F.conv2d``.
        impl: ``"auto"`` (``"fast"``, also under ``torch.compile`` and ``torch.export``;
            ``"reference"`` during ONNX export and ``torch.jit.trace``) or a key of
            :data:`SAC_IMPLEMENTATIONS`: ``"reference"`` is the direct transcription of the paper
            (autograd through the whole sampled tensor, standard ops only); ``"fast"`` is the
            operator ``torch.ops.sacseg.sac_conv2d``, a chunked sampled im2col + GEMM with a
            hand-written backward (``torch.ops.sacseg.sac_conv2d_backward``), whose bilinear
            sampling runs in C++ kernels on CPU (compiled on first use and cached, see
            ``sacseg.ops._bilinear.native_library``), in Triton kernels on CUDA and in torch ops
            elsewhere; ``"fast_torch"``
            is the same operator with torch ops only.

    Raises:
        ValueError: if ``scale`` holds NaN or Inf (it names how many), with every ``impl``, also
            in compiled and exported programs (the operator checks when it runs). A graph made
            of the reference's ops cannot: an ONNX graph, and ``impl="reference"`` under
            ``torch.compile``/``torch.export``, give undefined outputs for such a scale.

    Returns:
        ``[N, C_out, H_out, W_out]``. Half-precision inputs give half-precision outputs, with
        positions and bilinear weights in float32 (see ``sacseg.ops._bilinear.position_dtype``).
        Non-finite values of ``input`` reach the outputs whose taps read them with a nonzero
        weight: at ``scale == 1`` exactly those of ``F.conv2d``. Under autocast the operator runs
        in float32 on CPU (and returns float32); on CUDA its data and GEMMs take the autocast dtype
        while the scale, the positions and the bilinear weights stay float32. The reference runs
        in float32 under autocast everywhere.
    """
    if impl == "auto":
        fn = _choose_impl()
    elif impl in SAC_IMPLEMENTATIONS:
        fn = SAC_IMPLEMENTATIONS[impl]
    else:
        raise ValueError(f"unknown impl {impl!r}; valid: 'auto', " + ", ".join(repr(k) for k in SAC_IMPLEMENTATIONS))
    device_type = input.device.type
    # Autocast may hand over a half input next to a float32 weight: the operator's autocast rule
    # casts them; the reference, recorded op by op, is cast to float32 here.
    autocast = torch.is_autocast_enabled(device_type)
    stride_, padding_, dilation_ = _check_args(input, scale, weight, bias, stride, padding, dilation, one_dtype=not autocast)
    if autocast and fn is _sac_reference:
        dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
        input, scale, weight = input.to(dtype), scale.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
        with torch.autocast(device_type, enabled=False):
            return fn(input, scale, weight, bias, stride_, padding_, dilation_)
    return fn(input, scale, weight, bias, stride_, padding_, dilation_)
