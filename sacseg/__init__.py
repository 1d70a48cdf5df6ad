"""sacseg: scene parsing with scale-adaptive convolutions (Zhang et al., ICCV 2017)."""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

# pyproject.toml holds the one version number; the installed package's metadata carries it here.
try:
    __version__ = version("sacseg")
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "unknown"
__all__ = ["InferenceOptions", "Segmenter", "__version__"]

# Where each name is defined: loaded on first use, so `import sacseg` does not import torch.
_LAZY = {"InferenceOptions": "sacseg.options", "Segmenter": "sacseg.evaluation.segmenter"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sacseg' has no attribute {name!r}")
