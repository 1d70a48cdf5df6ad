"""The compiled CPU kernels (``_sac_kernels.cpp``): their compiler driver and ctypes binding; CPU float32 and float64 only."""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor

from sacseg.ops.sampling.common import Grid
from sacseg.utils.cache import cache_dir

_SOURCE = Path(__file__).with_name("_sac_kernels.cpp")
_FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17")
_library: ctypes.CDLL | None = None
_library_tried = False


def _cpu_signature() -> str:
    # -march=native code must not be reused on another CPU sharing the cache directory.
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return platform.machine() + flags


def _build(compiler: str) -> Path:
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(source + compiler.encode() + " ".join(_FLAGS).encode() + _cpu_signature().encode())
    target = cache_dir() / f"sac_kernels_{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([compiler, *_FLAGS, str(_SOURCE), "-o", tmp], check=True, capture_output=True, text=True)
        os.replace(tmp, target)  # atomic: a concurrent build or reader never sees half a library
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


def native_library() -> ctypes.CDLL | None:
    """The compiled CPU kernels, built once into the cache directory; ``None`` without a compiler.

    ``SACSEG_NO_NATIVE=1`` disables them. The cache is ``$SACSEG_CACHE`` or ``~/.cache/sacseg``.
    """
    global _library, _library_tried
    if _library_tried:
        return _library
    _library_tried = True
    if os.environ.get("SACSEG_NO_NATIVE") == "1":
        return None
    compiler = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    if compiler is None:
        warnings.warn("sacseg: no C++ compiler found, the fast SAC path uses pure torch ops on CPU", stacklevel=2)
        return None
    try:
        lib = ctypes.CDLL(str(_build(compiler)))
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        warnings.warn(f"sacseg: could not build {_SOURCE.name} ({detail.strip()[:500]}); using pure torch ops", stacklevel=2)
        return None
    i64, ptr, cint = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    for suffix in ("f32", "f64"):
        getattr(lib, f"sac_sample_{suffix}").argtypes = [ptr, i64, i64, i64, i64, ptr, ptr, i64, i64, ptr, cint]
        getattr(lib, f"sac_sample_sum_taps_{suffix}").argtypes = [ptr, i64, i64, i64, i64, ptr, ptr, i64, ptr, cint]
        getattr(lib, f"sac_sample_backward_{suffix}").argtypes = [
            ptr,
            i64,
            i64,
            i64,
            i64,
            ptr,
            ptr,
            i64,
            i64,
            ptr,
            i64,
            ptr,
            ptr,
            ptr,
            cint,
        ]
        getattr(lib, f"sac_transpose_{suffix}").argtypes = [ptr, i64, i64, i64, ptr, cint]
    _library = lib
    return lib


def available(table: Tensor) -> ctypes.CDLL | None:
    """The library if its kernels can take ``table`` (a CPU float32 or float64 tensor), else ``None``."""
    if table.device.type != "cpu" or table.dtype not in (torch.float32, torch.float64):
        return None
    return native_library()


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def transpose(lib: ctypes.CDLL, src: Tensor, out: Tensor | None) -> Tensor:
    """:func:`sacseg.ops.sampling.transpose` by ``lib`` (from :func:`available`)."""
    b, r, c = src.shape
    src = src.contiguous()
    out = src.new_empty(b, c, r) if out is None else out
    fn = lib.sac_transpose_f32 if src.dtype == torch.float32 else lib.sac_transpose_f64
    fn(_ptr(src), b, r, c, _ptr(out), torch.get_num_threads())
    return out


def sample_rows(lib: ctypes.CDLL, grid: Grid, sum_taps: bool, run: int, out: Tensor | None) -> Tensor:
    """:func:`sacseg.ops.sampling.sample_rows` by ``lib`` (arguments checked there)."""
    table, h, w, taps, y, x = grid
    m, c = y.numel(), table.shape[1]
    table, y, x = table.contiguous(), y.contiguous(), x.contiguous()
    out = table.new_empty(m // taps if sum_taps else m, c) if out is None else out
    f32, args = table.dtype == torch.float32, (_ptr(table), h, w, c, taps, _ptr(y), _ptr(x), m)
    if sum_taps:
        (lib.sac_sample_sum_taps_f32 if f32 else lib.sac_sample_sum_taps_f64)(*args, _ptr(out), torch.get_num_threads())
    else:
        (lib.sac_sample_f32 if f32 else lib.sac_sample_f64)(*args, run, _ptr(out), torch.get_num_threads())
    return out


def sample_rows_backward(
    lib: ctypes.CDLL, grid: Grid, grad: Tensor, grad_table: Tensor | None, want_positions: bool, run: int
) -> tuple[Tensor, Tensor] | None:
    """:func:`sacseg.ops.sampling.sample_rows_backward` by ``lib`` (arguments checked there);
    ``grad_table`` must be contiguous."""
    table, h, w, taps, y, x = grid
    m, c = y.numel(), table.shape[1]
    if grad_table is not None and not grad_table.is_contiguous():
        raise ValueError("grad_table must be contiguous for the native kernel")
    share = m // grad.shape[0] if grad.shape[0] else 1
    table, y, x, grad = table.contiguous(), y.contiguous(), x.contiguous(), grad.contiguous()
    gy = table.new_empty(m) if want_positions else None
    gx = table.new_empty(m) if want_positions else None
    fn = lib.sac_sample_backward_f32 if table.dtype == torch.float32 else lib.sac_sample_backward_f64
    threads = torch.get_num_threads()
    fn(_ptr(table), h, w, c, taps, _ptr(y), _ptr(x), m, run, _ptr(grad), share, _ptr(grad_table), _ptr(gy), _ptr(gx), threads)
    return (gy, gx) if want_positions else None  # type: ignore[return-value]
