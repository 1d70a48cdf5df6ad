"""onnxruntime next to PyTorch eager on the paper's models, with each ONNX lowering of ``sac_conv2d``, as ratios to eager (CPU, batch 1).

For each of ``--models`` (``fcn``, ``sac_single``, ``sac_multiple``) at each of ``--depths`` (18, 50,
101; ``--num-classes`` outputs, seed 0, scale regressors as initialised) the model is exported at
``--size H W`` (static shapes, checked against PyTorch by ``export_onnx``) once per ``--lowerings``
(``gather``: the reference's gathers, the graph of sacseg 0.1.0; ``grid_sample``: the default) and,
for each of ``--threads``, timed on one random image: PyTorch eager under ``torch.no_grad()`` with
``torch.set_num_threads(t)``, and each file in an onnxruntime CPU session with
``intra_op_num_threads=t``. A baseline has no SAC layer: its graphs are one file, timed once.

Method: one untimed call of each entry, then ``--rounds`` interleaved rounds, each timing eager
and every session once, so that the machine's drift meets all of them alike; the table gives
medians (wall clock) and each graph's median over eager's of the same run. "x fcn" divides a SAC
model's grid_sample/eager ratio by the baseline's onnxruntime/eager ratio at the same depth and
threads (when ``fcn`` is among ``--models``): 1.00 means the graph costs onnxruntime no more than
the baseline's convolutions do.

Usage::

    python benchmarks/bench_export.py                      # the full table: 3 models x ResNet-18/50, 512x512, 1 and 2 threads
    python benchmarks/bench_export.py --models sac_multiple --depths 18 --size 256 256 --threads 2 --rounds 3
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks import _timing
from benchmarks._report import format_table
from sacseg.export.onnx_export import export_onnx
from sacseg.export.sac_lowering import SAC_LOWERINGS, SacLowering
from sacseg.models import build_model
from sacseg.utils.optional import import_optional

MODEL_KINDS = ("fcn", "sac_single", "sac_multiple")
_CPU = torch.device("cpu")


def _sessions(files: dict[str, Path], threads: int, images: Tensor) -> dict[str, Callable[[], object]]:
    """One onnxruntime call on ``images`` per file, ``threads`` intra-op threads each."""
    onnxruntime = import_optional("onnxruntime", "export", "the export benchmark")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    feed = {"images": images.numpy()}
    calls = {}
    for name, path in files.items():
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        calls[name] = lambda session=session: session.run(None, feed)
    return calls


def _time_model(
    name: str, lowerings: Sequence[SacLowering], images: Tensor, num_classes: int, threads: Sequence[int], rounds: int, tmp: Path
) -> dict[int, dict[str, float]]:
    """``{threads: {"eager" | lowering: median seconds}}`` for one model on ``images [1, 3, H, W]``."""
    torch.manual_seed(0)
    model = build_model(name, num_classes).eval()
    has_sac = len(getattr(model, "scale_regressors", ())) > 0
    files: dict[str, Path] = {}
    for lowering in lowerings if has_sac else lowerings[:1]:
        path = tmp / f"{name}_{lowering}.onnx"
        files[lowering] = export_onnx(model, path, *images.shape[-2:], sac_lowering=lowering).path
    results = {}
    for count in threads:
        torch.set_num_threads(count)
        calls: dict[str, Sequence[Callable[[], object]]] = {"eager": [lambda: model(images)]}
        calls.update({key: [call] for key, call in _sessions(files, count, images).items()})
        with torch.no_grad():
            for fns in calls.values():
                fns[0]()
            medians = _timing.medians(_timing.round_robin(calls, rounds, _CPU))
        results[count] = {key: value[0] for key, value in medians.items()}
        for lowering in lowerings:  # a baseline's single graph stands for every lowering
            results[count].setdefault(lowering, results[count][next(iter(files))])
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=MODEL_KINDS, default=list(MODEL_KINDS))
    parser.add_argument("--depths", nargs="+", type=int, choices=(18, 50, 101), default=[18, 50])
    parser.add_argument("--lowerings", nargs="+", choices=SAC_LOWERINGS, default=["gather", "grid_sample"])
    parser.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--num-classes", type=int, default=19)
    args = parser.parse_args(argv)
    if min(args.threads) < 1 or args.rounds < 1:
        parser.error("--threads and --rounds must be >= 1")
    h, w = args.size
    images = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    headers = ["model", "threads", "eager ms"]
    for lowering in args.lowerings:
        headers += [f"{lowering} ms", f"{lowering} / eager"]
    if "fcn" in args.models and "grid_sample" in args.lowerings:
        headers.append("x fcn")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for depth in args.depths:
            baseline: dict[int, float] = {}
            for kind in sorted(args.models, key=MODEL_KINDS.index):
                name = f"{kind}_resnet{depth}"
                timed = _time_model(name, args.lowerings, images, args.num_classes, args.threads, args.rounds, Path(tmp))
                for count, seconds in timed.items():
                    row = [name, str(count), _timing.ms(seconds["eager"])]
                    for lowering in args.lowerings:
                        row += [_timing.ms(seconds[lowering]), f"{seconds[lowering] / seconds['eager']:.2f}"]
                    if "x fcn" in headers:
                        ratio = seconds["grid_sample"] / seconds["eager"]
                        baseline.setdefault(count, ratio)  # fcn runs first
                        row.append(f"{ratio / baseline[count]:.2f}")
                    rows.append(row)
                print(f"done: {name}", file=sys.stderr, flush=True)
    print(f"onnxruntime vs PyTorch eager, {h}x{w}, batch 1, CPU, medians of {args.rounds} interleaved rounds:")
    print(format_table(headers, rows, markdown=True))


if __name__ == "__main__":
    main()
