"""The private PyTorch APIs the operator uses, each behind a guard with a public fallback: the one module that touches them."""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch
from torch import Tensor

# oneDNN's matmul, the kernels F.conv2d runs on, is reachable only through this private op; a
# torch built without oneDNN, or one that renamed it, gets the public matmul.
_ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def linear(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b.T``, ``[M, K] x [N, K] -> [M, N]``.

    On CPU float32 this is oneDNN's matmul, faster than MKL's sgemm at the fast path's shapes
    (benchmarks/DESIGN_MEASUREMENTS.md).
    """
    if _ONEDNN_LINEAR and a.device.type == "cpu" and a.dtype == torch.float32 and a.numel() > 0 and b.numel() > 0:
        if not (b.is_contiguous() or b.t().is_contiguous()):
            # A strided view (e.g. of an input sliced in height) sends oneDNN to a reference kernel
            # that is orders of magnitude slower; a transposed contiguous one is read as it is.
            b = b.contiguous()
        return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
    return a @ b.t()


def below_autograd() -> AbstractContextManager[None] | None:
    """A guard under which an operator dispatches below its autograd kernel (as an autograd kernel
    redispatches), or ``None`` on a torch without it."""
    guard = getattr(torch._C, "_AutoDispatchBelowAutograd", None)
    return None if guard is None else guard()


def assert_on_device(condition: Tensor, message: str) -> None:
    """Fails with ``message`` unless the one-element ``condition`` holds, without a host sync on
    CUDA: a device-side assert, whose error surfaces at the next synchronizing call. On CPU it
    raises ``RuntimeError`` here. The overload with a message is missing from some torch builds."""
    with_message = getattr(torch.ops.aten._assert_async, "msg", None)
    if with_message is None:
        torch._assert_async(condition)
    else:
        with_message(condition, message)
