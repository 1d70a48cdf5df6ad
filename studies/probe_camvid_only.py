"""Re-train the CamVid study's "-only" rows with the scale regressors at a tenth of the lr, from the study's baseline.

The study (``studies/camvid.py``) trains the "-only" rows' regressors at the run's lr; this
probe repeats those two runs with ``scale_lr_mult: 0.1`` after a full study has left its baseline and
half-resolution data in ``--work``, and prints each run's validation mIoU (half resolution, the
study's selection number). docs/results/reading.md quotes its output.

    python -m studies.probe_camvid_only --work runs/study_camvid      # ~15 min on 2 cores
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from studies import camvid as study_camvid
from studies._study import Job, run_jobs, train_and_load


def _job(settings: dict[str, Any]) -> dict[str, Any]:
    return train_and_load(settings)[1]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m studies.probe_camvid_only", description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("runs/study_camvid"), help="the full study's --work folder")
    parser.add_argument("--out", type=Path, default=Path("runs/probe_camvid_only"), help="where the two runs go")
    parser.add_argument("--scale-lr-mult", type=float, default=0.1)
    args = parser.parse_args(argv)
    data = args.work / f"camvid_x{study_camvid.FULL['factor']}"
    if not (args.work / "baseline" / "best.pt").is_file() or not data.is_dir():
        parser.error(f"{args.work} has no baseline/best.pt or {data.name}/: run the full CamVid study first")
    jobs = []
    for title, model, from_baseline in reversed(study_camvid.VARIANTS):  # the longer (multiple) first
        if from_baseline:
            settings = study_camvid._settings(title, model, True, study_camvid.FULL, data, args.work, None)
            settings.update(scale_lr_mult=args.scale_lr_mult, out_dir=str(args.out / title))
            jobs.append(Job(title, _job, (settings,)))
    results = run_jobs(jobs, len(jobs))
    for title, summary in results.items():
        print(f"{title}: best validation mIoU {100 * summary['best_val_miou']:.1f} at iteration {summary['best_iteration']}")
    return results


if __name__ == "__main__":
    main()
