"""Report helpers shared by the benchmarks and the studies: run records, JSON written atomically, text tables."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import shlex
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from sacseg.utils.io import atomic_open
from sacseg.utils.revision import git_revision

__all__ = ["format_table", "jsonable", "run_record", "write_json"]


def run_record(module: str, argv: Sequence[str]) -> dict[str, Any]:
    """The command, the date (UTC), the git revision and the machine, for the raw JSON."""
    return {
        "command": f"python -m {module} " + shlex.join(argv),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git_revision": git_revision(),
        "machine": {
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
        },
    }


def jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def write_json(doc: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write ``doc`` atomically as standard JSON (NaN and infinities as null)."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        json.dump(jsonable(doc), handle, indent=1, allow_nan=False)
        handle.write("\n")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool = False) -> str:
    """Rows of strings as an aligned plain-text table, or a Markdown table."""
    if any(len(row) != len(headers) for row in rows):
        raise ValueError(f"every row needs {len(headers)} cells")
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "| --- |" + " ---: |" * (len(headers) - 1)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows)]
    lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in [headers, *rows]]  # fmt: skip
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
