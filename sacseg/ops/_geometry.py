"""Where SAC's taps read: the output grid and every tap's position in the input (equation (7))."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from sacseg.ops.sampling.common import position_dtype


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
        :func:`~sacseg.ops.sampling.position_dtype` of ``scale``'s dtype. With ``scale == 1``
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


def tap_positions(y: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`sample_positions`' ``(y, x)`` as every tap's position, ``[N, H_out * W_out * kh * kw]``
    each, tap fastest: output rows ``p0:p1`` of image ``i`` are the contiguous slice
    ``[i, rows_span(p0, p1, W_out, kh * kw)]``.

    Args:
        y, x: ``[N, kh, kw, H_out, W_out]`` each.
    """
    n, kh, kw, h_out, w_out = y.shape
    shape = (n, h_out * w_out * kh * kw)  # not -1: no image (N = 0) has no size to infer
    return y.permute(0, 3, 4, 1, 2).reshape(shape), x.permute(0, 3, 4, 1, 2).reshape(shape)


def rows_span(p0: int, p1: int, w_out: int, taps: int) -> slice:
    """Where output rows ``p0:p1`` sit along the last axis of :func:`tap_positions`' results."""
    return slice(p0 * w_out * taps, p1 * w_out * taps)
