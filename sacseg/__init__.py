"""sacseg: scene parsing with scale-adaptive convolutions (Zhang et al., ICCV 2017)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

# pyproject.toml holds the one version number; the installed package's metadata carries it here.
try:
    __version__ = version("sacseg")
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "unknown"
__all__ = ["Segmenter", "__version__"]


def __getattr__(name: str) -> Any:
    # Loaded on first use: `import sacseg` does not import torch.
    if name == "Segmenter":
        from sacseg.evaluation.segmenter import Segmenter

        return Segmenter
    raise AttributeError(f"module 'sacseg' has no attribute {name!r}")
