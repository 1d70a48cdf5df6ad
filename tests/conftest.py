"""Shared test fixtures: the location of the real data samples, real images, real batch-norm statistics."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


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
