"""Fixtures of the evaluation tests: every module runs its tiny models on one torch thread."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread(single_thread: None) -> None:
    """Module-wide, and so set before the module's own fixtures train anything."""
