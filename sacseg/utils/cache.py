"""sacseg's cache folder: ``$SACSEG_CACHE``, else ``$XDG_CACHE_HOME/sacseg``, else ``~/.cache/sacseg``."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """Where sacseg keeps what it can compute again (compiled kernels, data checks); read at each call, not created."""
    root = os.environ.get("SACSEG_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "sacseg"
    )
    return Path(root)
