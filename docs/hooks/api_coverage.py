"""MkDocs hook: the build fails when a public name of sacseg has no entry in the API reference."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from mkdocs.exceptions import PluginError

import sacseg

# mkdocstrings gives each documented object an anchor named by its dotted path.
_ANCHOR = re.compile(r'\bid="(sacseg(?:\.\w+)+)"')
_anchors: set[str] = set()


def public_names() -> Iterator[tuple[str, str, Any]]:
    """``(module, name, object)`` for each public name: a module's ``__all__``, else the functions and
    classes it defines; modules and packages with a leading underscore in their path are private."""
    for info in pkgutil.walk_packages(sacseg.__path__, "sacseg."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        module = importlib.import_module(info.name)
        names = getattr(module, "__all__", None)
        if names is None:
            names = [
                name
                for name, obj in vars(module).items()
                if not name.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__module__ == info.name
            ]
        for name in names:
            yield info.name, name, getattr(module, name)


def undocumented(anchors: set[str]) -> list[str]:
    """The public names none of whose paths (where it is defined, or any module exporting it) has an anchor."""
    paths: dict[int, set[str]] = defaultdict(set)
    entries = list(public_names())
    for module, name, obj in entries:
        paths[id(obj)].add(f"{module}.{name}")
    return sorted(f"{module}.{name}" for module, name, obj in entries if not paths[id(obj)] & anchors)


def on_page_content(html: str, **kwargs: Any) -> str:
    """Collects the anchors of every page."""
    _anchors.update(_ANCHOR.findall(html))
    return html


def on_post_build(**kwargs: Any) -> None:
    """Checks the collected anchors against sacseg's public names."""
    missing = undocumented(_anchors)
    _anchors.clear()  # `mkdocs serve` rebuilds in the same process
    if missing:
        raise PluginError(f"public names missing from the API reference (docs/api/*.md): {', '.join(missing)}")
