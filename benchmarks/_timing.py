"""Shared timing machinery of the benchmarks: devices, autocast dtypes, round-robin medians, peak memory."""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence

import torch

__all__ = [
    "DTYPES",
    "add_device_arguments",
    "autocast",
    "device_from_args",
    "device_name",
    "medians",
    "ms",
    "peak_bytes",
    "precision",
    "round_robin",
    "sync",
    "timed",
]

#: ``--dtype`` choices: ``None`` is plain float32, the others run under ``torch.autocast`` with that dtype.
DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def add_device_arguments(parser: argparse.ArgumentParser, dtypes: Sequence[str] = tuple(DTYPES)) -> None:
    """``--device``, ``--dtype`` and ``--threads``, checked by :func:`device_from_args`."""
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument(
        "--dtype",
        default="fp32",
        choices=list(dtypes),
        help="fp32, or mixed precision under torch.autocast with that dtype (default: fp32)",
    )
    parser.add_argument("--threads", type=int, default=None, help="intra-op CPU threads (default: all cores)")


def device_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> torch.device:
    """The ``--device`` asked for; a usage error (exit 2) for a bad name or an absent GPU.

    Also applies ``--threads`` and, on CUDA, ``cudnn.benchmark`` (fixed shapes, as segmentation
    training runs; it lets cuDNN pick its fastest algorithm for the baseline during warm-up).
    """
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device: unknown device {args.device!r}; use cpu, cuda or cuda:N")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device: unsupported device type {device.type!r}; use cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = f"no GPU found by CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA"
            parser.error(f"--device {args.device}: CUDA is not available (torch {torch.__version__}: {why})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            parser.error(f"--device {args.device}: only {torch.cuda.device_count()} CUDA device(s) present")
        if args.dtype == "bf16" and not torch.cuda.is_bf16_supported():
            parser.error(f"--dtype bf16: {torch.cuda.get_device_name(device)} has no bfloat16 support")
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    if args.threads is None:
        args.threads = os.cpu_count() or 1
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    return device


def device_name(device: torch.device) -> str:
    """``cuda:0 (NVIDIA H200, CUDA 13.0)`` or ``cpu (N threads)`` for the header of a table."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda})"
    threads = torch.get_num_threads()
    return f"cpu ({threads} thread{'s' * (threads != 1)})"


def autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager[object]:
    """``torch.autocast`` with ``DTYPES[dtype]``, or nothing for fp32."""
    target = DTYPES[dtype]
    if target is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=target)


def precision(dtype: str) -> str:
    """``float32`` or ``autocast bf16``, for the header of a table."""
    return "float32" if DTYPES[dtype] is None else f"autocast {dtype}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes: CUDA events around it on a GPU, the wall clock on CPU.

    The device is synchronised first, so that no earlier queued work is counted.
    """
    sync(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    begin = time.perf_counter()
    fn()
    return time.perf_counter() - begin


def round_robin(
    calls: Mapping[str, Sequence[Callable[[], object]]], rounds: int, device: torch.device
) -> dict[str, list[list[float]]]:
    """Time every call of every entry once per round, entry after entry, for ``rounds`` rounds.

    Interleaving makes the machine's drift (other tenants, clocks, thermals) meet every entry
    alike instead of favouring whichever ran first. Returns ``{name: [seconds per round] per call}``.
    """
    times = {name: [[] for _ in fns] for name, fns in calls.items()}
    for _ in range(rounds):
        for name, fns in calls.items():
            for fn, bucket in zip(fns, times[name]):
                bucket.append(timed(fn, device))
    return times


def medians(times: Mapping[str, Sequence[Sequence[float]]]) -> dict[str, tuple[float, ...]]:
    """The median of each call's samples, as :func:`round_robin` returns them."""
    return {name: tuple(statistics.median(samples) for samples in per_call) for name, per_call in times.items()}


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """The most bytes allocated during one call of ``fn`` above what was allocated before it.

    CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``. CPU: the
    allocation events of ``torch.profiler`` (``profile_memory=True``), i.e. everything going
    through PyTorch's CPU allocator; memory a library allocates behind PyTorch's back is not seen.
    """
    if device.type == "cuda":
        sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch._C._profiler import _EventType

    # Kineto, the profiler's engine, logs each start and stop (and a failed GPU probe) to stderr,
    # between the table's lines; its level is read when the profiler first starts. 6: nothing.
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    sizes: list[tuple[int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())  # type: ignore[union-attr]
    while stack:
        event = stack.pop()
        if event.tag == _EventType.Allocation:
            sizes.append((event.start_time_ns, event.extra_fields.alloc_size))
        stack.extend(event.children)
    running = peak = 0
    for _, size in sorted(sizes):
        running += size
        peak = max(peak, running)
    return peak


def ms(seconds: float) -> str:
    """Milliseconds to the microsecond, so that tiny shapes do not print as 0.0."""
    return f"{seconds * 1e3:9.3f}"
