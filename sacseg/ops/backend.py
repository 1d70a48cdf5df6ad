"""The operator's per-call decisions that depend on the device: which sampling kernels run (a process-wide
setting, read by each kernel when it runs, and the CUDA self-check's verdict) and how a non-finite scale is refused."""

from __future__ import annotations

import contextlib
import typing
import warnings
from collections.abc import Iterator
from typing import Literal

import torch
from torch import Tensor

import sacseg.ops.selfcheck as selfcheck
from sacseg.ops._compat import assert_on_device
from sacseg.ops.sampling import Kernels, load_triton

__all__ = ["SAMPLING_BACKENDS", "SamplingBackend", "get_sampling_backend", "sampling_backend", "set_sampling_backend"]

#: ``"auto"``: the compiled kernels where they exist (C++ on CPU for float32/float64, built on first
#: use unless ``SACSEG_NO_NATIVE=1``; Triton on CUDA), torch ops elsewhere. ``"torch"``: torch ops only.
SamplingBackend = Literal["auto", "torch"]
SAMPLING_BACKENDS: tuple[str, ...] = typing.get_args(SamplingBackend)

_setting: SamplingBackend = "auto"


def set_sampling_backend(name: SamplingBackend) -> None:
    """Make ``name`` the sampling backend of every later call of the operator, in every thread.

    Each kernel reads the setting when it runs: a forward when it runs and a backward when it runs
    (as torch's own backend flags are read), also inside compiled and exported programs.
    """
    global _setting
    if name not in SAMPLING_BACKENDS:
        raise ValueError(f"unknown sampling backend {name!r}; valid: " + ", ".join(repr(b) for b in SAMPLING_BACKENDS))
    _setting = name


def get_sampling_backend() -> SamplingBackend:
    """The current setting (``"auto"`` unless changed)."""
    return _setting


@contextlib.contextmanager
def sampling_backend(name: SamplingBackend) -> Iterator[None]:
    """:func:`set_sampling_backend` for the ``with`` block, then the previous setting again.

    Run the backward inside the block too if it is to take the same backend.
    """
    previous = _setting
    set_sampling_backend(name)
    try:
        yield
    finally:
        set_sampling_backend(previous)


_warned_no_triton = False


def cuda_path(t: Tensor) -> bool:
    """Whether an operator call on ``t`` takes the CUDA path: Triton kernels after their self-check,
    no host synchronization. The tests force it on CPU tensors (Triton's interpreter runs there)."""
    return t.is_cuda


def kernels_for(input: Tensor) -> Kernels:
    """The sampling kernels for an operator call on ``input`` (see :mod:`sacseg.ops.sampling`):
    torch ops under the ``"torch"`` setting, on the CUDA path without Triton (warned once) or where
    the Triton kernels failed their self-check (:mod:`sacseg.ops.selfcheck`)."""
    global _warned_no_triton
    if _setting == "torch":
        return "torch"
    if not cuda_path(input):
        return "native"
    if load_triton() is None:
        if not _warned_no_triton:
            _warned_no_triton = True
            warnings.warn(
                "sacseg: Triton does not import, so the SAC operator samples with torch ops on CUDA (slower); "
                "install triton for its kernels",
                RuntimeWarning,
                stacklevel=2,
            )
        return "torch"
    return "triton" if selfcheck.triton_passed(input.device, input.dtype) else "torch"


def refuse_non_finite(scale: Tensor) -> None:
    """A NaN or Inf in a scale map leaves its taps without a position: refused, never a silent result.

    Off the CUDA path, a ``ValueError`` naming how many values and the shape (one host sync). On it,
    a device-side assert instead, which costs no sync: the error surfaces at the next call that
    synchronizes and, as with torch's own device-side asserts (an index out of range), the CUDA
    context is unusable after it.
    """
    message = f"scale of shape {tuple(scale.shape)} has non-finite values (NaN or Inf): every tap position must be finite"
    if cuda_path(scale):
        assert_on_device(torch.isfinite(scale).all(), message)
        return
    bad = int(scale.numel() - torch.isfinite(scale).sum())
    if bad:
        raise ValueError(
            f"scale has {bad} non-finite value(s) (NaN or Inf) among {scale.numel()} of shape "
            f"{tuple(scale.shape)}: every tap position must be finite"
        )
