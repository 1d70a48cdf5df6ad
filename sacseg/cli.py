"""The ``sacseg`` command line: one sub-command per job, each a thin function over ``sacseg.engine``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

# Sub-commands import their engine module when they run: `sacseg --help` and a command that
# does not train need not load TensorBoard and the training stack.


def _cmd_train(args: argparse.Namespace) -> int:
    from sacseg.engine.config import apply_overrides, load_config
    from sacseg.engine.train import NonFiniteLossError, train

    overrides = list(args.set) + ([f"out_dir={args.out}"] if args.out is not None else [])
    cfg = apply_overrides(load_config(args.config), overrides)
    try:
        summary = train(cfg, resume=args.resume)
    except NonFiniteLossError as err:
        print(f"sacseg train: {err}", file=sys.stderr)
        return 1
    print(f"trained {summary['iteration']} iterations, best validation mIoU {summary['best_miou']:.4f}; "
          f"checkpoints in {summary['out_dir']}")  # fmt: skip
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from sacseg.engine.demo import run_demo

    report = run_demo(args.out, iterations=args.iterations, seed=args.seed, test_images=args.test_images)
    print(f"report: {report}")
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("train", help="train a model from a flat YAML config (works under torchrun)")
    parser.add_argument("--config", required=True, help="a YAML file, e.g. configs/scalescenes_sac_single_r18.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (value read as YAML); repeatable")  # fmt: skip
    parser.add_argument("--resume", metavar="PATH|auto", default=None,
                        help="continue from a checkpoint; 'auto' uses OUT/last.pt when it exists")  # fmt: skip
    parser.add_argument("--out", default=None, help="output folder (overrides the config's out_dir)")
    parser.set_defaults(func=_cmd_train)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="train baseline and SAC-single on generated ScaleScenes (CPU, minutes)")
    parser.add_argument("--out", default="demo_output", help="report folder (default: demo_output)")
    parser.add_argument("--iterations", type=int, default=None, help="training iterations per model")
    parser.add_argument("--test-images", type=int, default=24, help="held-out scenes to evaluate on")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=_cmd_demo)


# One entry per sub-command: adding one (eval, predict, export) is one function here.
_COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (_add_train, _add_demo)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sacseg", description="Scene parsing with scale-adaptive convolutions.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        parser.exit(2, f"sacseg {args.command}: error: {err}\n")
