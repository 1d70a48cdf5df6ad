"""Do SAC's scale maps stay alive when trained from scratch? Per-iteration scale statistics for regressor variants."""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from torch import Tensor

from benchmarks._report import format_table
from sacseg.config import config_from_dict
from sacseg.data import IGNORE_INDEX
from sacseg.evaluation.evaluate import evaluate
from sacseg.factory import build_datasets, build_model_from_config
from sacseg.training.data import make_train_loader, make_val_loader
from sacseg.training.demo import DEMO_SETTINGS
from sacseg.training.distributed import DistContext
from sacseg.training.loop import train_step
from sacseg.training.optim import build_optimizer, build_scheduler
from sacseg.training.state import StepSettings
from sacseg.training.train import seed_everything
from studies._study import Job, run_jobs

# name -> config overrides of the demo's settings; "clip" is the paper's regressor with one lr for all.
CANDIDATES: dict[str, dict[str, Any]] = {
    "clip": {"scale_bound": "clip", "scale_lr_mult": 1.0},
    "clip_lr0.1": {"scale_bound": "clip", "scale_lr_mult": 0.1},
    "clip_lr0.01": {"scale_bound": "clip", "scale_lr_mult": 0.01},
    "smooth": {"scale_bound": "smooth", "scale_lr_mult": 1.0},
    "smooth_lr0.1": {"scale_bound": "smooth", "scale_lr_mult": 0.1},
}


def _stats(scale: Tensor, low: float, high: float) -> dict[str, float]:
    # A smooth bound never reaches its bounds exactly: count pixels within 1% of the range.
    tol = 0.01 * (high - low)
    return {
        "low": float((scale <= low + tol).float().mean()),
        "high": float((scale >= high - tol).float().mean()),
        "mean": float(scale.mean()),
        "std": float(scale.std()),
    }


def probe(model_name: str, overrides: dict[str, Any], iterations: int, val_images: int, every: int, seed: int) -> dict[str, Any]:
    """Train ``model_name`` with the demo settings plus ``overrides``; scale statistics per ``every`` iterations."""
    values = dict(DEMO_SETTINGS, model=model_name, iterations=iterations, seed=seed, out_dir="unused",
                  scale_scenes_val_images=val_images, **overrides)  # fmt: skip
    cfg = config_from_dict(values, source="probe")
    torch.set_num_threads(1)
    seed_everything(cfg.seed, cfg.deterministic)
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    train_set, val_set = build_datasets(cfg)
    model = build_model_from_config(cfg)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer, 1, iterations)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    maps: dict[str, Tensor] = {}
    for name, regressor in model.scale_regressors.items():
        regressor.register_forward_hook(lambda m, i, o, name=name: maps.__setitem__(name, o.detach()))
    trace: list[dict[str, Any]] = []
    iteration, epoch = 0, 0
    start = time.perf_counter()
    while iteration < iterations:
        model.train()
        for images, targets in make_train_loader(cfg, train_set, ctx, epoch, 0):
            loss, _ = train_step(
                optimizer, scaler, images, targets, ctx, iteration, StepSettings(model, None, False), cfg.grad_clip
            )
            scheduler.step()
            iteration += 1
            if iteration % every == 0 or iteration in (1, 2, 5):
                trace.append({"iteration": iteration, "loss": loss}
                             | {n: _stats(m, cfg.min_scale, cfg.max_scale) for n, m in maps.items()})  # fmt: skip
            if iteration >= iterations:
                break
        epoch += 1
    metrics = evaluate(model, make_val_loader(cfg, val_set, ctx), cfg.num_classes, ignore_index=IGNORE_INDEX).compute()
    # Scale statistics on the validation images, in eval mode (what the demo's pictures show).
    model.eval()
    with torch.no_grad():
        for images, _ in make_val_loader(cfg, val_set, ctx):
            model(images)
            break
    final = {n: _stats(m, cfg.min_scale, cfg.max_scale) for n, m in maps.items()}
    return {"miou": metrics["miou"], "trace": trace, "final": final, "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=["sac_single_resnet18", "sac_multiple_resnet18"],
                        help="fcn_resnet18 (no maps, 'clip' only) gives the baseline's mIoU")  # fmt: skip
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--iterations", type=int, default=DEMO_SETTINGS["iterations"])
    parser.add_argument("--val-images", type=int, default=16)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    jobs = [
        Job(f"{m}/{c}/seed{s}", probe, (m, CANDIDATES[c], args.iterations, args.val_images, args.every, s))
        for m in args.models for c in args.candidates for s in args.seeds
    ]  # fmt: skip
    results = run_jobs(jobs, args.workers)
    rows = []
    for job in jobs:
        result = results[job.name]
        for step in result["trace"]:
            cells = [f"{n}: low {s['low']:.2f} high {s['high']:.2f} mean {s['mean']:.2f}"
                     for n, s in step.items() if isinstance(s, dict)]  # fmt: skip
            print(f"{job.name} it {step['iteration']:4d} loss {step['loss']:.3f}  " + "  ".join(cells))
        for name, s in result["final"].items() or [("-", None)]:
            stats = ["-"] * 4 if s is None else [f"{s[k]:.2f}" for k in ("low", "high", "mean", "std")]
            rows.append([job.name, f"{100 * result['miou']:.1f}", name, *stats, f"{result['seconds']:.0f}"])
    print()
    print(format_table(["run", "val mIoU", "map", "at low", "at high", "mean", "std", "s"], rows, markdown=True))


if __name__ == "__main__":
    main()
