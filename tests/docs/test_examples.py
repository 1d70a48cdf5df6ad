"""The rules of the pages' examples: every block is run or marked, markers and shown outputs are read as documented."""

from __future__ import annotations

from pathlib import Path

import pytest
from sybil import Document

from tests.docs.examples import Block, parse, same_output, updated_output, with_train_args


def _blocks(tmp_path: Path, text: str) -> list[Block]:
    page = tmp_path / "page.md"
    page.write_text(text)
    return [region.parsed for region in parse(Document(text, str(page)))]


def test_markers_and_shown_outputs_are_read(tmp_path: Path) -> None:
    blocks = _blocks(
        tmp_path,
        "```python\nprint(1)\n```\n\n```text\n1\n```\n\n"
        "<!-- not run: needs a GPU -->\n```bash\nnvidia-smi\n```\n\n"
        "<!-- run slow with: --set iterations=2 -->\n```bash\nsacseg train --config c.yaml\n```\n\n"
        "```yaml\nlr: 0.1\n```\n",
    )
    assert [block.language for block in blocks] == ["python", "bash", "bash"]
    assert blocks[0].shown is not None and blocks[0].shown.text == "1\n" and blocks[0].line == 1
    assert blocks[1].not_run == "needs a GPU" and blocks[1].shown is None
    assert blocks[2].slow and blocks[2].train_args == "--set iterations=2"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("```sh\nls\n```\n", "must be one of"),
        ("```\nls\n```\n", "must be one of"),
        ("<!-- skip -->\n```bash\nls\n```\n", "not a marker"),
        ("<!-- not run: hours -->\n```text\nout\n```\n", "never runs"),
        ("<!-- not run: hours -->\n```bash\nls\n```\n\n```text\nout\n```\n", "does not run as written"),
        ("<!-- run with: --set lr=1 -->\n```bash\nsacseg train\n```\n```text\nout\n```\n", "does not run as written"),
        ("<!-- run with: --set lr=1 -->\n```python\nx = 1\n```\n", "bash blocks"),
    ],
)
def test_a_block_cannot_slip_past(tmp_path: Path, text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        _blocks(tmp_path, text)


def test_train_args_go_after_each_train_command_before_its_comment() -> None:
    source = "sacseg train --config a.yaml \\\n    --out runs/a   # first\ntorchrun -m sacseg train --config b.yaml\nsacseg eval --checkpoint x\n"
    assert with_train_args(source, "--set lr=1") == (
        "sacseg train --config a.yaml      --out runs/a --set lr=1   # first\n"
        "torchrun -m sacseg train --config b.yaml --set lr=1\n"
        "sacseg eval --checkpoint x\n"
    )


def test_outputs_agree_up_to_scores_and_blanks() -> None:
    shown = "class   IoU\nroad  41.61\ncar     nan\nerror 1.6e-06\npixel accuracy 54.57  (7680 pixels)\n"
    assert same_output(shown, "class IoU\nroad 0.00\ncar 12.50\nerror 2.1e-07\npixel accuracy 3.00 (7680 pixels)")
    assert not same_output(shown, shown.replace("7680", "7681"))
    assert not same_output(shown, shown.replace("road", "sky"))
    assert not same_output(shown, shown + "one more line\n")


def test_an_ellipsis_in_a_shown_line_stands_for_any_text() -> None:
    shown = "data check: 12 files, 12 decoded now, 0 remembered in ...\nmean 33.47\n"
    printed = "data check: 12 files, 12 decoded now, 0 remembered in /home/a/.cache/sacseg/data_check/0a1b.json\nmean 2.50\n"
    assert same_output(shown, printed)
    assert not same_output(shown, printed.replace("12 decoded", "0 decoded"))
    assert not same_output("a ... b\n", "a x c\n")
    # The update keeps the shown line with "..." and takes every other printed line, scores included.
    assert updated_output(shown, printed) == "data check: 12 files, 12 decoded now, 0 remembered in ...\nmean 2.50"
    assert updated_output(shown, printed + "one more line\n") == printed + "one more line"
