"""MkDocs hook: the table of training config keys, with types and defaults read from ``TrainConfig`` at build time."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any

import yaml
from mkdocs.exceptions import PluginError

from sacseg.config import TrainConfig

# The error messages of `sacseg train` describe a key's type the same way, so the table and them agree.
from sacseg.config import _describe as describe_type

PLACEHOLDER = "<!-- TrainConfig keys -->"
MEANINGS = Path(__file__).with_name("config_keys.yml")


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def config_tables(sections: list[dict[str, Any]]) -> str:
    """One Markdown table per section: key, type, default (as JSON, which YAML reads) and meaning.

    Raises PluginError when ``sections`` leave out a field of ``TrainConfig`` or name a key it lacks,
    so that a new key cannot reach the site without its meaning.
    """
    fields = {field.name: field for field in dataclasses.fields(TrainConfig)}
    described = [key for section in sections for key in section["keys"]]
    missing = [key for key in fields if key not in described]
    unknown = [key for key in described if key not in fields]
    if missing or unknown or len(described) != len(set(described)):
        raise PluginError(
            f"{MEANINGS}: keys of TrainConfig without a meaning: {missing}; not keys of TrainConfig: {unknown}; "
            f"each key once: {sorted({k for k in described if described.count(k) > 1})}"
        )
    types = typing.get_type_hints(TrainConfig)
    parts = []
    for section in sections:
        rows = [
            f"| `{key}` | {describe_type(types[key])} | `{json.dumps(_default(fields[key]))}` | {meaning} |"
            for key, meaning in section["keys"].items()
        ]
        parts.append(
            "\n".join([f"**{section['section']}**", "", "| key | type | default | meaning |", "| --- | --- | --- | --- |", *rows])
        )
    return "\n\n".join(parts)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """The placeholder replaced by the tables, on the page that holds it."""
    if PLACEHOLDER not in markdown:
        return markdown
    return markdown.replace(PLACEHOLDER, config_tables(yaml.safe_load(MEANINGS.read_text(encoding="utf-8"))))
