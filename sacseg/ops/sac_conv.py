"""The scale-adaptive convolution operator (Zhang et al., ICCV 2017, section 3.3)."""

from __future__ import annotations

from typing import Callable, Literal

import torch
from torch import Tensor

__all__ = ["sac_conv2d", "sac_output_size", "SAC_IMPLEMENTATIONS"]

IntOrPair = int | tuple[int, int]


def _pair(value: IntOrPair, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")


def sac_output_size(
    in_size: tuple[int, int],
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[int, int]:
    """The ``(H_out, W_out)`` that ``F.conv2d`` gives for the same geometry."""
    return tuple(  # type: ignore[return-value]
        (size + 2 * p - d * (k - 1) - 1) // s + 1
        for size, k, s, p, d in zip(in_size, kernel_size, stride, padding, dilation)
    )


def _check_args(
    input: Tensor,
    scale: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: IntOrPair,
    padding: IntOrPair,
    dilation: IntOrPair,
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    stride_, padding_, dilation_ = _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
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
    if len(set(dtypes.values())) > 1:
        raise RuntimeError(f"all tensors must have one dtype, got {dtypes}")
    if not input.dtype.is_floating_point:
        raise RuntimeError(f"sac_conv2d needs floating-point tensors, got {input.dtype}")
    return stride_, padding_, dilation_


def sample_positions(
    scale: Tensor,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[Tensor, Tensor]:
    """Input coordinates of every tap, equation (7): ``centre + offset * dilation * scale``.

    Args:
        scale: ``[N, 1, H_out, W_out]``.

    Returns:
        ``(y, x)``, each ``[N, kh, kw, H_out, W_out]`` in input pixels (row, column), in
        ``scale``'s dtype. With ``scale == 1`` they are exact integers, the taps of ``F.conv2d``.
    """
    kh, kw = kernel_size
    _, _, h_out, w_out = scale.shape
    opts = {"dtype": scale.dtype, "device": scale.device}
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
        y, x: ``[N, P]`` positions in input pixels.

    Returns:
        ``[N, C, P]``. The corners are ``floor`` and ``floor + 1``, so the derivative in a
        position is eq. (14) and, at integer positions, its right-hand limit (as in
        spatial transformers, ``grid_sample`` and ``deform_conv2d``).
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
            index = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).long()
            values = flat.gather(2, index[:, None, :].expand(n, c, -1))
            corner = values * (wy * wx * inside)[:, None, :]
            out = corner if out is None else out + corner
    assert out is not None
    return out


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


SacImpl = Callable[
    [Tensor, Tensor, Tensor, "Tensor | None", tuple[int, int], tuple[int, int], tuple[int, int]], Tensor
]
#: Implementations by name; ``"auto"`` in :func:`sac_conv2d` picks the fastest for the call.
SAC_IMPLEMENTATIONS: dict[str, SacImpl] = {"reference": _sac_reference}


def _choose_impl(input: Tensor, weight: Tensor) -> SacImpl:
    # Graph capture (ONNX export by either exporter, torch.jit.trace, torch.compile and torch.export)
    # records the ops that run. The reference is made of standard ops only (floor, gather,
    # arithmetic, matmul): it exports with the default ONNX domain and inductor fuses it, where a
    # native kernel is opaque to all of them. Keep this check first.
    if torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return _sac_reference
    return _sac_reference


def sac_conv2d(
    input: Tensor,
    scale: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
    *,
    impl: Literal["auto", "reference"] | str = "auto",
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
        impl: ``"auto"`` (the fastest implementation for the call) or a key of
            :data:`SAC_IMPLEMENTATIONS` (``"reference"`` is the direct transcription of the paper).

    Returns:
        ``[N, C_out, H_out, W_out]``. Under autocast the operator runs in float32 (sample
        positions in half precision would blur the scale gradient) and returns float32.
    """
    device_type = input.device.type
    if torch.is_autocast_enabled(device_type):
        # Autocast may hand us a half input next to a float32 weight: compute in float32.
        dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type, enabled=False):
            return sac_conv2d(
                input.to(dtype),
                scale.to(dtype),
                weight.to(dtype),
                None if bias is None else bias.to(dtype),
                stride,
                padding,
                dilation,
                impl=impl,
            )
    stride_, padding_, dilation_ = _check_args(input, scale, weight, bias, stride, padding, dilation)
    if impl == "auto":
        fn = _choose_impl(input, weight)
    elif impl in SAC_IMPLEMENTATIONS:
        fn = SAC_IMPLEMENTATIONS[impl]
    else:
        raise ValueError(f"unknown impl {impl!r}; valid: 'auto', " + ", ".join(repr(k) for k in SAC_IMPLEMENTATIONS))
    return fn(input, scale, weight, bias, stride_, padding_, dilation_)
