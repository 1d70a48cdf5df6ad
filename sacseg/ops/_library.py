"""The fast path's registration with ``torch.library``: the public operator, its autograd and autocast rules, and the private operators below them.

``sacseg::sac_conv2d(Tensor input, Tensor scale, Tensor weight, Tensor? bias, int[2] stride,
int[2] padding, int[2] dilation) -> Tensor`` takes what ``F.conv2d`` takes: ``torch.compile`` and
``torch.export`` keep it as one node (its fake kernel gives the output's shape), and nothing in a
graph freezes how it runs. Its kernels decide that when they run: multiplying or sampling first
from the shapes (:func:`sacseg.ops._plan.projects`), the sampling kernels from
:mod:`sacseg.ops.backend`'s setting.

Below it, as torchvision does for ``deform_conv2d``, its autograd kernel calls two private
operators: ``sacseg::_sac_conv2d_forward -> (out, tables)`` and ``sacseg::_sac_conv2d_backward``.
The tables (the channels-last input, or its projection when multiplying first) are saved for the
backward, which would otherwise redo the copy or the projection's GEMM.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

import sacseg.ops._backward as _backward
import sacseg.ops._forward as _forward
import sacseg.ops._plan as _plan
import sacseg.ops.backend as backend
from sacseg.ops._args import SacArgs
from sacseg.ops._compat import below_autograd

_SCHEMA = (
    "sac_conv2d(Tensor input, Tensor scale, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, int[2] dilation)"
    " -> Tensor"
)

_LIBRARY = torch.library.Library("sacseg", "FRAGMENT")  # lives as long as the module
_LIBRARY.define(_SCHEMA)


def _projects(input: Tensor, weight: Tensor, scale: Tensor) -> bool:
    return _plan.projects(weight.shape, input.shape[2:], scale.shape[2:])


@torch.library.custom_op("sacseg::_sac_conv2d_forward", mutates_args=())
def _forward_op(
    input: Tensor,
    scale: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
) -> tuple[Tensor, Tensor]:
    """``(out [N, C_out, H_out, W_out], tables)``: :func:`sacseg.ops._forward.forward`."""
    backend.refuse_non_finite(scale)
    kernels = backend.kernels_for(input)
    project = _projects(input, weight, scale)
    return _forward.forward(input, scale, weight, bias, stride, padding, dilation, project=project, kernels=kernels)


@_forward_op.register_fake
def _(input, scale, weight, bias, stride, padding, dilation):  # type: ignore[no-untyped-def]
    n, c_in, h, w = input.shape
    c_out, _, kh, kw = weight.shape
    tables = input.new_empty(n, h * w * kh * kw, c_out) if _projects(input, weight, scale) else input.new_empty(n, h * w, c_in)
    return input.new_empty(n, c_out, scale.shape[2], scale.shape[3]), tables


@torch.library.custom_op("sacseg::_sac_conv2d_backward", mutates_args=())
def _backward_op(
    grad_out: Tensor,
    input: Tensor | None,
    scale: Tensor,
    weight: Tensor,
    tables: Tensor,
    size: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    output_mask: list[bool],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The gradients of (input, scale, weight, bias) that ``output_mask`` asks for, the others
    empty (:func:`sacseg.ops._backward.backward`). ``input`` is needed when multiplying first only."""
    project = _plan.projects(weight.shape, size, scale.shape[2:])
    if project and input is None:
        raise ValueError("sacseg::_sac_conv2d_backward needs the input when the forward multiplied first")
    kernels = backend.kernels_for(tables)
    grads = _backward.backward(
        grad_out, input, scale, weight, tables, size, stride, padding, dilation, output_mask, project=project, kernels=kernels
    )
    return tuple(grad_out.new_empty(0) if g is None else g for g in grads)  # type: ignore[return-value]


@_backward_op.register_fake
def _(grad_out, input, scale, weight, tables, size, stride, padding, dilation, output_mask):  # type: ignore[no-untyped-def]
    shapes = ((tables.shape[0], weight.shape[1], *size), scale.shape, weight.shape, (weight.shape[0],))
    dtypes = (tables.dtype, scale.dtype, weight.dtype, grad_out.dtype)
    return tuple(
        grad_out.new_empty(shape if wanted else (0,), dtype=dtype if wanted else grad_out.dtype)
        for shape, dtype, wanted in zip(shapes, dtypes, output_mask)
    )


def _no_double_backward(ctx: Any, *grads: Tensor) -> tuple[None, ...]:
    raise RuntimeError("sacseg::sac_conv2d is differentiable once: its backward is hand-written and has no derivative")


# Gradients made with create_graph=True carry this, so that a second derivative raises instead of
# silently leaving the operator out.
_backward_op.register_autograd(_no_double_backward, setup_context=lambda ctx, inputs, output: None)


class _SacConv2d(torch.autograd.Function):
    """The public operator's autograd kernel: the private forward, its tables saved for the private backward."""

    @staticmethod
    def forward(
        ctx: Any, input: Tensor, scale: Tensor, weight: Tensor, bias: Tensor | None, *geometry: list[int]
    ) -> tuple[Tensor, Tensor]:
        """``geometry`` is ``(stride, padding, dilation)``, as the operator's other kernels take it."""
        out, tables = torch.ops.sacseg._sac_conv2d_forward(input, scale, weight, bias, *geometry)
        ctx.geometry = (list(input.shape[2:]), *geometry)
        ctx.set_materialize_grads(False)
        # Only multiplying first needs the input itself again (for the weight's gradient). The
        # tables are an output, so that a second derivative through them reaches
        # _no_double_backward and raises; nothing else uses them and no gradient is made for them.
        ctx.save_for_backward(input if _projects(input, weight, scale) else None, scale, weight, tables)
        return out, tables

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor | None, _grad_tables: Tensor | None) -> tuple[Tensor | None, ...]:
        if grad_out is None:  # an undefined gradient (autograd's check_undefined_grad)
            return (None,) * 7
        input, scale, weight, tables = ctx.saved_tensors
        mask = list(ctx.needs_input_grad[:4])
        grads = torch.ops.sacseg._sac_conv2d_backward(grad_out, input, scale, weight, tables, *ctx.geometry, mask)
        return (*(g if wanted else None for g, wanted in zip(grads, mask)), None, None, None)


def _autograd_kernel(input: Tensor, scale: Tensor, weight: Tensor, bias: Tensor | None, *geometry: list[int]) -> Tensor:
    """With a gradient to make, :class:`_SacConv2d`; otherwise the operator itself below autograd,
    so that an inference graph (``torch.export``'s ``run_decompositions``, ``torch.compile`` under
    ``no_grad``) keeps the public operator rather than the private forward."""
    tensors = (input, scale, weight) if bias is None else (input, scale, weight, bias)
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)):
        guard = below_autograd()
        if guard is not None:
            with guard:
                return torch.ops.sacseg.sac_conv2d.default(input, scale, weight, bias, *geometry)
    return _SacConv2d.apply(input, scale, weight, bias, *geometry)[0]


def _device_kernel(input: Tensor, scale: Tensor, weight: Tensor, bias: Tensor | None, *geometry: list[int]) -> Tensor:
    """Below autograd (e.g. under ``torch.no_grad``): the private forward, tables dropped."""
    return torch.ops.sacseg._sac_conv2d_forward(input, scale, weight, bias, *geometry)[0]


def _fake_kernel(input: Tensor, scale: Tensor, weight: Tensor, bias: Tensor | None, *geometry: list[int]) -> Tensor:
    return input.new_empty(input.shape[0], weight.shape[0], scale.shape[2], scale.shape[3])


def _autocast_kernel(device_type: str) -> Any:
    """Under autocast, CPU runs the operator in float32 (its GEMMs gain nothing in half precision
    there); other devices run the data (and GEMMs) in the autocast dtype. The scale stays float32
    everywhere, so positions, bilinear weights and the scale's gradient keep their precision.
    Float64 tensors and tensors of other devices are left as they are."""

    def cast(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
        return t if t is None or t.dtype == torch.float64 or t.device.type != device_type else t.to(dtype)

    def kernel(input: Tensor, scale: Tensor, weight: Tensor, bias: Tensor | None, *geometry: list[int]) -> Tensor:
        data = torch.float32 if device_type == "cpu" else torch.get_autocast_dtype(device_type)
        # Autocast off excludes its dispatch key: the call goes on to autograd.
        with torch.autocast(device_type, enabled=False):
            return torch.ops.sacseg.sac_conv2d.default(
                cast(input, data), cast(scale, torch.float32), cast(weight, data), cast(bias, data), *geometry
            )

    return kernel


_LIBRARY.impl("sac_conv2d", _autograd_kernel, "Autograd")
for _key in ("CPU", "CUDA"):
    _LIBRARY.impl("sac_conv2d", _device_kernel, _key)
for _device_type, _key in (("cpu", "AutocastCPU"), ("cuda", "AutocastCUDA")):
    _LIBRARY.impl("sac_conv2d", _autocast_kernel(_device_type), _key)
torch.library.register_fake("sacseg::sac_conv2d", _fake_kernel, lib=_LIBRARY)


def sac_conv2d_op(args: SacArgs) -> Tensor:
    """``torch.ops.sacseg.sac_conv2d``, the fast path, for :func:`~sacseg.ops.sac_conv2d`'s checked arguments.

    Returns:
        ``[N, C_out, H_out, W_out]``.
    """
    input, scale, weight, bias, stride, padding, dilation = args
    return torch.ops.sacseg.sac_conv2d(input, scale, weight, bias, list(stride), list(padding), list(dilation))
