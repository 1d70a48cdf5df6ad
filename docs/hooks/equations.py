"""MkDocs hook: ``$$ ... $$`` blocks become MathML at build time, so equations render with no script from a CDN."""

from __future__ import annotations

import re
from typing import Any

from latex2mathml.converter import convert

# A display equation on lines of its own; the site is read offline, where MathJax could not load.
_DISPLAY = re.compile(r"^\$\$\n(?P<tex>.+?)\n\$\$$", re.MULTILINE | re.DOTALL)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """Each display equation as a ``<math display="block">`` element (Chromium and Firefox render MathML)."""
    return _DISPLAY.sub(lambda match: convert(match["tex"], display="block"), markdown)
