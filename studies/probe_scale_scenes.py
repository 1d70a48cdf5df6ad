"""Can a ResNet-18 learn ScaleScenes' object classes at the study's budget? Train the baseline (stage 1's
settings) for a few hundred iterations on one thread and report per-class IoU on held-out scenes and iterations/s.

    python -m studies.probe_scale_scenes --iterations 400 --work /tmp/probe_ss   # ~5 min on one core
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from sacseg.config import config_from_dict
from sacseg.data import ScaleScenes
from sacseg.evaluation.evaluate import evaluate
from sacseg.training.train import train
from studies._study import load_trained
from studies.scalescenes import FULL, TEST_SEED, stage_settings


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m studies.probe_scale_scenes", description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--test-images", type=int, default=32)
    parser.add_argument("--work", type=Path, default=Path("/tmp/probe_scale_scenes"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = stage_settings("fcn_resnet18", 0, FULL, args.work / "baseline")
    settings.update(iterations=args.iterations, val_every=max(1, args.iterations // 4), checkpoint_every=args.iterations)
    start = time.perf_counter()
    train(config_from_dict(settings, source="probe"), overwrite=True)
    seconds = time.perf_counter() - start
    test_set = ScaleScenes(args.test_images, size=FULL["size"], seed=TEST_SEED)
    scores = evaluate(load_trained(settings, "last.pt"), DataLoader(test_set, batch_size=1), len(test_set.classes)).compute()
    report = {
        "iterations": args.iterations,
        "seconds": seconds,
        "iterations_per_s": args.iterations / seconds,
        "miou": scores["miou"],
        "iou": dict(zip(test_set.classes, scores["iou"])),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
