"""Shared fixtures: the read-only real-data samples next to the repository."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``<repo>/../shared/data`` (cityscapes_sample, ade20k_sample, camvid); skips when absent."""
    root = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()
    if not root.is_dir():
        pytest.skip(f"shared data samples not found at {root}")
    return root
