"""The ``sacseg`` command line: one sub-command per job, each a thin function over the library."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from sacseg.config import TrainConfig
    from sacseg.options import InferenceOptions

# Sub-commands import what they run when they run: `sacseg --help` and every `sacseg <command>
# --help` load no torch, and a command that does not train loads neither TensorBoard nor the
# training loop (tests check both).


def _cmd_train(args: argparse.Namespace) -> int:
    from sacseg.config import apply_overrides, load_config
    from sacseg.training.train import logged_to, train

    overrides = list(args.set) + [f"{key}={value}" for key, value in (("out_dir", args.out), ("device", args.device)) if value]
    cfg = apply_overrides(load_config(_train_config(args)), overrides)
    try:
        summary = train(cfg, resume=args.resume, overwrite=args.overwrite, check_data=not args.skip_data_check)
    except KeyboardInterrupt as err:  # RunInterrupted says where and how to resume
        print(f"sacseg train: {str(err) or 'interrupted before the run started'}", file=sys.stderr)
        return 130
    except Exception as err:
        log = logged_to(err)
        if log is None or isinstance(err, (ValueError, OSError)):  # main() prints those in one line
            raise
        print(f"sacseg train: error: {type(err).__name__}: {err} (traceback in {log})", file=sys.stderr)
        return 1
    if not summary.is_main:  # under torchrun every process returns; one summary is enough
        return 0
    if not summary.losses:
        print(f"nothing left to train: {summary.resumed_from} is at iteration {summary.iteration} of "
              f"{summary.total}; nothing was written to {summary.out_dir}")  # fmt: skip
        return 0
    best = f"best validation mIoU {100 * summary.best_miou:.2f}"
    if summary.best_checkpoint is not None:
        best += f" ({summary.best_checkpoint})"
    elif summary.resumed_from is not None:
        best += f", reached before {summary.resumed_from} (no best.pt of it in {summary.out_dir})"
    print(f"trained {summary.iteration} iterations, {best}; checkpoints in {summary.out_dir}")
    return 0


def _train_config(args: argparse.Namespace) -> Path:
    """``--config``, else the config that the run folder ``--out`` holds (to resume it)."""
    if args.config is not None:
        return Path(args.config)
    if args.out is None:
        raise ValueError("give --config, or --out with a run folder holding its config.yaml (to resume it)")
    path = Path(args.out) / "config.yaml"
    if not path.is_file():
        raise ValueError(f"no --config given and the run folder holds no config: {path} not found")
    return path


def _cmd_demo(args: argparse.Namespace) -> int:
    from sacseg.training.demo import run_demo

    report = run_demo(args.out, iterations=args.iterations, seed=args.seed, test_images=args.test_images)
    print(f"report: {report}")
    return 0


def _trained_model(args: argparse.Namespace, overrides: list[str]) -> tuple[nn.Module, TrainConfig]:
    """The checkpoint's (or ``--onnx`` file's) model and the run's config: ``--config`` (else the
    model's) with ``overrides``."""
    import torch

    from sacseg.evaluation.segmenter import load_model_and_config, load_onnx_and_config
    from sacseg.utils.device import resolve_device

    device = resolve_device(args.device, f"--device {args.device}")

    def report(note: str) -> None:
        print(f"sacseg {args.command}: {note}", file=sys.stderr)

    load, source = (load_onnx_and_config, args.onnx) if _onnx_file(args) else (load_model_and_config, args.checkpoint)
    model, cfg = load(source, device, args.config, overrides, report=report)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return model, cfg


def _onnx_file(args: argparse.Namespace) -> str | None:
    """``--onnx`` where the command has it and it was given."""
    return getattr(args, "onnx", None)


def _size(values: list[int] | None, flag: str) -> int | tuple[int, int] | None:
    """``--crop-size N`` -> N, ``--crop-size H W`` -> (H, W)."""
    if values is None:
        return None
    if len(values) > 2:
        raise ValueError(f"{flag} takes one number (a square) or two (H W), got {len(values)}: {values}")
    return values[0] if len(values) == 1 else (values[0], values[1])


def _inference_options(args: argparse.Namespace, cfg: TrainConfig) -> InferenceOptions:
    """The inference options given on the command line, the others from the config's ``eval_*`` keys;
    errors name the flag or the key."""
    from sacseg.options import InferenceOptions

    flags = {
        "mode": args.mode, "crop_size": _size(args.crop_size, "--crop-size"), "stride": _size(args.stride, "--stride"),
        "scales": args.scales, "flip": args.flip,
    }  # fmt: skip
    given = {option: value for option, value in flags.items() if value is not None}
    values = dataclasses.asdict(InferenceOptions.from_config(cfg)) | given

    def name(option: str) -> str:
        return "--" + option.replace("_", "-") if option in given else InferenceOptions.config_key(option)

    return InferenceOptions.named(values, name)


def _refuse_existing(path: Path, overwrite: bool, what: str) -> None:
    """ValueError naming ``path`` when it exists and ``--overwrite`` was not given: nothing written is lost unasked."""
    if path.exists() and not overwrite:
        raise ValueError(f"{what} {path} exists; give --overwrite to replace it, or --out another file")


def _cmd_eval(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from sacseg.data.protocol import torch_dataset
    from sacseg.evaluation.evaluate import evaluate
    from sacseg.evaluation.metrics import format_results, save_results_json
    from sacseg.factory import build_eval_dataset

    overrides = list(args.set) + ([f"data_root={args.data_root}"] if args.data_root is not None else [])
    model, cfg = _trained_model(args, overrides)
    options = _inference_options(args, cfg)
    split = args.split if args.split is not None else cfg.val_split
    source = Path(_onnx_file(args) or args.checkpoint)
    out = Path(args.out) if args.out is not None else source.parent / f"eval_{source.stem}_{split}_{options.tag()}.json"
    if out.is_dir():  # found now, not after minutes of evaluation
        raise ValueError(f"--out {out} is a folder; give the results file to write")
    _refuse_existing(out, args.overwrite, "results file")
    dataset = build_eval_dataset(cfg, split)
    classes, count = dataset.classes, len(dataset)
    loader = DataLoader(torch_dataset(dataset), batch_size=1, num_workers=min(cfg.workers, 2))  # images may differ in size
    results = evaluate(model, loader, cfg.num_classes, options=options, progress=True).compute()
    meta = {
        "onnx" if _onnx_file(args) else "checkpoint": str(source), "model": cfg.model, "dataset": cfg.dataset,
        "data_root": cfg.data_root,
        "split": split, "images": count, **dataclasses.asdict(options),
    }  # fmt: skip
    # The table first: a results file that cannot be written must not lose the scores.
    print(f"{cfg.model} on {cfg.dataset} {split} ({count} images; {options.describe()}):")
    print(format_results(results, classes), flush=True)
    save_results_json(results, out, classes, extra=meta)
    print(f"results: {out}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from sacseg.evaluation.onnx_model import OnnxModel
    from sacseg.evaluation.predict_files import find_image_files, predict_files

    images = find_image_files(args.inputs, out_dir=args.out)
    model, cfg = _trained_model(args, list(args.set))
    unreadable: list[Path] = []

    def skip(path: Path, err: ValueError) -> None:  # one line, and the other images still predicted
        unreadable.append(path)
        tqdm.write(f"sacseg predict: skipped: {str(err).splitlines()[0]}", file=sys.stderr)

    written = predict_files(
        model,
        cfg,
        images,
        args.out,
        fmt=args.format,
        options=_inference_options(args, cfg),
        progress=True,
        legend=not args.no_legend,
        on_unreadable=skip,
        scale_format=args.scale_format,
        class_labels=(model.classes, model.palette) if isinstance(model, OnnxModel) else None,
    )
    print(f"{len(written)} files for {len(images) - len(unreadable)} images in {args.out}")
    if unreadable:
        print(f"sacseg predict: {len(unreadable)} of {len(images)} images could not be read (named above)", file=sys.stderr)
        return 1
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from sacseg.evaluation.segmenter import Segmenter
    from sacseg.export.onnx_export import export_onnx

    _refuse_existing(Path(args.out), args.overwrite, "ONNX file")
    model, cfg = _trained_model(args, list(args.set))
    metadata = Segmenter(model, cfg).metadata()  # classes, palette, normalisation for the deployed file
    try:
        result = export_onnx(model, args.out, args.height, args.width, dynamic=args.dynamic, with_scales=args.with_scales,
                             opset=args.opset, rtol=args.rtol, metadata=metadata)  # fmt: skip
    except RuntimeError as err:  # onnxruntime disagrees, or a non-default ONNX domain
        print(f"sacseg export: {err}", file=sys.stderr)
        return 1
    checks = ", ".join(f"{error:.1e} at {'x'.join(map(str, shape))}" for shape, error in result.errors.items())
    print(f"{cfg.model}: wrote {result.path} (opset {result.opset}, outputs {', '.join(result.outputs)}); "
          f"onnxruntime vs PyTorch, max relative error {checks}")  # fmt: skip
    return 0


def _cmd_cityscapes_eval(args: argparse.Namespace) -> int:
    from sacseg.evaluation.cityscapes_eval import RESULT_FILE, cityscapes_official_eval, format_official_results

    try:
        results = cityscapes_official_eval(
            args.pred_dir, args.gt_root, args.out, split=args.split, instance_scores=args.instance_scores,
            quiet=not args.verbose,
        )  # fmt: skip
    except RuntimeError as err:  # the evaluator stopped on a file it could not use
        print(f"sacseg cityscapes-eval: {err}", file=sys.stderr)
        return 1
    print(f"official Cityscapes evaluation of {args.pred_dir} against {Path(args.gt_root) / 'gtFine' / args.split}:")
    print(format_official_results(results))
    print(f"results: {Path(args.out) / RESULT_FILE}")
    return 0


def _add_set_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (value read as YAML); repeatable")  # fmt: skip


def _add_train(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("train", help="train a model from a flat YAML config (works under torchrun)")
    parser.add_argument("--config", default=None,
                        help="a YAML file, e.g. configs/scale_scenes_sac_single_r18.yaml (default: OUT/config.yaml, "
                             "the config of the run in --out, to resume it)")  # fmt: skip
    _add_set_arg(parser)
    from sacseg.utils.device import DeviceName

    parser.add_argument("--device", choices=typing.get_args(DeviceName), default=None,
                        help="the device to train on, replacing the config's (default: the config key device)")  # fmt: skip
    parser.add_argument("--resume", metavar="PATH|auto", default=None,
                        help="continue from a checkpoint; 'auto' uses OUT/last.pt when it exists (default: start afresh)")  # fmt: skip
    parser.add_argument("--out", default=None, help="output folder (default: the config's out_dir)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run already in the output folder (its checkpoints, log, TensorBoard "
                             "events and config are deleted first); without it such a folder is refused")  # fmt: skip
    parser.add_argument("--skip-data-check", action="store_true",
                        help="start without decoding every image and label first (for huge data sets; a bad file "
                             "then stops the run when it is loaded); checked files are remembered, so the check is "
                             "mostly paid once")  # fmt: skip
    parser.set_defaults(func=_cmd_train)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="train baseline and SAC-single on generated ScaleScenes (CPU, minutes)")
    parser.add_argument("--out", default="demo_output", help="report folder")
    parser.add_argument("--iterations", type=int, default=None, help="training iterations per model (default: the demo's 300)")
    parser.add_argument("--test-images", type=int, default=24, help="held-out scenes to evaluate on")
    parser.add_argument("--seed", type=int, default=0, help="seed of both training runs")
    parser.set_defaults(func=_cmd_demo)


def _add_model_args(parser: argparse.ArgumentParser, onnx: bool = False) -> None:
    """``--checkpoint``, ``--config`` and ``--device``; with ``onnx``, ``--onnx`` as the alternative to ``--checkpoint``."""
    source = parser.add_mutually_exclusive_group(required=True) if onnx else parser
    either = "; no default: give it or --onnx" if onnx else ""
    source.add_argument(
        "--checkpoint", required=not onnx, help=f"a checkpoint written by sacseg train (best.pt, last.pt){either}"
    )
    if onnx:
        source.add_argument("--onnx", metavar="FILE",
                            help="a file written by sacseg export, run by onnxruntime (classes, palette, normalisation "
                                 "and config from its metadata); no default: give it or --checkpoint")  # fmt: skip
    parser.add_argument("--config", default=None,
                        help="YAML config for the data and inference keys (default: the one stored in the checkpoint)")  # fmt: skip
    from sacseg.utils.device import DeviceName

    parser.add_argument("--device", choices=typing.get_args(DeviceName), default="auto", help="auto: CUDA when available")


def _add_inference_args(parser: argparse.ArgumentParser) -> None:
    from sacseg.options import InferenceMode

    parser.add_argument("--mode", choices=typing.get_args(InferenceMode), default=None, help="default: config key eval_mode")
    parser.add_argument("--crop-size", type=int, nargs="+", default=None, metavar="N",
                        help="window size for --mode slide: N (square) or H W, e.g. 512 1024 "
                             "(default: config key eval_crop_size)")  # fmt: skip
    parser.add_argument("--stride", type=int, nargs="+", default=None, metavar="N",
                        help="window step for --mode slide: N or H W (default: config key eval_stride, "
                             "else the crop size)")  # fmt: skip
    parser.add_argument("--scales", type=float, nargs="+", default=None, metavar="S",
                        help="image scales whose probabilities are averaged, e.g. 0.5 0.75 1 1.25 1.5 1.75 "
                             "(default: config key eval_scales)")  # fmt: skip
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                        help="also average the left-right mirrored images (default: config key eval_flip)")  # fmt: skip


def _add_eval(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "eval", help="evaluate a checkpoint (or ONNX file) on a dataset split: per-class IoU, mIoU, accuracies"
    )
    _add_model_args(parser, onnx=True)
    parser.add_argument("--split", default=None, help="default: config key val_split")
    parser.add_argument("--data-root", default=None, help="the dataset's folder (default: config key data_root)")
    _add_set_arg(parser)
    _add_inference_args(parser)
    parser.add_argument("--out", default=None,
                        help="results JSON (default: beside the checkpoint or ONNX file, eval_NAME_SPLIT_OPTIONS.json, "
                             "e.g. eval_best_val_slide-512-341_ms0.75-1.0-1.25_flip.json)")  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="replace the results file if it exists (else refused)")
    parser.set_defaults(func=_cmd_eval)


def _add_predict(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("predict", help="predict image files: colour PNGs, overlays, scale heat maps, "
                                            "class-index PNGs or Cityscapes labelIds")  # fmt: skip
    from sacseg.options import PredictionFormat, ScaleFormat

    _add_model_args(parser, onnx=True)
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files, or folders searched for images")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--format", choices=typing.get_args(PredictionFormat), default="color",
                        help="color: pictures; index: class-index PNGs (<stem>_index.png); "
                             "cityscapes: labelId PNGs for the official evaluator")  # fmt: skip
    parser.add_argument("--no-legend", action="store_true",
                        help="color pictures without the strip naming the classes present (image-sized)")  # fmt: skip
    parser.add_argument("--scale-format", choices=typing.get_args(ScaleFormat), default="png",
                        help="--format color's scale maps: png: heat maps on the model's [min_scale, max_scale]; "
                             "npy, tiff: the raw float32 values, <stem>_scale_<layer>.npy or .tif")  # fmt: skip
    _add_set_arg(parser)
    _add_inference_args(parser)
    parser.set_defaults(func=_cmd_predict)


def _add_export(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("export", help="export a checkpoint to ONNX, checked against PyTorch in onnxruntime")
    _add_model_args(parser)
    parser.add_argument("--out", required=True, help="the .onnx file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists (else refused)")
    _add_set_arg(parser)
    parser.add_argument("--height", type=int, default=512, help="input height")
    parser.add_argument("--width", type=int, default=512, help="input width")
    parser.add_argument("--dynamic", action="store_true", help="dynamic batch, height and width")
    parser.add_argument("--with-scales", action="store_true", help="also output the scale maps (scale_<name>)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: 17)")
    parser.add_argument("--rtol", type=float, default=1e-4,
                        help="largest accepted max|onnxruntime - torch| / max|torch|")  # fmt: skip
    parser.set_defaults(func=_cmd_export)


def _add_cityscapes_eval(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "cityscapes-eval",
        help="score Cityscapes labelId predictions with the official cityscapesscripts evaluator",
        description="Runs cityscapesscripts' evaluateImgLists (IoU and iIoU of the 19 classes) on the labelId PNGs "
        "that 'sacseg predict --format cityscapes' writes, against GT_ROOT/gtFine/SPLIT, and writes its JSON into --out only.",
    )  # fmt: skip
    parser.add_argument("pred_dir", metavar="PRED_DIR", help="folder searched for <city>_<seq>_<frame>*.png predictions")
    parser.add_argument("--gt-root", required=True, help="the Cityscapes folder holding gtFine/")
    parser.add_argument("--split", default="val", help="the gtFine split to score")
    parser.add_argument("--out", required=True, help="folder for the evaluator's resultPixelLevelSemanticLabeling.json")
    parser.add_argument("--no-instance-scores", dest="instance_scores", action="store_false",
                        help="skip the instance-weighted iIoU (it reads *_gtFine_instanceIds.png)")  # fmt: skip
    parser.add_argument("--verbose", action="store_true", help="also print the evaluator's own report")
    parser.set_defaults(func=_cmd_cityscapes_eval)


# One entry per sub-command: adding one is one function here.
_COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_train, _add_demo, _add_eval, _add_predict, _add_export, _add_cityscapes_eval
)  # fmt: skip


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends each option's default to its help, except flags and defaults of None or an empty list,
    whose help says in words what happens without them."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.nargs == 0 or action.default is None or action.default == []:
            return action.help
        return super()._get_help_string(action)


def _build_parser() -> argparse.ArgumentParser:
    from sacseg import __version__

    parser = argparse.ArgumentParser(
        prog="sacseg", description="Scene parsing with scale-adaptive convolutions.", formatter_class=_HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--verbose", action="store_true", help="with --version: also torch, Triton and the CUDA self-check")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _COMMANDS:
        add(sub)
    for command in sub.choices.values():
        command.formatter_class = _HelpFormatter
    return parser


def main(argv: list[str] | None = None) -> int:
    from sacseg.utils.optional import MissingExtraError

    if sorted(sys.argv[1:] if argv is None else argv) == ["--verbose", "--version"]:
        import torch

        from sacseg import __version__
        from sacseg.ops import cuda_status

        print(f"sacseg {__version__}\ntorch {torch.__version__}\n{cuda_status(check=True)}")
        return 0
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, MissingExtraError) as err:  # OSError: files not read or written, a timeout
        parser.exit(2, f"sacseg {args.command}: error: {err}\n")
