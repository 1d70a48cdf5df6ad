"""Griffe extension: the reStructuredText in sacseg's docstrings (``:func:`x```, ``Example::``) as Markdown."""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|obj):`(?P<tilde>~?)(?P<target>[\w.]+)`")
# "Example::" before an indented block: in Markdown the indented block is already code, and the
# blank line after the colon keeps the Google parser from reading "Example:" as a section.
_LITERAL_MARKER = re.compile(r"(?<=\w)::(?=\n\n)")


def _resolve(obj: griffe.Object, target: str) -> str:
    """The dotted path ``target`` names from ``obj``'s scope (relative names, ``.module`` of a package)."""
    head, _, rest = target.lstrip(".").partition(".")
    if target.startswith("sacseg."):
        return target
    try:
        path = obj.resolve(head)
    except griffe.NameResolutionError:
        return target
    return f"{path}.{rest}" if rest else path


class SphinxRoles(griffe.Extension):
    """Each role as an optional cross-reference (a link where the target is documented, code elsewhere), ``::`` as ``:``."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is None:
            return

        def link(match: re.Match[str]) -> str:
            target = match["target"]
            shown = target.rsplit(".", 1)[-1] if match["tilde"] else target.lstrip(".")
            return f'<autoref identifier="{_resolve(obj, target)}" optional><code>{shown}</code></autoref>'

        obj.docstring.value = _LITERAL_MARKER.sub(":", _ROLE.sub(link, obj.docstring.value))
