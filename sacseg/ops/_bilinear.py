"""Bilinear row sampling of channels-last tables, its adjoint and NCHW <-> NHWC: torch ops and compiled CPU kernels."""

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
from types import ModuleType

import torch
from torch import Tensor

_SOURCE = Path(__file__).with_name("_sac_kernels.cpp")
_FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17")
_library: ctypes.CDLL | None = None
_library_tried = False


def _cache_dir() -> Path:
    root = os.environ.get("SACSEG_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "sacseg"
    )
    return Path(root)


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
    target = _cache_dir() / f"sac_kernels_{key.hexdigest()[:16]}.so"
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


def position_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of sample positions for a table of ``dtype``: float64 for float64, else float32.

    It is also the dtype of the bilinear weights and of accumulated sums. Half precision holds
    integers exactly only up to 256 (bfloat16) or 2048 (float16), and a position's fraction to a
    few bits, so positions never take the data's dtype; table rows are indexed in int64.
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_positions(table: Tensor, y: Tensor, x: Tensor) -> None:
    expected = position_dtype(table.dtype)
    if y.dtype != expected or x.dtype != expected or y.shape != x.shape:
        raise ValueError(
            f"positions must be two {expected} tensors of one shape for a {table.dtype} table, "
            f"got {y.dtype} {tuple(y.shape)} and {x.dtype} {tuple(x.shape)}"
        )


def _corners(y: Tensor, x: Tensor, h: int, w: int, taps: int) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Table rows (int64), bilinear weights (``y``'s dtype, zero outside) and inside masks of
    the four corners of each sample."""
    y0, x0 = torch.floor(y), torch.floor(x)
    fy, fx = y - y0, x - x0
    block = torch.arange(y.numel(), device=y.device) % taps if taps > 1 else 0
    rows, weights, insides = [], [], []
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            yi, xi = y0 + dy, x0 + dx
            inside = (yi >= 0) & (yi <= h - 1) & (xi >= 0) & (xi <= w - 1)
            pixel = yi.clamp(0, h - 1).long() * w + xi.clamp(0, w - 1).long()
            rows.append(pixel * taps + block)
            weights.append(wy * wx * inside)
            insides.append(inside)
    return rows, weights, insides


def _weighted(rows: Tensor, weight: Tensor) -> Tensor:
    """``rows * weight[:, None]`` in ``weight``'s dtype, exactly zero where the weight is.

    Masked, not just multiplied by a zero weight: a corner outside the image, or one a whole pixel
    away, must add nothing even where the table (or gradient) holds NaN or Inf, as in F.conv2d.
    """
    return (rows * weight[:, None]).masked_fill_((weight == 0)[:, None], 0)


def _use_native(table: Tensor) -> ctypes.CDLL | None:
    if table.device.type != "cpu" or table.dtype not in (torch.float32, torch.float64):
        return None
    return native_library()


def _use_triton(table: Tensor, native: bool) -> ModuleType | None:
    """The Triton kernels if they are to sample ``table`` (``native``, on CUDA, Triton present)."""
    if not (native and table.is_cuda):
        return None
    from sacseg.ops import _triton_kernels  # here, not at the top: it imports this module

    return _triton_kernels if _triton_kernels.available(table) else None


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _check_out(out: Tensor | None, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    if out is not None and (tuple(out.shape) != shape or not out.is_contiguous() or out.dtype != dtype):
        raise ValueError(f"out must be a contiguous {dtype} tensor of shape {list(shape)}, got {out.dtype} {tuple(out.shape)}")


def _check_runs(m: int, size: int) -> None:
    if size < 1 or m % size:
        raise ValueError(f"{m} samples do not split into runs of {size} taps")


def transpose(src: Tensor, *, native: bool = True, out: Tensor | None = None) -> Tensor:
    """``src`` ``[B, R, C]`` transposed into ``out`` or a new contiguous ``[B, C, R]`` (NCHW <-> NHWC, per image).

    The compiled kernel (CPU float32/float64) is faster than ``.transpose(1, 2).contiguous()`` (benchmarks/DESIGN_MEASUREMENTS.md).
    """
    b, r, c = src.shape
    _check_out(out, (b, c, r), src.dtype)
    lib = _use_native(src) if native else None
    if lib is None:
        # A copy even where the transpose is already contiguous (R or C of 1): never a view of src.
        return src.transpose(1, 2).clone(memory_format=torch.contiguous_format) if out is None else out.copy_(src.transpose(1, 2))
    src = src.contiguous()
    out = src.new_empty(b, c, r) if out is None else out
    fn = lib.sac_transpose_f32 if src.dtype == torch.float32 else lib.sac_transpose_f64
    fn(_ptr(src), b, r, c, _ptr(out), torch.get_num_threads())
    return out


def sample_rows(
    table: Tensor,
    h: int,
    w: int,
    taps: int,
    y: Tensor,
    x: Tensor,
    *,
    sum_taps: bool = False,
    run: int = 1,
    native: bool = True,
    out: Tensor | None = None,
) -> Tensor:
    """Bilinear samples of a channels-last table, zeros outside.

    Args:
        table: ``[h * w * taps, C]`` contiguous; with ``taps > 1`` pixel ``i`` owns rows
            ``i * taps .. i * taps + taps - 1`` and sample ``r`` reads row block ``r % taps``.
        y, x: ``[M]`` contiguous positions in pixels, in :func:`position_dtype` of the table's
            dtype (float32, or float64 for a float64 table).
        sum_taps: return the sum of each run of ``taps`` consecutive samples instead.
        run: the samples are runs of ``run`` taps of one output pixel, tap fastest. It changes
            nothing but the order in which the compiled kernel visits them (see its source).
        native: use the compiled CPU kernel when available, the Triton kernel on CUDA.
        out: a contiguous tensor of the result's shape to write into. Chunked callers pass one
            buffer for all chunks: a fresh multi-megabyte tensor per chunk costs a page fault per
            4 KiB on first touch, which can cost more than the sampling itself.

    Returns:
        ``[M, C]``, or ``[M / taps, C]`` with ``sum_taps`` (``out`` when given).
    """
    m, c = y.numel(), table.shape[1]
    _check_positions(table, y, x)
    if sum_taps:
        _check_runs(m, taps)
    _check_runs(m, run)
    shape = (m // taps if sum_taps else m, c)
    _check_out(out, shape, table.dtype)
    if (kernels := _use_triton(table, native)) is not None:
        return kernels.sample_rows(table, h, w, taps, y, x, sum_taps=sum_taps, run=run, out=out)
    lib = _use_native(table) if native else None
    if lib is not None:
        table, y, x = table.contiguous(), y.contiguous(), x.contiguous()
        out = table.new_empty(shape) if out is None else out
        f32, args = table.dtype == torch.float32, (_ptr(table), h, w, c, taps, _ptr(y), _ptr(x), m)
        if sum_taps:
            (lib.sac_sample_sum_taps_f32 if f32 else lib.sac_sample_sum_taps_f64)(*args, _ptr(out), torch.get_num_threads())
        else:
            (lib.sac_sample_f32 if f32 else lib.sac_sample_f64)(*args, run, _ptr(out), torch.get_num_threads())
        return out
    # Blended in the weights' dtype (float32 for half tables), rounded to the table's at the end.
    rows, weights, _ = _corners(y, x, h, w, taps)
    samples = _weighted(table.index_select(0, rows[0]), weights[0])
    for row, weight in zip(rows[1:], weights[1:]):
        samples.add_(_weighted(table.index_select(0, row), weight))
    if sum_taps:
        samples = samples.view(shape[0], taps, c).sum(1)
    return samples.to(table.dtype) if out is None else out.copy_(samples)


def sample_rows_backward(
    table: Tensor,
    h: int,
    w: int,
    taps: int,
    y: Tensor,
    x: Tensor,
    grad: Tensor,
    grad_table: Tensor | None,
    want_positions: bool,
    *,
    run: int = 1,
    native: bool = True,
) -> tuple[Tensor, Tensor] | None:
    """The adjoint of :func:`sample_rows`.

    Adds the gradient of the table for ``grad`` into ``grad_table`` (same shape as ``table``,
    contiguous; in the table's dtype, or float32 for a half table, to accumulate in) unless it is
    ``None``, and returns the gradients of the positions ``(grad_y, grad_x)``, each ``[M]`` in the
    positions' dtype, if ``want_positions`` (the right-hand derivative at integer positions, as the
    reference path and ``grid_sample`` take it). ``grad`` is ``[M, C]`` in the table's dtype, or
    ``[M / taps, C]`` for the adjoint of ``sample_rows(..., sum_taps=True)``. ``y``, ``x`` and
    ``run`` are :func:`sample_rows`'s.
    """
    m, c = y.numel(), table.shape[1]
    _check_positions(table, y, x)
    if grad.shape not in ((m, c), (m // taps, c)) or (grad.shape[0] != m and m % taps):
        raise ValueError(f"grad of shape {tuple(grad.shape)} fits neither {m} samples nor their runs of {taps} taps")
    _check_runs(m, run)
    share = m // grad.shape[0] if grad.shape[0] else 1
    if (kernels := _use_triton(table, native)) is not None:
        return kernels.sample_rows_backward(table, h, w, taps, y, x, grad, grad_table, want_positions, run=run)
    lib = _use_native(table) if native else None
    if lib is not None:
        if grad_table is not None and not grad_table.is_contiguous():
            raise ValueError("grad_table must be contiguous for the native kernel")
        table, y, x, grad = table.contiguous(), y.contiguous(), x.contiguous(), grad.contiguous()
        threads = torch.get_num_threads()
        gy = table.new_empty(m) if want_positions else None
        gx = table.new_empty(m) if want_positions else None
        fn = lib.sac_sample_backward_f32 if table.dtype == torch.float32 else lib.sac_sample_backward_f64
        fn(_ptr(table), h, w, c, taps, _ptr(y), _ptr(x), m, run, _ptr(grad), share, _ptr(grad_table), _ptr(gy), _ptr(gx), threads)
        return (gy, gx) if want_positions else None  # type: ignore[return-value]
    if share > 1:
        grad = grad[:, None].expand(m // share, share, c).reshape(m, c)
    rows, weights, insides = _corners(y, x, h, w, taps)
    if grad_table is not None:
        for row, weight in zip(rows, weights):
            grad_table.index_add_(0, row, _weighted(grad, weight).to(grad_table.dtype))
    if not want_positions:
        return None
    # Dot of grad with each corner inside; eq. (14) combines them into position derivatives.
    dots = [
        torch.einsum("mc,mc->m", grad, table.index_select(0, row)).to(y.dtype).masked_fill_(~inside, 0)
        for row, inside in zip(rows, insides)
    ]
    fy, fx = y - torch.floor(y), x - torch.floor(x)
    grad_y = (dots[2] - dots[0]) * (1 - fx) + (dots[3] - dots[1]) * fx
    grad_x = (dots[1] - dots[0]) * (1 - fy) + (dots[3] - dots[2]) * fy
    return grad_y, grad_x
