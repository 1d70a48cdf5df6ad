"""The scale-adaptive convolution operator (Zhang et al., ICCV 2017, section 3.3): its functional form and argument checks."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Literal

import torch
from torch import Tensor

from sacseg.ops._args import SacArgs, check_args
from sacseg.ops._geometry import sac_output_size
from sacseg.ops._library import sac_conv2d_op
from sacseg.ops._reference import sac_reference
from sacseg.utils.pair import IntOrPair

__all__ = ["SAC_IMPLEMENTATIONS", "sac_conv2d", "sac_output_size"]


#: An implementation: the checked arguments to the output ``[N, C_out, H_out, W_out]``.
SacImpl = Callable[[SacArgs], Tensor]
#: Implementations by name; ``"auto"`` in :func:`sac_conv2d` picks the fastest for the call.
SAC_IMPLEMENTATIONS: dict[str, SacImpl] = {"reference": sac_reference, "fast": sac_conv2d_op}
#: What ``impl="auto"`` records while an ONNX graph is made: standard operators only.
#: :func:`sacseg.export.sac_lowering.onnx_lowering` sets it for an export; otherwise the reference.
ONNX_IMPL: ContextVar[SacImpl] = ContextVar("sacseg_onnx_impl", default=sac_reference)


def _exporting_onnx() -> bool:
    """Whether an ONNX export (by either exporter) or the torch.jit.trace under the legacy one runs."""
    return torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()


def _choose_impl() -> SacImpl:
    # An ONNX graph may hold default-domain operators only: ONNX_IMPL is made of them.
    # torch.compile and torch.export keep the fast path's operator.
    if _exporting_onnx():
        return ONNX_IMPL.get()
    # The fast path wins at every measured shape (benchmarks/bench_sac_conv.py); where it has no
    # compiled kernels it samples with torch ops itself.
    return sac_conv2d_op


def sac_conv2d(
    input: Tensor,
    scale: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
    *,
    impl: Literal["auto", "reference", "fast"] | str = "auto",
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
            :data:`ONNX_IMPL` during ONNX export and ``torch.jit.trace``: the reference unless
            :func:`sacseg.export.sac_lowering.onnx_lowering` says otherwise) or a key of
            :data:`SAC_IMPLEMENTATIONS`: ``"reference"`` is the direct transcription of the paper
            (autograd through the whole sampled tensor, standard ops only); ``"fast"`` is the
            operator ``torch.ops.sacseg.sac_conv2d`` (:mod:`sacseg.ops._library`), a chunked
            sampled im2col + GEMM with a hand-written backward, whose bilinear sampling runs in
            the kernels that :func:`sacseg.ops.set_sampling_backend` selects: by default C++ on
            CPU (compiled on first use and cached), Triton on CUDA, torch ops elsewhere.

    Raises:
        ValueError: if ``scale`` holds NaN or Inf (it names how many), with every ``impl``, also
            in compiled and exported programs (the operator checks when it runs). On CUDA the
            check is a device-side assert instead, which needs no host sync: the error surfaces
            at the next synchronizing call and leaves the CUDA context unusable, as torch's own
            device-side asserts do. A graph made of the reference's ops cannot check: an ONNX
            graph, and ``impl="reference"`` under ``torch.compile``/``torch.export``, give
            undefined outputs for such a scale.

    Returns:
        ``[N, C_out, H_out, W_out]``. Half-precision inputs give half-precision outputs, with
        positions and bilinear weights in float32 (see ``sacseg.ops.sampling.position_dtype``).
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
    # casts them; an implementation recorded op by op is cast to float32 here.
    autocast = torch.is_autocast_enabled(device_type)
    args = check_args(input, scale, weight, bias, stride, padding, dilation, one_dtype=not autocast)
    if autocast and fn is not sac_conv2d_op:
        dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
        bias = None if bias is None else bias.to(dtype)
        args = args._replace(input=input.to(dtype), scale=scale.to(dtype), weight=weight.to(dtype), bias=bias)
        with torch.autocast(device_type, enabled=False):
            return fn(args)
    return fn(args)
