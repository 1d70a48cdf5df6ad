"""How the fast path lays out its work: the order of GEMM and sampling, chunks of output rows, reordered weights."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sacseg.ops.sampling import Kernels, transpose

#: Bytes of sampled values one chunk of output rows may hold: keeps the fast path's extra memory
#: near F.conv2d's while the GEMMs stay large enough to run at full speed and the weight passes
#: through the cache (evicting the table being sampled) few times; backward's input pass takes
#: half, as its column gradient coexists with the weight's gradient. Measured in
#: benchmarks/DESIGN_MEASUREMENTS.md.
CHUNK_BYTES = 16 << 20
#: Cost of one sampled value in GEMM multiply-adds (memory-bound gather vs compute-bound GEMM;
#: benchmarks/DESIGN_MEASUREMENTS.md), for choosing the order of sampling and GEMM.
SAMPLE_COST = 64


def project_first(c_in: int, c_out: int, taps: int, in_pixels: int, out_pixels: int) -> bool:
    """Whether to multiply first (sample ``taps * C_out`` projected channels) or sample first.

    Sampling is linear and shared by the channels, so ``sum_t K_t sample_t(A) = sum_t
    sample_t(K_t A)``: the GEMM costs ``taps*C_out*C_in`` per input pixel instead of per output
    pixel, and only ``taps*C_out`` channels are sampled instead of ``taps*C_in``. It pays for
    classifiers (many input channels, few classes); the projection is kept for backward, so it
    must not outgrow the input.
    """
    columns = taps * c_out * c_in * out_pixels + SAMPLE_COST * taps * c_in * out_pixels
    project = taps * c_out * c_in * in_pixels + SAMPLE_COST * taps * c_out * out_pixels
    return taps * c_out <= c_in and project < columns


def projects(weight_shape: Sequence[int], in_size: Sequence[int], out_size: Sequence[int]) -> bool:
    """:func:`project_first` for a weight ``[C_out, C_in, kh, kw]``, an input of ``(H, W)`` and an
    output of ``(H_out, W_out)``: what the forward and its backward both decide from the shapes."""
    c_out, c_in, kh, kw = weight_shape
    return project_first(c_in, c_out, kh * kw, in_size[0] * in_size[1], out_size[0] * out_size[1])


def row_chunks(rows: int, bytes_per_row: int, budget: int) -> list[tuple[int, int]]:
    """``[(p0, p1), ...]`` covering ``range(rows)`` in as few chunks as ``budget`` bytes allow, of even sizes."""
    step = max(1, budget // max(1, bytes_per_row))
    count = -(-rows // step)
    bounds = [rows * k // count for k in range(count + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def chunk_buffer(chunks: list[tuple[int, int]], w_out: int, channels: int, like: Tensor) -> Tensor:
    """``[rows * W_out, channels]`` for the largest chunk: one buffer reused chunk after chunk."""
    rows = max(p1 - p0 for p0, p1 in chunks)
    return like.new_empty(rows * w_out, channels)


def stack(items: list[Tensor], empty_shape: tuple[int, ...], like: Tensor) -> Tensor:
    """``torch.stack(items)`` without a copy for one item, and of shape ``empty_shape`` for none."""
    if not items:
        return like.new_empty(empty_shape)
    return items[0][None] if len(items) == 1 else torch.stack(items)


def column_weight(weight: Tensor, kernels: Kernels) -> Tensor:
    """``[C_out, kh*kw*C_in]``, matching sampled columns laid out tap-major, channel-minor."""
    c_out, c_in, kh, kw = weight.shape
    return transpose(weight.reshape(c_out, c_in, kh * kw), kernels=kernels).view(c_out, kh * kw * c_in)


def projection_weight(weight: Tensor, kernels: Kernels) -> Tensor:
    """``[kh*kw*C_out, C_in]``: a 1x1 convolution producing every tap's projection at once."""
    c_out, c_in, kh, kw = weight.shape
    return transpose(weight.reshape(1, c_out * c_in, kh * kw), kernels=kernels).view(kh * kw * c_out, c_in)
