"""The ``sacseg`` command line: one sub-command per job."""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from sacseg.nn import ScaleAdaptiveConv2d, ScaleRegressor


def _demo(args: argparse.Namespace) -> int:
    """A short real run of the operator: SAC at scale 1 is the plain convolution, and it learns a scale."""
    torch.manual_seed(args.seed)
    # Smooth features, as deep feature maps are: white noise would make the loss in s bumpy.
    x = F.avg_pool2d(torch.randn(2, 16, 39, 39), 7, stride=1, padding=0, count_include_pad=False)
    x = (x - x.mean()) / x.std()
    sac = ScaleAdaptiveConv2d(16, 8, 3, padding=2, dilation=2)
    ones = torch.ones(2, 1, 33, 33)
    err = (sac(x, ones) - F.conv2d(x, sac.weight, sac.bias, padding=2, dilation=2)).abs().max().item()
    print(f"scale == 1 vs F.conv2d (dilation 2): max |difference| = {err:.2e}")

    # Teach a regressor the scale that turns a dilation-2 layer into a dilation-4 teacher.
    teacher = F.conv2d(x, sac.weight.detach(), sac.bias.detach(), padding=4, dilation=4)
    regressor = ScaleRegressor(16)
    optimizer = torch.optim.Adam(regressor.parameters(), lr=0.05)
    start = time.perf_counter()
    for step in range(args.steps):
        scale = regressor(x)
        loss = F.mse_loss(sac(x, scale), teacher)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % max(1, args.steps // 5) == 0 or step == args.steps - 1:
            print(f"step {step:3d}  loss {loss.item():.4f}  mean scale {scale.mean().item():.3f}")
    print(f"learned mean scale {regressor(x).mean().item():.3f} (target 2.0) in {time.perf_counter() - start:.1f}s")
    return 0


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sacseg", description="Scene parsing with scale-adaptive convolutions.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="a short real example on built-in data")
    demo.add_argument("--steps", type=int, default=60)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    return args.func(args)
