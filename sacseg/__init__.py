"""sacseg: scene parsing with scale-adaptive convolutions (Zhang et al., ICCV 2017)."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Segmenter", "__version__"]


def __getattr__(name: str) -> Any:
    # Loaded on first use: `import sacseg` (and so `sacseg --help`) does not import torch.
    if name == "Segmenter":
        from sacseg.engine.segmenter import Segmenter

        return Segmenter
    raise AttributeError(f"module 'sacseg' has no attribute {name!r}")
