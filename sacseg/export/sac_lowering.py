"""How ``sac_conv2d`` becomes standard ONNX operators: bilinear ``GridSample`` in the fast path's order of GEMM and sampling, or the reference's gathers."""

from __future__ import annotations

import contextlib
import typing
from collections.abc import Iterator
from typing import Literal

import torch
from torch import Tensor
from torch.nn import functional as F

from sacseg.ops._args import SacArgs
from sacseg.ops._geometry import sample_positions
from sacseg.ops._plan import project_first
from sacseg.ops._reference import sac_reference
from sacseg.ops.sac_conv import ONNX_IMPL, SacImpl

__all__ = ["SAC_LOWERINGS", "SacLowering", "multiplies_first", "onnx_lowering", "sac_grid_sample"]

#: ``"grid_sample"``: :func:`sac_grid_sample`. ``"gather"``: the reference (``floor``, four
#: ``Gather`` per tap, arithmetic and a ``MatMul`` over the materialised columns), several times slower.
SacLowering = Literal["grid_sample", "gather"]
SAC_LOWERINGS: tuple[str, ...] = typing.get_args(SacLowering)


def multiplies_first(weight_shape: tuple[int, ...], stride: tuple[int, int]) -> bool:
    """Whether the graph multiplies before sampling, by the fast path's cost model
    (:func:`sacseg.ops._plan.project_first`) on the static channel counts of ``weight_shape``
    ``[C_out, C_in, kh, kw]``.

    The fast path also weighs the pixel counts of the call; a graph with dynamic sizes has none, so
    the counts per output pixel stand in: ``stride_h * stride_w`` input pixels to one output pixel,
    exactly the fast path's ratio for a convolution that keeps the size (every SAC layer of the
    paper's models) and its ratio up to the border otherwise.
    """
    c_out, c_in, kh, kw = weight_shape
    return project_first(c_in, c_out, kh * kw, stride[0] * stride[1], 1)


def sac_grid_sample(
    input: Tensor,
    scale: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> Tensor:
    """Equations (7)-(9) with ``F.grid_sample`` (ONNX ``GridSample``, opset 16) for the bilinear sampling.

    Sampling first: one ``GridSample`` of the ``C_in`` channels at every tap of every output pixel
    (the taps stacked along the grid's rows), then a 1x1 ``Conv`` of the ``C_in*kh*kw`` sampled
    channels. Where :func:`multiplies_first`: a 1x1 ``Conv`` to the taps' ``kh*kw*C_out``
    projections first, then one ``GridSample`` of them (the taps as a batch) and a ``ReduceSum``
    over the taps. 1x1 convolutions rather than ``MatMul``: onnxruntime runs them faster.

    The grid is normalised for ``align_corners=False``: a position ``x`` in input pixels becomes
    ``(2x + 1) / W - 1``, which ``GridSample`` maps back to ``((g + 1) W - 1) / 2 = x`` for every
    ``W >= 1`` (``align_corners=True`` divides by ``W - 1``: nothing for a size-1 map, and
    onnxruntime's fast bilinear kernel takes ``align_corners=False`` only). The round trip is exact
    up to float32 rounding of the normalised value (relative ``2**-24``: ``W * 2**-24`` pixels), so
    an integer position may land a rounding away from its pixel. With ``padding_mode="zeros"`` the
    samples outside the input are zero, as in eq. (8).

    Args:
        input: ``[N, C_in, H, W]``; scale ``[N, 1, H_out, W_out]``; weight ``[C_out, C_in, kh, kw]``;
            bias ``[C_out]`` or ``None``: :func:`~sacseg.ops.sac_conv2d`'s checked arguments.

    Returns:
        ``[N, C_out, H_out, W_out]``. Unlike the reference, a NaN or Inf in ``input`` also reaches
        outputs whose taps give it a zero weight, those with a tap within one pixel of it:
        ``GridSample`` multiplies all four corners by their weights, and the rounding above may put
        an integer position on either side of its pixel.
    """
    return _grid_sample(SacArgs(input, scale, weight, bias, stride, padding, dilation))


def _grid_sample(args: SacArgs) -> Tensor:
    """:func:`sac_grid_sample` of the checked arguments: the implementation that :func:`onnx_lowering` selects."""
    input, scale, weight, bias, stride, padding, dilation = args
    n, c_in, h, w = input.shape
    c_out, _, kh, kw = weight.shape
    taps = kh * kw
    y, x = sample_positions(scale, (kh, kw), stride, padding, dilation)  # [N, kh, kw, H_out, W_out] each
    h_out, w_out = y.shape[-2:]
    grid = torch.stack(((2 * x + 1) / w - 1, (2 * y + 1) / h - 1), dim=-1).to(input.dtype)  # [N, kh, kw, H_out, W_out, 2]
    # Weights sliced and concatenated rather than reshaped: the TorchScript exporter needs a
    # convolution's kernel shape while it converts, and a reshape to traced sizes hides it.
    if multiplies_first(tuple(weight.shape), stride):
        taps_weight = torch.cat([weight[:, :, a : a + 1, b : b + 1] for a in range(kh) for b in range(kw)])
        projections = F.conv2d(input, taps_weight).reshape(n * taps, c_out, h, w)
        sampled = F.grid_sample(projections, grid.reshape(n * taps, h_out, w_out, 2), align_corners=False)
        out = sampled.reshape(n, taps, c_out, h_out, w_out).sum(1)
        return out if bias is None else out + bias.reshape(1, c_out, 1, 1)
    sampled = F.grid_sample(input, grid.reshape(n, taps * h_out, w_out, 2), align_corners=False)
    return F.conv2d(sampled.reshape(n, c_in * taps, h_out, w_out), weight.flatten(1)[:, :, None, None], bias)


_LOWERINGS: dict[str, SacImpl] = {"grid_sample": _grid_sample, "gather": sac_reference}


@contextlib.contextmanager
def onnx_lowering(name: SacLowering = "grid_sample") -> Iterator[None]:
    """Within the block (in this thread or task), ONNX exports record ``sac_conv2d`` as ``name``.

    :func:`~sacseg.export.onnx_export.export_onnx` enters it; wrap a direct ``torch.onnx.export``
    call in it to get the same graph (outside it, an export records the ``"gather"`` graph).
    """
    if name not in _LOWERINGS:
        raise ValueError(f"unknown sac_lowering {name!r}; valid: " + ", ".join(repr(k) for k in SAC_LOWERINGS))
    token = ONNX_IMPL.set(_LOWERINGS[name])
    try:
        yield
    finally:
        ONNX_IMPL.reset(token)
