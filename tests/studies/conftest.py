"""The benchmarks set process-wide torch state from their arguments; each test gets it back as it was."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_torch_settings() -> Iterator[None]:
    """``--threads 1`` must not slow every later test down, nor ``--device cuda`` leave cuDNN autotuning on."""
    threads, cudnn_benchmark = torch.get_num_threads(), torch.backends.cudnn.benchmark
    yield
    torch.set_num_threads(threads)
    torch.backends.cudnn.benchmark = cudnn_benchmark
