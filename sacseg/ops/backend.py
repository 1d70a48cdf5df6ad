"""Which sampling kernels the operator runs: a process-wide setting, read by each kernel when it runs."""

from __future__ import annotations

import contextlib
import typing
from collections.abc import Iterator
from typing import Literal

from torch import Tensor

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


def kernels_for(input: Tensor) -> Kernels:
    """The sampling kernels for an operator call on ``input`` (see :mod:`sacseg.ops.sampling`)."""
    if _setting == "torch":
        return "torch"
    if input.is_cuda:
        return "triton" if load_triton() is not None else "torch"
    return "native"
