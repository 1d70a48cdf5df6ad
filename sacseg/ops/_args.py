"""The operator's checked arguments, :class:`SacArgs`: what every implementation of ``sac_conv2d`` takes."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

from sacseg.ops._geometry import sac_output_size
from sacseg.utils.pair import IntOrPair, pair


class SacArgs(NamedTuple):
    """The arguments of :func:`~sacseg.ops.sac_conv2d` as :func:`check_args` passed them.

    Attributes:
        input: ``[N, C_in, H, W]``.
        scale: ``[N, 1, H_out, W_out]``, ``(H_out, W_out)`` the output size of ``F.conv2d`` with
            the same stride, padding and dilation.
        weight: ``[C_out, C_in, kh, kw]``, odd ``kh`` and ``kw``.
        bias: ``[C_out]`` or ``None``.
        stride, padding, dilation: ``(h, w)``.
    """

    input: Tensor
    scale: Tensor
    weight: Tensor
    bias: Tensor | None
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]


def check_args(
    input: Tensor,
    scale: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: IntOrPair,
    padding: IntOrPair,
    dilation: IntOrPair,
    one_dtype: bool = True,
) -> SacArgs:
    """:func:`~sacseg.ops.sac_conv2d`'s arguments checked, the geometry as ``(h, w)`` pairs.

    ``one_dtype=False`` lets the tensors' dtypes differ, as autocast may hand them over.

    Raises:
        ValueError: for a shape or geometry that :func:`~sacseg.ops.sac_conv2d` does not take.
        RuntimeError: for tensors on several devices, of several dtypes, or not floating-point.
    """
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
    return SacArgs(input, scale, weight, bias, stride_, padding_, dilation_)
