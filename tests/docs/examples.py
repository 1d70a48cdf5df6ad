"""The examples of README.md and docs/*.md as tests: every Python and shell block runs, or says why not.

Each fenced block of a page is one of these languages: ``python`` and ``bash`` (examples), ``text``
and ``yaml`` (shown, never run). Any other language, or none, fails collection: a block cannot slip
past the tests by its fence. The HTML comment right before an example says how it runs:

- none: it runs as it stands;
- ``<!-- run with: ARGS -->`` (bash): ARGS are appended to each command line that runs
  ``sacseg train``, so a page can show a real training command and the test can train two steps;
- ``<!-- run slow ... -->`` (either form): as above, in the slow test run only;
- ``<!-- not run: REASON -->``: not run (needs a GPU, a download, real Cityscapes, hours); the test
  reports it as skipped with REASON.

A ``text`` block right after a run example is the output it shows: the test compares it with what
the example printed (stdout), reading every decimal number (and nan) as equal to any other, since
the last digits of a score may differ from machine to machine; ``...`` in a shown line stands for any
text there (a path under the user's home, a hash of a temporary folder). ``SACSEG_DOCS_UPDATE=1``
writes what the examples printed into the pages instead (``make docs-outputs``), keeping each shown
line with ``...`` that still agrees. Only examples that run as written (no marker, or ``run slow``)
may show an output.

The examples of a page run in order in one namespace and one working folder (``workspace.create``:
the repository's configs and tiny generated data sets where the pages expect real ones), on one
thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from sybil import Document, Example, Region, Sybil
from sybil.parsers.markdown.lexers import RawFencedCodeBlockLexer

from . import workspace

EXAMPLES = ("python", "bash")
SHOWN = ("text", "yaml")
UPDATE = os.environ.get("SACSEG_DOCS_UPDATE") == "1"
# A shell example's time limit: the longest (an ONNX export) takes well under a minute.
TIMEOUT_S = 300

_FENCES = RawFencedCodeBlockLexer(
    info_pattern=re.compile(r"(?P<language>[^\n]*)$\n", re.MULTILINE), mapping={"language": "language", "source": "source"}
)
_MARKER = re.compile(r"\s*(?:not run:\s*(?P<reason>\S.*?)|run(?P<slow> slow)?(?: with:\s*(?P<args>\S.*?))?)\s*", re.DOTALL)
# A score: a decimal number (an error 1.6e-06 too), or nan where a class is absent (a near-empty class may flip between the two).
_SCORE = re.compile(r"-?\d+\.\d+(?:e[-+]?\d+)?|\bnan\b")
# In a shown line: any text (a path that differs from machine to machine).
_ELLIPSIS = "..."
_STATE = "__sacseg_docs__"


@dataclasses.dataclass(frozen=True)
class Shown:
    """A text block after an example: its content and where that lies in the page."""

    text: str
    start: int
    end: int


@dataclasses.dataclass(frozen=True)
class Block:
    """One example: its code, the line before its first, and what its marker says."""

    language: str
    source: str
    line: int
    not_run: str | None = None
    slow: bool = False
    train_args: str = ""
    shown: Shown | None = None


@dataclasses.dataclass
class _PageState:
    """A page's working folder, and the outputs to write into it under ``SACSEG_DOCS_UPDATE=1``."""

    path: str
    work: Path
    threads: int
    updates: list[tuple[Shown, str]] = dataclasses.field(default_factory=list)


def _marker(document: Document, start: int) -> re.Match[str] | None:
    """The marker right before ``start`` (only blank space between), or None; another comment there is an error."""
    before = document.text[:start].rstrip()
    if not before.endswith("-->"):
        return None
    opening = before.rfind("<!--")
    marker = _MARKER.fullmatch(before[opening + 4 : -3])
    if marker is None:
        raise ValueError(f"{document.path}, {document.line_column(opening)}: not a marker: {before[opening:]}")
    return marker


def parse(document: Document) -> list[Region]:
    """The examples of a page, each with its marker and the output it shows."""
    fences = list(_FENCES(document))
    regions = []
    for i, fence in enumerate(fences):
        language, source = fence.lexemes["language"].strip(), fence.lexemes["source"]
        where = f"{document.path}, {document.line_column(fence.start)}"
        if language not in EXAMPLES + SHOWN:
            raise ValueError(f"{where}: a fenced block must be one of {', '.join(EXAMPLES + SHOWN)}, got {language!r}")
        marker = _marker(document, fence.start)
        if language in SHOWN:
            if marker is not None:
                raise ValueError(f"{where}: a marker before a {language} block, which never runs")
            continue
        following = fences[i + 1] if i + 1 < len(fences) else None
        shown = None
        if (
            following is not None
            and following.lexemes["language"].strip() == "text"
            and not document.text[fence.end : following.start].strip()
        ):
            start = following.start + following.lexemes["source"].offset
            shown = Shown(str(following.lexemes["source"]), start, start + len(following.lexemes["source"]))
        if marker is not None and (marker["reason"] or marker["args"]) and shown is not None:
            raise ValueError(f"{where}: output shown after an example that does not run as written")
        block = Block(
            language,
            str(source),
            line=document.text.count("\n", 0, fence.start + source.offset),
            not_run=marker["reason"] if marker else None,
            slow=bool(marker and marker["slow"]),
            train_args=(marker["args"] or "") if marker else "",
            shown=shown,
        )
        if block.train_args and language != "bash":
            raise ValueError(f"{where}: 'run with:' applies to sacseg train commands in bash blocks")
        regions.append(Region(fence.start, fence.end, block, evaluate))
    return regions


def with_train_args(source: str, args: str) -> str:
    """``source`` with ``args`` after each command line that runs ``sacseg train`` (before a trailing comment)."""
    lines = source.replace("\\\n", " ").splitlines()
    pattern = re.compile(r"^(?P<command>.*\bsacseg train\b.*?)(?P<comment>\s+#.*)?$")
    return "\n".join(pattern.sub(rf"\g<command> {args}\g<comment>", line) for line in lines) + "\n"


def _state(example: Example) -> _PageState:
    """The page's state, made by its first example that runs."""
    if _STATE not in example.namespace:
        example.namespace[_STATE] = _PageState(example.path, workspace.create(), torch.get_num_threads())
        # One thread: two OpenMP threads on a busy 2-core machine are several times slower.
        torch.set_num_threads(1)
    return example.namespace[_STATE]


def _run_python(block: Block, example: Example, work: Path) -> str:
    code = compile("\n" * block.line + block.source, example.path, "exec", dont_inherit=True)
    printed = io.StringIO()
    before = Path.cwd()
    os.chdir(work)  # contextlib.chdir is Python 3.11+
    try:
        with contextlib.redirect_stdout(printed):
            exec(code, example.namespace)
    finally:
        os.chdir(before)
    return printed.getvalue()


def _run_bash(block: Block, work: Path) -> str:
    script = with_train_args(block.source, block.train_args) if block.train_args else block.source
    env = {
        **os.environ,
        # The sacseg and python of the environment running the tests, whatever PATH said.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "OMP_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
    }
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    if done.returncode != 0:
        raise AssertionError(f"exit status {done.returncode} of\n{script}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}")
    return done.stdout


def _normalised(line: str) -> str:
    return " ".join(_SCORE.sub("#.#", line).split())


def _line_agrees(shown: str, printed: str) -> bool:
    """Whether a shown line agrees with a printed one: blanks aside, every score equal to any other,
    ``...`` in the shown line standing for any text."""
    parts = [re.escape(_normalised(part)) for part in shown.split(_ELLIPSIS)]
    return re.fullmatch(".*".join(parts), _normalised(printed)) is not None


def same_output(shown: str, printed: str) -> bool:
    """Whether two outputs agree line by line, blanks aside, reading every score as equal to any other
    and ``...`` in a shown line as any text."""
    shown_lines, printed_lines = shown.strip("\n").splitlines(), printed.strip("\n").splitlines()
    return len(shown_lines) == len(printed_lines) and all(map(_line_agrees, shown_lines, printed_lines))


def updated_output(shown: str, printed: str) -> str:
    """What ``SACSEG_DOCS_UPDATE=1`` writes for an example: the printed output, except that a shown
    line with ``...`` stays where the printed line agrees with it (same line count only)."""
    shown_lines, printed_lines = shown.strip("\n").splitlines(), printed.strip("\n").splitlines()
    if len(shown_lines) != len(printed_lines):
        return printed.strip("\n")
    kept = (s if _ELLIPSIS in s and _line_agrees(s, p) else p for s, p in zip(shown_lines, printed_lines))
    return "\n".join(kept)


def evaluate(example: Example) -> None:
    """Runs one example (or skips it, naming the reason) and checks the output it shows."""
    block: Block = example.parsed
    if block.not_run is not None:
        pytest.skip(f"{Path(example.path).relative_to(workspace.REPO)}:{example.line} not run: {block.not_run}")
    state = _state(example)
    printed = _run_python(block, example, state.work) if block.language == "python" else _run_bash(block, state.work)
    if block.shown is None:
        return
    if UPDATE:  # every difference, scores too: the page then shows what this run printed
        updated = updated_output(block.shown.text, printed)
        if block.shown.text.strip("\n") != updated:
            state.updates.append((block.shown, updated))
        return
    if same_output(block.shown.text, printed):
        return
    raise AssertionError(f"the output shown differs from the printed one:\n--- shown\n{block.shown.text}--- printed\n{printed}")


def teardown(namespace: dict[str, Any]) -> None:
    """Writes the updated outputs into the page, deletes the working folder, gives torch its threads back."""
    state: _PageState | None = namespace.get(_STATE)
    if state is None:
        return
    if state.updates:
        text = Path(state.path).read_text(encoding="utf-8")
        for shown, printed in sorted(state.updates, key=lambda update: -update[0].start):
            text = text[: shown.start] + printed.rstrip("\n") + "\n" + text[shown.end :]
        Path(state.path).write_text(text, encoding="utf-8")
    workspace.remove(state.work)
    torch.set_num_threads(state.threads)


def mark_slow(items: list[pytest.Item]) -> None:
    """Marks the items of ``run slow`` examples ``slow``, so that ``-m 'not slow'`` leaves them out."""
    for item in items:
        example = getattr(item, "example", None)
        if isinstance(example, Example) and isinstance(example.parsed, Block) and example.parsed.slow:
            item.add_marker(pytest.mark.slow)


# README.md and the site's pages; docs/results/reading*.md are part of results.md, not pages.
PAGES = Sybil(parsers=[parse], path=str(workspace.REPO), patterns=["README.md", "docs/*.md", "docs/api/*.md"], teardown=teardown)
