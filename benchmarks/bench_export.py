"""Latency of an exported model in onnxruntime next to PyTorch eager (and torch.compile), CPU, batch 1."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from sacseg.export.onnx_export import export_onnx
from sacseg.models import MODELS, build_model


def _median_seconds(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up: first-call allocations, onnxruntime's arena, compilation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="sac_multiple_resnet18", choices=list(MODELS))
    parser.add_argument("--num-classes", type=int, default=19)
    parser.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to build)")
    args = parser.parse_args()
    import onnxruntime

    torch.manual_seed(0)
    model = build_model(args.model, args.num_classes).eval()
    h, w = args.size
    images = torch.randn(1, 3, h, w)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        start = time.perf_counter()
        result = export_onnx(model, path, h, w)
        export_seconds = time.perf_counter() - start
        size_mb = path.stat().st_size / 2**20
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = {"images": images.numpy()}
        ort_seconds = _median_seconds(lambda: session.run(None, feed), args.repeats)
    with torch.no_grad():
        eager_seconds = _median_seconds(lambda: model(images), args.repeats)
        rows = [("pytorch eager", eager_seconds)]
        if args.compile:
            compiled = torch.compile(model)
            rows.append(("pytorch torch.compile", _median_seconds(lambda: compiled(images), args.repeats)))
    rows.append(("onnxruntime", ort_seconds))
    print(
        f"{args.model} {h}x{w} batch 1, {torch.get_num_threads()} threads: opset {result.opset}, "
        f"{size_mb:.1f} MiB, export + check {export_seconds:.1f} s, max relative error "
        f"{max(result.errors.values()):.1e}"
    )
    for name, seconds in rows:
        print(f"  {name:<22} median {seconds * 1000:8.1f} ms over {args.repeats} runs")


if __name__ == "__main__":
    main()
