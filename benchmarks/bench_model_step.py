"""Time and peak memory of a training step and an inference of the paper's models, as ratios to the FCN baseline.

For each of ``--models`` (``fcn``, ``sac_single``, ``sac_multiple`` at ``--depth``) and each of
``--modes`` (``eager``; ``compiled``: ``torch.compile(model)`` with its defaults) two calls are timed
on a random batch of ``--batch`` images of ``--size H W`` with random labels of ``--num-classes``:

- train: ``model.train()``, forward, per-pixel cross-entropy (``sacseg.training.loop.segmentation_loss``),
  backward, an SGD step (momentum 0.9, weight decay 1e-4, lr 1e-3) and ``zero_grad(set_to_none=True)``;
  only the model is compiled, not the optimiser step;
- infer: ``model.eval()`` and a forward under ``torch.no_grad()``.

With ``--dtype bf16`` both run under ``torch.autocast`` with bfloat16 (the loss and the optimiser
step in float32), the way mixed-precision training runs; no gradient scaler is needed for bfloat16.
The eager and compiled forms of a model share its parameters and optimiser.

Method: one process builds every model (seed 0) on ``--device``. ``--warmup`` untimed rounds run
first (compilation, cuDNN's algorithm search with ``cudnn.benchmark`` on, allocator growth; the
first call's seconds, compilation included, are kept in the JSON). Then ``--rounds`` interleaved
rounds: each round times every model and mode once, train then infer, entry after entry, so that
the machine's drift meets all of them alike. A call is timed with ``torch.cuda.Event`` records on
CUDA (the device synchronised before) and the wall clock on CPU; the table gives medians. Ratios
"x fcn" are to the FCN baseline in the same mode of the same run; "compiled/eager" is a model's
compiled median over its eager one. Peak memory is the most bytes allocated during one more call
above what was allocated before it (weights and optimiser state are not counted; activations,
gradients and temporaries are): ``torch.cuda.max_memory_allocated`` after
``reset_peak_memory_stats`` on CUDA; on CPU only with ``--cpu-memory``, from ``torch.profiler``'s
allocation events (PyTorch's CPU allocator only).

Usage::

    python benchmarks/bench_model_step.py --depth 50 --size 256 256 --batch 2 [--threads 2]
    python benchmarks/bench_model_step.py --device cuda --depth 101 --size 512 1024 --batch 2 \\
        --dtype bf16 [--modes eager] [--rounds 5] [--warmup 2] [--json step.json]

Output: a Markdown table on stdout; ``--json PATH`` also saves every sample (a new file only: an
existing one is never overwritten). ``--device cuda`` without a GPU is a usage error (exit 2).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks import _timing
from benchmarks._report import format_table, run_record, write_json
from sacseg.models import build_model
from sacseg.training.loop import segmentation_loss

MODEL_KINDS = ("fcn", "sac_single", "sac_multiple")
MODES = ("eager", "compiled")
TASKS = ("train", "infer")


@dataclass
class _Entry:
    """One model in one mode: its two timed calls and the losses its training steps gave."""

    model: str
    mode: str
    calls: tuple[Callable[[], None], Callable[[], None]]  # train, infer
    losses: list[Tensor]


def _entries(
    kinds: Sequence[str],
    modes: Sequence[str],
    depth: int,
    num_classes: int,
    images: Tensor,
    targets: Tensor,
    device: torch.device,
    dtype: str,
) -> list[_Entry]:
    entries = []
    for kind in kinds:
        torch.manual_seed(0)
        model = build_model(f"{kind}_resnet{depth}", num_classes).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
        for mode in modes:
            runner: nn.Module = torch.compile(model) if mode == "compiled" else model
            entries.append(_calls(kind, mode, model, runner, optimizer, images, targets, device, dtype))
    return entries


def _calls(
    kind: str,
    mode: str,
    model: nn.Module,
    runner: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    targets: Tensor,
    device: torch.device,
    dtype: str,
) -> _Entry:
    losses: list[Tensor] = []

    def train() -> None:
        model.train()
        with _timing.autocast(device, dtype):
            loss = segmentation_loss(runner(images)["out"], targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())  # checked once at the end: reading it here would synchronise

    def infer() -> None:
        model.eval()
        with torch.no_grad(), _timing.autocast(device, dtype):
            runner(images)

    return _Entry(kind, mode, (train, infer), losses)


def _ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:.2f}" if value is not None and base else "-"


def _table(results: list[dict]) -> str:
    """The Markdown table of :func:`run`'s results: medians in ms, peaks in MiB, ratios."""
    by_key = {(r["model"], r["mode"]): r for r in results}
    headers = ["model", "mode", "train ms", "x fcn", "train img/s", "infer ms", "x fcn", "infer img/s", "train peak MiB",
               "x fcn", "infer peak MiB", "x fcn", "compiled/eager train", "compiled/eager infer"]  # fmt: skip
    rows = []
    for r in results:
        base = by_key.get(("fcn", r["mode"]), {})
        eager = by_key.get((r["model"], "eager"), {}) if r["mode"] == "compiled" else {}
        row = [r["model"], r["mode"]]
        for task in TASKS:
            median = r[f"{task}_median_s"]
            row += [f"{median * 1e3:.3f}", _ratio(median, base.get(f"{task}_median_s")), f"{r['batch'] / median:.1f}"]
        for task in TASKS:
            peak = r[f"{task}_peak_bytes"]
            row += ["-" if peak is None else f"{peak / 2**20:.1f}", _ratio(peak, base.get(f"{task}_peak_bytes"))]
        row += [_ratio(r[f"{task}_median_s"], eager.get(f"{task}_median_s")) for task in TASKS]
        rows.append(row)
    return format_table(headers, rows, markdown=True)


def run(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Time every model and mode of ``args``; one dict of samples, medians and peaks per entry."""
    g = torch.Generator().manual_seed(0)
    h, w = args.size
    images = torch.randn(args.batch, 3, h, w, generator=g).to(device)
    targets = torch.randint(0, args.num_classes, (args.batch, h, w), generator=g).to(device)
    if "compiled" in args.modes:
        torch._dynamo.reset()  # a fresh cache: earlier compilations in this process must not count
    entries = _entries(args.models, args.modes, args.depth, args.num_classes, images, targets, device, args.dtype)
    calls = {f"{e.model}/{e.mode}": e.calls for e in entries}
    first = {}
    for key, fns in calls.items():  # one entry at a time, so that a run cut short still says how far it got
        first[key] = _timing.round_robin({key: fns}, 1, device)[key]
        print(f"  {key:<22} first call (compilation included): train {first[key][0][0]:.2f} s, "
              f"infer {first[key][1][0]:.2f} s", flush=True)  # fmt: skip
    _timing.round_robin(calls, args.warmup - 1, device)
    times = _timing.round_robin(calls, args.rounds, device)
    median = _timing.medians(times)
    results = []
    for e in entries:
        key = f"{e.model}/{e.mode}"
        measure = device.type == "cuda" or args.cpu_memory
        peaks = [_timing.peak_bytes(fn, device) if measure else None for fn in e.calls]
        losses = torch.stack(e.losses).float().cpu()
        if not bool(torch.isfinite(losses).all()):
            print(f"warning: {key}: the training loss became non-finite; its times may not be typical", file=sys.stderr)
        result = {"model": e.model, "name": f"{e.model}_resnet{args.depth}", "mode": e.mode, "batch": args.batch}
        for i, task in enumerate(TASKS):
            result[f"{task}_first_call_s"] = first[key][i][0]
            result[f"{task}_samples_s"] = times[key][i]
            result[f"{task}_median_s"] = median[key][i]
            result[f"{task}_peak_bytes"] = peaks[i]
        result["last_loss"] = float(losses[-1])
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=MODEL_KINDS, default=list(MODEL_KINDS), help="(default: all)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="(default: both)")
    parser.add_argument("--depth", type=int, choices=(18, 50, 101), default=50, help="ResNet depth (default: 50)")
    parser.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"), help="(default: 256 256)")
    parser.add_argument("--batch", type=int, default=2, help="images per call (default: 2)")
    parser.add_argument("--num-classes", type=int, default=19, help="(default: 19, Cityscapes)")
    parser.add_argument("--rounds", type=int, default=5, help="timed interleaved rounds, median (default: 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first, compilation included (default: 2)")
    parser.add_argument("--cpu-memory", action="store_true", help="also measure peak memory on CPU (torch.profiler)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also save the raw numbers (a new file)")
    _timing.add_device_arguments(parser, dtypes=("fp32", "bf16"))
    args = parser.parse_args(argv)
    for name in ("batch", "num_classes", "rounds", "warmup"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if min(args.size) < 1:
        parser.error(f"--size must be positive, got {args.size[0]} {args.size[1]}")
    args.models, args.modes = list(dict.fromkeys(args.models)), list(dict.fromkeys(args.modes))
    if args.json is not None and args.json.exists():
        parser.error(f"--json: {args.json} exists; not overwriting it (remove it or pick another path)")
    device = _timing.device_from_args(parser, args)
    results = run(args, device)
    h, w = args.size
    print(
        f"torch {torch.__version__}, device {_timing.device_name(device)}, {_timing.precision(args.dtype)}; "
        f"ResNet-{args.depth}, {h}x{w}, batch {args.batch}, {args.num_classes} classes; median of {args.rounds} interleaved rounds "
        f"after {args.warmup} warm-up round(s)\n"
    )
    print(_table(results))
    if args.json is not None:
        record = run_record("benchmarks.bench_model_step", sys.argv[1:] if argv is None else argv)
        record["machine"]["torch_threads_per_job"] = args.threads
        record["device"] = _timing.device_name(device)
        settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items() if k != "json"}
        write_json({**record, "settings": settings, "results": results}, args.json)
        print(f"\nraw numbers: {args.json}")


if __name__ == "__main__":
    main()
