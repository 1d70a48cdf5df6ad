"""Tests for what a training run shows: validation bar and scores (terminal, train.log, TensorBoard), lr, images/s."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tensorboard.backend.event_processing import event_accumulator

from sacseg.config import TrainConfig
from sacseg.data import ScaleScenes
from sacseg.evaluation.metrics import format_results
from sacseg.factory import build_model_from_config
from sacseg.training import loop, monitor
from sacseg.training.train import TrainResult, train

# Each validation pretends to take this long (a clock offset, not a sleep).
_VALIDATION_SECONDS = 1000.0


@pytest.fixture(scope="module")
def run(tiny_config: Callable[..., TrainConfig], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrainResult, str, str]:
    """SAC-single, 3 iterations validated after each, a validation made to last 1000 s: (out_dir, summary, stdout, stderr)."""
    out = tmp_path_factory.mktemp("run")
    offset = [0.0]
    real_clock, real_evaluate = time.perf_counter, loop.evaluate

    def slow_evaluate(*args: Any, **kwargs: Any) -> Any:
        offset[0] += _VALIDATION_SECONDS
        return real_evaluate(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch, _Capture() as captured:
        patch.setattr(loop.time, "perf_counter", lambda: real_clock() + offset[0])
        patch.setattr(loop, "evaluate", slow_evaluate)
        # 6 training scenes: one epoch of 3 steps, so a step after a validation is not the first of an epoch
        cfg = tiny_config(
            out, model="sac_single_resnet18", iterations=3, val_every=1, checkpoint_every=3, scale_scenes_train_images=6
        )
        summary = train(cfg)
    return out, summary, captured.out, captured.err


class _Capture:
    """stdout and stderr of a block (a module-scoped fixture cannot use capsys)."""

    def __enter__(self) -> _Capture:
        import contextlib
        import io

        self._out, self._err = io.StringIO(), io.StringIO()
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(contextlib.redirect_stdout(self._out))
        self._stack.enter_context(contextlib.redirect_stderr(self._err))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
        self.out, self.err = self._out.getvalue(), self._err.getvalue()


def _events(out: Path) -> event_accumulator.EventAccumulator:
    accumulator = event_accumulator.EventAccumulator(str(out / "tb"), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def test_validation_scores_reach_terminal_log_and_tensorboard(run: tuple[Path, TrainResult, str, str]) -> None:
    out, summary, stdout, stderr = run
    metrics = summary.last_metrics
    # terminal: a bar per validation, then the per-class table in percent. Each bar opens at 0%; tqdm
    # draws its 100% once at close, and once more before if the step outlasted its refresh interval
    # (0.1 s, a loaded machine): counting 100% lines failed by timing.
    assert stderr.count("val:   0%") == 3 and "val: 100%" in stderr and "1/1" in stderr
    assert f"iteration 3 validation:\n{format_results(metrics, ScaleScenes.classes)}" in stdout
    # train.log, in percent
    log = (out / "train.log").read_text()
    line = f"iteration 3 validation mIoU {100 * metrics['miou']:.2f} pixel acc {100 * metrics['pixel_acc']:.2f}"
    assert line in log
    per_class = re.search(r"iteration 3 validation IoU per class \(percent, nan: absent\): (.*)", log)
    assert per_class is not None
    expected = ", ".join(f"{name} {100 * iou:.2f}" for name, iou in zip(ScaleScenes.classes, metrics["iou"]))
    assert per_class.group(1) == expected
    assert f"best validation mIoU {100 * summary.best_miou:.2f}" in log
    # TensorBoard: per-class IoU at each validation, the classes that were scored
    events = _events(out)
    tags = events.Tags()["scalars"]
    for name, iou in zip(ScaleScenes.classes, metrics["iou"]):
        if iou == iou:  # not NaN
            values = events.Scalars(f"val/iou/{name}")
            assert [v.step for v in values] == [1, 2, 3] and values[-1].value == pytest.approx(iou)
        else:
            assert f"val/iou/{name}" not in tags
    assert events.Scalars("val/miou")[-1].value == pytest.approx(metrics["miou"])


def test_validation_pictures_in_tensorboard(run: tuple[Path, TrainResult, str, str]) -> None:
    out = run[0]
    images = _events(out).Tags()["images"]
    # one ScaleScenes val image of 64x64: image | prediction | ground truth, and the classifier's scale map
    assert set(images) == {"val/prediction/0", "val/scale_classifier/0"}
    pictures = _events(out).Images("val/prediction/0")
    assert [p.step for p in pictures] == [1, 2, 3]
    assert (pictures[0].width, pictures[0].height) == (3 * 64, 64)
    assert [p.step for p in _events(out).Images("val/scale_classifier/0")] == [1, 2, 3]


def test_images_per_second_leaves_validation_out(run: tuple[Path, TrainResult, str, str]) -> None:
    out = run[0]
    rates = _events(out).Scalars("train/images_per_s")
    assert [r.step for r in rates] == [1, 2, 3]
    # a validation "took" 1000 s: counted, the steps after one would read 0.002 images/s
    assert min(r.value for r in rates) > 2 / 60
    logged = re.findall(r"iteration \d/3 loss \S+ lr \S+ (\S+) img/s", (out / "train.log").read_text())
    assert len(logged) == 3 and min(float(v) for v in logged) > 2 / 60


def test_logged_lr_is_the_lr_the_step_used(
    tiny_config: Callable[..., TrainConfig], run: tuple[Path, TrainResult, str, str]
) -> None:
    out = run[0]
    cfg = tiny_config(out, iterations=3)
    lrs = [v.value for v in _events(out).Scalars("train/lr")]
    # poly: step i (from 0) runs at lr * (1 - i / 3) ** 0.9; the first step at lr itself
    expected = [cfg.lr * (1 - i / 3) ** cfg.poly_power for i in range(3)]
    assert lrs == pytest.approx(expected, rel=1e-6)


def test_large_validation_pictures_are_subsampled(tiny_config: Callable[..., TrainConfig], tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, model="sac_single_resnet18")
    model = build_model_from_config(cfg)
    val_set = ScaleScenes(1, size=600, seed=1)
    shapes: dict[str, tuple[int, ...]] = {}

    class _Writer:
        def add_image(self, tag: str, picture: Any, step: int, dataformats: str) -> None:
            shapes[tag] = picture.shape

    monitor._validation_pictures(model, val_set, cfg, 1, _Writer())  # type: ignore[arg-type]
    # 600 px > 512: every second pixel, three panels side by side
    assert shapes == {"val/prediction/0": (300, 900, 3), "val/scale_classifier/0": (300, 300, 3)}
    assert model.training  # put back as it was
