"""Time and peak memory of sac_conv2d's paths against F.conv2d and deform_conv2d at segmentation shapes.

Every operator runs at the same geometry (3x3 kernel, dilation 4, padding 4, stride 1), in one
process, after ``--warmup`` warm-up calls (1 on CPU, 3 on CUDA by default); times are medians of
``--repeats`` calls (at most 3 for an operator whose last warm-up call took over a second, timed
first). The others are timed round-robin: each round times every one of them once, forward then
forward+backward, so that the machine's drift (other tenants of a shared host measured +-15% here)
meets them alike. On CUDA a call is timed with ``torch.cuda.Event`` records around it, the device
synchronised before; on CPU with the wall clock. Scales are uniform in [0.5, 2]; deform_conv2d gets
the offsets ``(s - 1) * dil * (a - kh//2, b - kw//2)`` that make it sample where SAC does. Ratios are
to F.conv2d (cuDNN on CUDA, with ``cudnn.benchmark`` on) of the same shape in the same run.

Shapes (see ``SHAPES``): res5 512->512 at 64x64; classifiers 2048->19 and 2048->150 at 64x64;
res5 512->512 on a batch of two 97x97 maps; on CUDA also res5 and the 2048->19 classifier on a
batch of two 128x256 maps (res5 of 1024x2048 Cityscapes images at output stride 8). The reference
path is skipped on the batched shapes by default.

``--dtype bf16`` (or ``fp16``) runs every operator under ``torch.autocast`` with that dtype, the way
mixed-precision training calls them: the input and the scale map arrive in that dtype (as
activations do in an autocast network), weights stay float32 parameters, gradients flow back to
all three. torchvision's deform_conv2d has no bfloat16/float16 kernel: it runs in float32 on inputs
cast up (autocast off around it). The table's last column gives the dtype each operator returned.
On CPU the same autocast runs (CPU autocast supports both dtypes).

Peak memory is the highest number of bytes allocated during one forward+backward call above what
was allocated before it (inputs and weights are not counted; outputs and gradients are). On CUDA
it comes from ``torch.cuda.max_memory_allocated`` after ``torch.cuda.reset_peak_memory_stats``; on
CPU from the allocation events of ``torch.profiler`` (``profile_memory=True``), i.e. everything going
through PyTorch's CPU allocator. Memory a library allocates behind PyTorch's back is not seen on CPU.

Usage: ``python benchmarks/bench_sac_conv.py [--shapes res5 cls19] [--quick] [--threads 2]
[--device cpu|cuda] [--dtype fp32|bf16|fp16]``. ``--device cuda`` without a GPU is a usage error (exit 2).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import deform_conv2d

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks._timing import (
    DTYPES,
    add_device_arguments,
    autocast,
    device_from_args,
    device_name,
    medians,
    ms,
    peak_bytes,
    precision,
    round_robin,
)
from sacseg.ops import SAC_IMPLEMENTATIONS, sac_conv2d


@dataclass(frozen=True)
class Shape:
    batch: int
    c_in: int
    c_out: int
    size: int  # height, and width unless ``width`` is given
    dilation: int
    reference: bool  # whether the reference path runs by default (it is slow and memory hungry)
    width: int | None = None

    @property
    def hw(self) -> tuple[int, int]:
        return self.size, self.size if self.width is None else self.width


#: res5 of a dilated ResNet at output stride 8 on a 512 crop, the SAC classifiers on Cityscapes
#: (19 classes) and ADE20K (150), a batch of two 97x97 res5 maps (769 Cityscapes crops), and on a
#: GPU res5 and the Cityscapes classifier of a batch of two full 1024x2048 images (128x256 maps).
SHAPES = {
    "res5": Shape(1, 512, 512, 64, 4, True),
    "cls19": Shape(1, 2048, 19, 64, 4, True),
    "cls150": Shape(1, 2048, 150, 64, 4, True),
    "res5_b2_97": Shape(2, 512, 512, 97, 4, False),
    "res5_b2_128x256": Shape(2, 512, 512, 128, 4, False, width=256),
    "cls19_b2_128x256": Shape(2, 2048, 19, 128, 4, False, width=256),
}
#: Shapes run without ``--shapes``: the 128x256 ones take minutes per operator on a CPU.
DEFAULT_SHAPES = {
    "cpu": ["res5", "cls19", "cls150", "res5_b2_97"],
    "cuda": list(SHAPES),
}


def _offsets(scale: Tensor, dilation: int) -> Tensor:
    """deform_conv2d offsets ``[N, 2*9, H, W]`` (dy, dx per tap, row-major) sampling where SAC does."""
    taps = torch.arange(3, dtype=scale.dtype, device=scale.device) - 1
    a, b = taps.repeat_interleave(3), taps.repeat(3)
    dy = (scale - 1) * dilation * a.view(1, -1, 1, 1)
    dx = (scale - 1) * dilation * b.view(1, -1, 1, 1)
    return torch.stack((dy, dx), dim=2).flatten(1, 2)


def _deform_conv2d_float32(x: Tensor, s: Tensor, w: Tensor, d: int) -> Tensor:
    """deform_conv2d in float32 whatever autocast says: torchvision has no bfloat16/float16 kernel."""
    with torch.autocast(x.device.type, enabled=False):
        return deform_conv2d(x.float(), _offsets(s.float(), d), w.float(), None, 1, d, d)


def _operators(d: int) -> dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]]:
    ops: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
        "conv2d": lambda x, s, w: F.conv2d(x, w, None, 1, d, d),
        "deform_conv2d": lambda x, s, w: _deform_conv2d_float32(x, s, w, d),
    }
    for name in SAC_IMPLEMENTATIONS:
        ops[f"sac:{name}"] = lambda x, s, w, name=name: sac_conv2d(x, s, w, None, 1, d, d, impl=name)
    return ops


def _round_robin_medians(
    calls: dict[str, tuple[Callable[[], object], Callable[[], object]]],
    repeats: int,
    device: torch.device,
    warmup: int = 1,
) -> dict[str, tuple[float, float]]:
    """Median seconds of each operator's forward and forward+backward, after ``warmup`` rounds.

    Operators whose last warm-up took over a second (deform_conv2d, the reference path on CPU) are
    timed first, 3 calls each: they vary little relative to their length, and their gigabytes of
    temporaries would disturb whichever operator ran next. The others are then timed round-robin.
    """
    warm_up = {name: max(call[-1] for call in samples) for name, samples in round_robin(calls, warmup, device).items()}
    slow = {name: calls[name] for name in calls if warm_up[name] > 1.0}
    fast = {name: calls[name] for name in calls if name not in slow}
    times = round_robin(slow, min(repeats, 3), device) | round_robin(fast, repeats, device)
    median = medians(times)
    return {name: median[name] for name in calls}  # type: ignore[misc]


def _bench_shape(
    name: str, shape: Shape, ops: list[str], repeats: int, warmup: int, device: torch.device, dtype: str
) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    n, (h, w) = shape.batch, shape.hw
    # Under autocast, activations (the input and the regressed scale) arrive in the low dtype;
    # weights are float32 parameters that autocast casts itself.
    act = DTYPES[dtype] or torch.float32
    x = torch.randn(n, shape.c_in, h, w, generator=g).to(device, act)
    weight = (torch.randn(shape.c_out, shape.c_in, 3, 3, generator=g) / (3 * shape.c_in**0.5)).to(device)
    s = (torch.rand(n, 1, h, w, generator=g) * 1.5 + 0.5).to(device, act)
    grad_out = torch.randn(n, shape.c_out, h, w, generator=g).to(device)
    grad_outs: dict[torch.dtype, Tensor] = {}  # grad_out in each output dtype, cast once
    x_, w_, s_ = (t.clone().requires_grad_() for t in (x, weight, s))
    out_dtypes: dict[str, torch.dtype] = {}
    calls = {}
    for op_name, op in _operators(shape.dilation).items():
        if op_name not in ops:
            continue

        def forward(op: Callable[[Tensor, Tensor, Tensor], Tensor] = op, op_name: str = op_name) -> None:
            with torch.no_grad(), autocast(device, dtype):
                out_dtypes[op_name] = op(x, s, weight).dtype

        def forward_backward(op: Callable[[Tensor, Tensor, Tensor], Tensor] = op, op_name: str = op_name) -> None:
            with autocast(device, dtype):
                out = op(x_, s_, w_)
            grad = grad_outs.get(out.dtype)
            if grad is None:
                grad = grad_outs[out.dtype] = grad_out.to(out.dtype)
            # conv2d has no scale: it still gets the same leaves so that the work compares.
            torch.autograd.backward(out, grad, inputs=[x_, w_] if op_name == "conv2d" else [x_, w_, s_])
            x_.grad = w_.grad = s_.grad = None

        calls[op_name] = (forward, forward_backward)
    rows = []
    for op_name, (t_fwd, t_both) in _round_robin_medians(calls, repeats, device, warmup).items():
        peak = peak_bytes(calls[op_name][1], device)
        out = str(out_dtypes[op_name]).removeprefix("torch.")
        rows.append({"shape": name, "op": op_name, "fwd": t_fwd, "fwd+bwd": t_both, "peak": peak, "dtype": out})
        print(f"  {name:<16} {op_name:<16} fwd {ms(t_fwd)} ms  fwd+bwd {ms(t_both)} ms  peak {peak / 2**20:8.1f} MiB", flush=True)
    return rows


def _table(rows: list[dict]) -> str:
    lines = [
        f"{'shape':<16} {'op':<16} {'fwd ms':>9} {'x conv':>7} {'f+b ms':>9} {'x conv':>7} {'peak MiB':>9} "
        f"{'x conv':>7} {'out dtype':>9}"
    ]
    base = {r["shape"]: r for r in rows if r["op"] == "conv2d"}
    for r in rows:
        b = base.get(r["shape"])

        def ratio(key: str) -> str:
            return f"{r[key] / b[key]:7.2f}" if b and b[key] > 0 else f"{'-':>7}"  # noqa: B023 (called in this iteration)

        lines.append(
            f"{r['shape']:<16} {r['op']:<16} {ms(r['fwd'])} {ratio('fwd')} {ms(r['fwd+bwd'])} "
            f"{ratio('fwd+bwd')} {r['peak'] / 2**20:9.1f} {ratio('peak')} {r['dtype']:>9}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=None, help="shapes to run")
    parser.add_argument(
        "--ops",
        nargs="+",
        default=None,
        help="operators (default: conv2d, deform_conv2d, sac:fast and, where it is cheap enough, sac:reference)",
    )
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (median)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up rounds (default: 1 on CPU, 3 on CUDA)")
    parser.add_argument("--quick", action="store_true", help="3 repeats, res5 and cls19 only unless --shapes is given")
    parser.add_argument("--reference-everywhere", action="store_true", help="also run sac:reference on the large shapes")
    add_device_arguments(parser)
    args = parser.parse_args(argv)
    valid_ops = ["conv2d", "deform_conv2d", *(f"sac:{k}" for k in SAC_IMPLEMENTATIONS)]
    for op in args.ops or []:
        if op not in valid_ops:
            parser.error(f"unknown op {op!r}; valid: {', '.join(valid_ops)}")
    if args.repeats < 1 or (args.warmup is not None and args.warmup < 1):
        parser.error("--repeats and --warmup must be >= 1")
    device = device_from_args(parser, args)
    warmup = args.warmup or (3 if device.type == "cuda" else 1)
    shapes = args.shapes or DEFAULT_SHAPES[device.type]
    if args.quick:
        args.repeats = 3
        shapes = args.shapes or ["res5", "cls19"]
    print(f"torch {torch.__version__}, device {device_name(device)}, {precision(args.dtype)}, median of {args.repeats}")
    rows = []
    for name in shapes:
        shape = SHAPES[name]
        ops = args.ops or ["conv2d", "deform_conv2d", "sac:fast"]
        if args.ops is None and (shape.reference or args.reference_everywhere):
            ops.append("sac:reference")
        rows += _bench_shape(name, shape, ops, args.repeats, warmup, device, args.dtype)
    print()
    print(_table(rows))
    if DTYPES[args.dtype] is not None and any(r["op"] == "deform_conv2d" for r in rows):
        print("deform_conv2d: no bfloat16/float16 kernel in torchvision, run in float32 on inputs cast up")


if __name__ == "__main__":
    main()
