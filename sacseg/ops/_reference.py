"""The paper's equations (7)-(9) transcribed with standard torch ops; autograd derives (10)-(17)."""

from __future__ import annotations

import torch
from torch import Tensor

from sacseg.ops._args import SacArgs
from sacseg.ops._geometry import sample_positions
from sacseg.ops.backend import refuse_non_finite


def capturing() -> bool:
    """Whether a graph is being recorded (ONNX export by either exporter, torch.jit.trace,
    torch.compile, torch.export) rather than run."""
    return torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or torch.compiler.is_compiling()


def bilinear_gather(input: Tensor, y: Tensor, x: Tensor) -> Tensor:
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
    # constant-fold a [N, C, P] zero tensor into the file.
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


def sac_reference(args: SacArgs) -> Tensor:
    """Equations (7)-(9) as written, for :func:`~sacseg.ops.sac_conv2d`'s checked arguments.

    Returns:
        ``[N, C_out, H_out, W_out]``.
    """
    input, scale, weight, bias, stride, padding, dilation = args
    if not capturing():  # a recorded graph cannot raise on data: see sac_conv2d's docstring
        refuse_non_finite(scale)
    n, c_in = input.shape[:2]
    c_out, _, kh, kw = weight.shape
    y, x = sample_positions(scale, (kh, kw), stride, padding, dilation)
    h_out, w_out = y.shape[-2:]
    taps = kh * kw * h_out * w_out
    z = bilinear_gather(input, y.reshape(n, taps), x.reshape(n, taps))  # [N, C_in, kh*kw*H_out*W_out]
    columns = z.reshape(n, c_in * kh * kw, h_out * w_out)
    out = weight.reshape(c_out, c_in * kh * kw) @ columns
    if bias is not None:
        out = out + bias[:, None]
    return out.reshape(n, c_out, h_out, w_out)
