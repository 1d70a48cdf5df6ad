"""The Triton kernels' self-check: before they first serve the operator on a device and dtype, they must agree with the torch path.

A Triton kernel that compiles wrongly for a GPU, or a Triton release that changes a behaviour the
kernels rely on, would otherwise give wrong gradients silently. The check runs the fast path's
forward and backward on a small problem (both GEMM orders, taps outside the input, a
non-contiguous input) with the Triton kernels and with the torch ops, once per device and dtype in
a process (a few milliseconds on a GPU). On a mismatch beyond the dtype's tolerance, or an error,
it warns once and the operator samples with torch ops on that device from then on.
``SACSEG_CUDA_SELFCHECK=0`` skips it; :func:`cuda_status` reports what it found.

The check synchronizes with the device (it compares numbers): it runs in the first eager call of the
operator on a device and dtype, so a CUDA graph should be captured after one eager step.
"""

from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor

import sacseg.ops._backward as _backward
import sacseg.ops._forward as _forward
from sacseg.ops.sampling import load_triton, position_dtype

__all__ = ["CudaStatus", "cuda_status", "run_selfcheck", "triton_passed"]

#: Results by ``"<device> (<name>) <dtype>"``: ``"passed"``, ``"skipped (...)"`` or ``"failed: ..."``.
_results: dict[str, str] = {}
#: Devices whose Triton kernels failed, with the failure: the torch ops sample there.
_failed_devices: dict[torch.device, str] = {}
_lock = threading.Lock()


def _enabled() -> bool:
    return os.environ.get("SACSEG_CUDA_SELFCHECK", "1") != "0"


def _device_label(device: torch.device, dtype: torch.dtype) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return f"{device} ({name}) {dtype}"


def _tolerance(dtype: torch.dtype) -> float:
    """Largest error relative to the largest entry: summation order only, both paths blending in
    float32 (float64) and rounding once into ``dtype``."""
    return {torch.float64: 1e-10, torch.float32: 1e-4}.get(dtype, 8 * torch.finfo(dtype).eps)


def _problem(device: torch.device, dtype: torch.dtype) -> tuple[Tensor, ...]:
    """``(input, scale, weight, bias, grad_out)`` of a 2 x 6 -> 3 channel, 3x3, dilation 2 layer on
    7 x 9 images: scales up to 2.5 send taps outside the input, which is a channels-last view."""
    g = torch.Generator().manual_seed(0)

    def draw(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g).to(device, dtype)

    input = draw(2, 7, 9, 6).permute(0, 3, 1, 2)
    weight, bias, grad_out = draw(3, 6, 3, 3) / 7, draw(3), draw(2, 3, 7, 9)
    scale = (torch.rand(2, 1, 7, 9, generator=g) * 2 + 0.5).to(device, position_dtype(dtype))
    return input, scale, weight, bias, grad_out


def run_selfcheck(device: torch.device, dtype: torch.dtype) -> str | None:
    """Compares the fast path's output and gradients with Triton sampling against torch sampling on
    ``device`` (CUDA; the tests pass a CPU device with Triton's interpreter). ``None`` if they agree,
    else what differs or the error raised."""
    input, scale, weight, bias, grad_out = _problem(device, dtype)
    geometry = ([1, 1], [2, 2], [2, 2])
    names = ("output", "input's gradient", "scale's gradient", "weight's gradient", "bias's gradient")
    for project in (False, True):
        results = []
        try:
            for kernels in ("triton", "torch"):
                out, tables = _forward.forward(input, scale, weight, bias, *geometry, project=project, kernels=kernels)
                grads = _backward.backward(
                    grad_out, input, scale, weight, tables, [7, 9], *geometry, [True] * 4, project=project, kernels=kernels
                )
                results.append((out, *grads))
        except Exception as error:  # any failure of the kernels disqualifies them
            return f"{type(error).__name__}: {error}"
        order = "multiplying first" if project else "sampling first"
        for name, got, expected in zip(names, *results):
            assert got is not None and expected is not None  # every gradient was asked for
            bound = _tolerance(dtype) * float(expected.abs().max())
            error_ = float((got.double() - expected.double()).abs().max())
            if not error_ <= bound:  # NaN fails too
                return f"{name} ({order}) differs from the torch path by {error_:.3g} (tolerance {bound:.3g})"
    return None


def triton_passed(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the Triton kernels may sample on ``device`` for ``dtype`` data: the self-check is run
    the first time (unless ``SACSEG_CUDA_SELFCHECK=0``) and a failure, warned about once, rules the
    device out for every dtype."""
    label = _device_label(device, dtype)
    with _lock:
        if device in _failed_devices:
            return False
        if label in _results:
            return True
        if not _enabled():
            _results[label] = "skipped (SACSEG_CUDA_SELFCHECK=0)"
            return True
        problem = run_selfcheck(device, dtype)
        _results[label] = "passed" if problem is None else f"failed: {problem}"
        if problem is None:
            return True
        _failed_devices[device] = problem
    warnings.warn(
        f"sacseg: the Triton kernels failed their self-check on {label}: {problem}. The SAC operator "
        f"samples with torch ops on {device} from now on (slower; SACSEG_CUDA_SELFCHECK=0 skips the check)",
        RuntimeWarning,
        stacklevel=2,
    )
    return False


@dataclass(frozen=True)
class CudaStatus:
    """What the CUDA path runs: Triton's version (``None`` if it does not import), how many CUDA
    devices torch sees, whether the self-check is on, and its results by device and dtype."""

    triton: str | None
    cuda_devices: int
    selfcheck: bool
    results: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [
            f"triton: {self.triton or 'not installed (the SAC operator samples with torch ops on CUDA)'}",
            f"CUDA devices: {self.cuda_devices}",
            f"CUDA self-check: {'on' if self.selfcheck else 'off (SACSEG_CUDA_SELFCHECK=0)'}",
        ]
        lines += [f"  {label}: {result}" for label, result in self.results.items()] or ["  (none run in this process)"]
        return "\n".join(lines)


def cuda_status(check: bool = False) -> CudaStatus:
    """The CUDA path's state in this process; with ``check``, the self-check is first run for
    float32 and bfloat16 on every visible CUDA device where it has not run yet (needs Triton)."""
    kernels, devices = load_triton(), torch.cuda.device_count()
    if check and kernels is not None:
        for index in range(devices):
            for dtype in (torch.float32, torch.bfloat16):
                triton_passed(torch.device("cuda", index), dtype)
    version = None if kernels is None else str(kernels.triton.__version__)
    return CudaStatus(version, devices, _enabled(), dict(_results))
