"""Shared test fixtures: the real data samples, real images and batch-norm statistics, the tiny training run, one torch thread."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from sacseg.config import TrainConfig, config_from_dict


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread in each pytest-xdist worker (and the processes it starts): the workers already
    fill the cores, and OpenMP threads spinning against another worker's slow both down."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"

# Tiny and augmentation-free (two whole 64x64 scenes per batch): a few steps must lower the loss.
_TINY: dict[str, Any] = {
    "model": "fcn_resnet18",
    "num_classes": 7,
    "backbone_weights": None,
    "dataset": "scale_scenes",
    "scale_scenes_train_images": 2,
    "scale_scenes_val_images": 1,
    "scale_scenes_size": 64,
    "crop_size": 64,
    "scale_min": 1.0,
    "scale_max": 1.0,
    "flip": False,
    "batch_size": 2,
    "iterations": 4,
    "lr": 0.01,
    "schedule": "poly",
    "workers": 0,
    "precision": "fp32",
    "device": "cpu",
    "val_every": 4,
    "checkpoint_every": 1,
    "log_every": 1,
}


@pytest.fixture(scope="session", autouse=True)
def _data_check_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The data check's cache (``sacseg.data.check``) in a temporary folder: tests write nothing into ~/.cache."""
    folder = tmp_path_factory.mktemp("sacseg_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sacseg.data.check.cache_dir", lambda: folder)
        yield folder


@pytest.fixture(scope="session")
def tiny_settings() -> dict[str, Any]:
    """The keys of the tiny CPU training run (a fresh copy per session: change a copy of it)."""
    return dict(_TINY)


@pytest.fixture(scope="session")
def two_step_settings(tiny_settings: dict[str, Any]) -> dict[str, Any]:
    """The tiny run for the command line: two iterations validated at the end, a checkpoint at each."""
    return {**tiny_settings, "iterations": 2, "val_every": 2, "threads": 1, "out_dir": "unused"}


@pytest.fixture(scope="session")
def tiny_config(tiny_settings: dict[str, Any]) -> Callable[..., TrainConfig]:
    """``tiny_config(out_dir, **overrides)``: the tiny CPU config writing to ``out_dir``, with ``overrides``."""

    def make(out_dir: Path, **overrides: Any) -> TrainConfig:
        return config_from_dict(dict(tiny_settings, out_dir=str(out_dir), **overrides), source="test")

    return make


@pytest.fixture(scope="session")
def training_step() -> Callable[[nn.Module, torch.Tensor, torch.Tensor], dict[str, Any]]:
    """``training_step(model, images [N, 3, H, W], target [N, H, W])``: the model's output in training mode,
    the cross-entropy's gradients left on its parameters (to compare two models' steps)."""

    def step(model: nn.Module, images: torch.Tensor, target: torch.Tensor) -> dict[str, Any]:
        out = model.train()(images)
        F.cross_entropy(out["out"], target).backward()
        return out

    return step


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """One torch thread for a test module: two OpenMP threads on a busy 2-core machine spin against
    each other, and training steps get many times slower (benchmarks/DESIGN_MEASUREMENTS.md)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """/work/shared/data (read-only real samples); skips the test when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data samples not found at {SHARED_DATA}")
    return SHARED_DATA.resolve()


@pytest.fixture(scope="session")
def real_images(shared_data: Path) -> torch.Tensor:
    """Four real CamVid validation images, normalised and resized to ``[4, 3, 96, 128]``."""
    from sacseg.data import CamVid
    from sacseg.data.transforms import eval_transforms

    dataset = CamVid(shared_data / "camvid", "val", eval_transforms())
    images = torch.stack([dataset[i][0] for i in range(0, 100, 25)])
    return F.interpolate(images, size=(96, 128), mode="bilinear", align_corners=False)


@pytest.fixture(scope="session")
def real_bn_statistics(real_images: torch.Tensor) -> Callable[[nn.Module], nn.Module]:
    """A function putting a model in eval mode with every batch norm's statistics averaged over ``real_images``.

    A random-initialised network then sees the feature magnitudes real images give, as a trained one would.
    """

    def fit(model: nn.Module) -> nn.Module:
        for norm in model.modules():
            if isinstance(norm, nn.modules.batchnorm._BatchNorm):
                norm.reset_running_stats()
                norm.momentum = None  # a cumulative average over the batches
        model.train()
        with torch.no_grad():
            for batch in real_images.split(2):
                model(batch)
        return model.eval()

    return fit
