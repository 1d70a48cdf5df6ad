"""Collects the examples of README.md and docs/*.md as tests (issue 28); tests/docs/examples.py runs them."""

from __future__ import annotations

import pytest

from tests.docs.examples import PAGES, mark_slow

pytest_collect_file = PAGES.pytest()


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_slow(items)
