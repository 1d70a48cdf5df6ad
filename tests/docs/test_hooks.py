"""The site's build hooks (docs/hooks): config key tables, API coverage, equations, the docstrings' Sphinx roles."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import griffe
import pytest
import yaml
from mkdocs.exceptions import PluginError

from sacseg.config import TrainConfig

HOOKS = Path(__file__).resolve().parents[2] / "docs" / "hooks"


def _hook(name: str) -> ModuleType:
    """A hook module loaded from its file, as mkdocs loads it (docs/hooks is no package)."""
    spec = importlib.util.spec_from_file_location(f"docs_hook_{name}", HOOKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def meanings() -> list[dict[str, Any]]:
    return yaml.safe_load((HOOKS / "config_keys.yml").read_text(encoding="utf-8"))


def test_config_tables_have_a_row_per_key_with_its_default(meanings: list[dict[str, Any]]) -> None:
    tables = _hook("config_keys").config_tables(meanings)
    rows = [line for line in tables.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == [key for section in meanings for key in section["keys"]]
    assert len(rows) == len(dataclasses.fields(TrainConfig))
    assert "| `eval_scales` | list of float | `[1.0]` |" in tables
    assert "| `grad_clip` | float or null | `null` |" in tables


def test_config_tables_refuse_a_key_left_out_or_unknown(meanings: list[dict[str, Any]]) -> None:
    config_tables = _hook("config_keys").config_tables
    without_lr = [{**section, "keys": {k: v for k, v in section["keys"].items() if k != "lr"}} for section in meanings]
    with pytest.raises(PluginError, match=r"without a meaning: \['lr'\]"):
        config_tables(without_lr)
    with pytest.raises(PluginError, match=r"not keys of TrainConfig: \['learning_rate'\]"):
        config_tables([*meanings, {"section": "extra", "keys": {"learning_rate": "?"}}])


def test_api_coverage_accepts_any_path_of_a_name() -> None:
    undocumented = _hook("api_coverage").undocumented
    assert "sacseg.ops.sac_conv2d" in undocumented(set())
    # Documented where it is defined: every module exporting it is covered.
    missing = undocumented({"sacseg.ops.sac_conv.sac_conv2d"})
    assert "sacseg.ops.sac_conv2d" not in missing and "sacseg.ops.sac_conv.sac_conv2d" not in missing


def test_display_equations_become_mathml() -> None:
    page = "Before.\n\n$$\nB^t = \\sum_{i,j} K_{ij} Z^t_{ij} + b\n$$\n\nAfter, $5 and $$ inline stay."
    html = _hook("equations").on_page_markdown(page)
    assert html.count('<math xmlns="http://www.w3.org/1998/Math/MathML" display="block">') == 1
    assert html.startswith("Before.") and html.endswith("After, $5 and $$ inline stay.")


def test_sphinx_roles_become_links_and_literal_markers_colons() -> None:
    code = '''
def helper():
    """Help."""


def f():
    """Uses :func:`helper` and :func:`~sacseg.ops.sac_conv2d`.

    Example::

        f()
    """
'''
    with griffe.temporary_visited_module(code) as module:
        _hook("griffe_roles").SphinxRoles().on_object(obj=module["f"])
        text = module["f"].docstring.value
    assert f'<autoref identifier="{module.path}.helper" optional><code>helper</code></autoref>' in text
    assert '<autoref identifier="sacseg.ops.sac_conv2d" optional><code>sac_conv2d</code></autoref>' in text
    assert "Example:\n\n    f()" in text
