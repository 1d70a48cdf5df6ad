"""Time and peak memory of sac_conv2d's paths against F.conv2d and deform_conv2d at segmentation shapes.

Every operator runs at the same geometry (3x3 kernel, dilation 4, padding 4, stride 1), in one
process, after one warm-up call; times are medians of ``--repeats`` calls (at most 3 for an
operator whose warm-up call took over a second, timed first). The others are timed round-robin:
each round times every one of them once, forward then forward+backward, so that the machine's
drift (other tenants of a shared host measured +-15% here) meets them alike. Scales are uniform
in [0.5, 2]; deform_conv2d gets the offsets ``(s - 1) * dil * (a - kh//2, b - kw//2)`` that make it
sample where SAC does. Ratios are to F.conv2d of the same shape in the same run.
Shapes (see ``SHAPES``): res5 512->512 at 64x64; classifiers 2048->19 and 2048->150 at 64x64;
res5 512->512 on a batch of two 97x97 maps. The reference path is skipped on the last by default.

Peak memory is the highest number of bytes allocated during one forward+backward call above what
was allocated before it (inputs and weights are not counted; outputs and gradients are). On CUDA
it comes from ``torch.cuda.max_memory_allocated``; on CPU from the allocation events of
``torch.profiler`` (``profile_memory=True``), i.e. everything going through PyTorch's CPU
allocator. Memory a library allocates behind PyTorch's back is not seen on CPU.

Usage: ``python benchmarks/bench_sac_conv.py [--shapes res5 cls19] [--quick] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import deform_conv2d

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from sacseg.ops import SAC_IMPLEMENTATIONS, sac_conv2d  # noqa: E402


@dataclass(frozen=True)
class Shape:
    batch: int
    c_in: int
    c_out: int
    size: int
    dilation: int
    reference: bool  # whether the reference path runs by default (it is slow and memory hungry)


#: res5 of a dilated ResNet at output stride 8 on a 512 crop, the SAC classifiers on Cityscapes
#: (19 classes) and ADE20K (150), and a batch of two 97x97 res5 maps (769 Cityscapes crops).
SHAPES = {
    "res5": Shape(1, 512, 512, 64, 4, True),
    "cls19": Shape(1, 2048, 19, 64, 4, True),
    "cls150": Shape(1, 2048, 150, 64, 4, True),
    "res5_b2_97": Shape(2, 512, 512, 97, 4, False),
}


def _offsets(scale: Tensor, dilation: int) -> Tensor:
    """deform_conv2d offsets ``[N, 2*9, H, W]`` (dy, dx per tap, row-major) sampling where SAC does."""
    taps = torch.arange(3, dtype=scale.dtype, device=scale.device) - 1
    a, b = taps.repeat_interleave(3), taps.repeat(3)
    dy = (scale - 1) * dilation * a.view(1, -1, 1, 1)
    dx = (scale - 1) * dilation * b.view(1, -1, 1, 1)
    return torch.stack((dy, dx), dim=2).flatten(1, 2)


def _operators(d: int) -> dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]]:
    ops: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
        "conv2d": lambda x, s, w: F.conv2d(x, w, None, 1, d, d),
        "deform_conv2d": lambda x, s, w: deform_conv2d(x, _offsets(s, d), w, None, 1, d, d),
    }
    for name in SAC_IMPLEMENTATIONS:
        ops[f"sac:{name}"] = lambda x, s, w, name=name: sac_conv2d(x, s, w, None, 1, d, d, impl=name)
    return ops


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _round_robin_medians(
    calls: dict[str, tuple[Callable[[], object], Callable[[], object]]], repeats: int, device: torch.device
) -> dict[str, tuple[float, float]]:
    """Median seconds of each operator's forward and forward+backward.

    Operators whose warm-up took over a second (deform_conv2d, the reference path) are timed first,
    3 calls each: they vary little relative to their length, and their gigabytes of temporaries
    would disturb whichever operator ran next. The others are then timed round-robin.
    """
    warm_up = {name: max(_timed(fn, device) for fn in pair) for name, pair in calls.items()}
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in calls}
    slow = [name for name in calls if warm_up[name] > 1.0]
    for rounds, names in ((min(repeats, 3), slow), (repeats, [name for name in calls if name not in slow])):
        for _ in range(rounds):
            for name in names:
                for fn, bucket in zip(calls[name], times[name]):
                    bucket.append(_timed(fn, device))
    return {name: (statistics.median(fwd), statistics.median(both)) for name, (fwd, both) in times.items()}


def _peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    if device.type == "cuda":
        _sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch._C._profiler import _EventType

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


def _bench_shape(name: str, shape: Shape, ops: list[str], repeats: int, device: torch.device) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    n, h = shape.batch, shape.size
    x = torch.randn(n, shape.c_in, h, h, generator=g).to(device)
    w = (torch.randn(shape.c_out, shape.c_in, 3, 3, generator=g) / (3 * shape.c_in**0.5)).to(device)
    s = (torch.rand(n, 1, h, h, generator=g) * 1.5 + 0.5).to(device)
    grad_out = torch.randn(n, shape.c_out, h, h, generator=g).to(device)
    x_, w_, s_ = (t.clone().requires_grad_() for t in (x, w, s))
    calls = {}
    for op_name, op in _operators(shape.dilation).items():
        if op_name not in ops:
            continue

        def forward(op: Callable[[Tensor, Tensor, Tensor], Tensor] = op) -> None:
            with torch.no_grad():
                op(x, s, w)

        def forward_backward(op: Callable[[Tensor, Tensor, Tensor], Tensor] = op, op_name: str = op_name) -> None:
            # conv2d has no scale: it still gets the same leaves so that the work compares.
            out = op(x_, s_, w_)
            torch.autograd.backward(out, grad_out, inputs=[x_, w_] if op_name == "conv2d" else [x_, w_, s_])
            x_.grad = w_.grad = s_.grad = None

        calls[op_name] = (forward, forward_backward)
    rows = []
    for op_name, (t_fwd, t_both) in _round_robin_medians(calls, repeats, device).items():
        peak = _peak_bytes(calls[op_name][1], device)
        rows.append({"shape": name, "op": op_name, "fwd": t_fwd, "fwd+bwd": t_both, "peak": peak})
        print(f"  {name:<11} {op_name:<16} fwd {_ms(t_fwd)} ms  fwd+bwd {_ms(t_both)} ms  peak {peak / 2**20:8.1f} MiB", flush=True)
    return rows


def _ms(seconds: float) -> str:
    """Milliseconds to the microsecond, so that tiny shapes do not print as 0.0."""
    return f"{seconds * 1e3:9.3f}"


def _table(rows: list[dict]) -> str:
    lines = [f"{'shape':<11} {'op':<16} {'fwd ms':>9} {'x conv':>7} {'f+b ms':>9} {'x conv':>7} {'peak MiB':>9} {'x conv':>7}"]
    base = {r["shape"]: r for r in rows if r["op"] == "conv2d"}
    for r in rows:
        b = base.get(r["shape"])

        def ratio(key: str) -> str:
            return f"{r[key] / b[key]:7.2f}" if b and b[key] > 0 else f"{'-':>7}"

        lines.append(
            f"{r['shape']:<11} {r['op']:<16} {_ms(r['fwd'])} {ratio('fwd')} {_ms(r['fwd+bwd'])} "
            f"{ratio('fwd+bwd')} {r['peak'] / 2**20:9.1f} {ratio('peak')}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=list(SHAPES), help="shapes to run")
    parser.add_argument(
        "--ops",
        nargs="+",
        default=None,
        help="operators (default: conv2d, deform_conv2d, sac:fast and, where it is cheap enough, sac:reference)",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="intra-op threads (default: all cores)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (median)")
    parser.add_argument("--quick", action="store_true", help="3 repeats, res5 and cls19 only unless --shapes is given")
    parser.add_argument("--reference-everywhere", action="store_true", help="also run sac:reference on the large shapes")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args(argv)
    valid_ops = ["conv2d", "deform_conv2d", *(f"sac:{k}" for k in SAC_IMPLEMENTATIONS)]
    for op in args.ops or []:
        if op not in valid_ops:
            parser.error(f"unknown op {op!r}; valid: {', '.join(valid_ops)}")
    if args.quick:
        args.repeats = 3
        if "--shapes" not in (argv if argv is not None else sys.argv[1:]):
            args.shapes = ["res5", "cls19"]
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {args.threads} threads, device {device}, median of {args.repeats}")
    rows = []
    for name in args.shapes:
        shape = SHAPES[name]
        ops = args.ops or ["conv2d", "deform_conv2d", "sac:fast"]
        if args.ops is None and (shape.reference or args.reference_everywhere):
            ops.append("sac:reference")
        rows += _bench_shape(name, shape, ops, args.repeats, device)
    print()
    print(_table(rows))


if __name__ == "__main__":
    main()
