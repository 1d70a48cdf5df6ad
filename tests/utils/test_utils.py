"""Tests for the shared helpers: int-or-pair sizes, device resolution, optional dependencies and their extras, image files."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sacseg.utils.device import resolve_device
from sacseg.utils.io import read_image
from sacseg.utils.optional import MissingExtraError, import_optional
from sacseg.utils.pair import pair, positive_pair

REPO = Path(__file__).resolve().parents[2]


def test_pair_takes_an_int_or_two_and_names_the_argument() -> None:
    assert pair(3, "stride") == (3, 3)
    assert pair((2, 5), "stride") == (2, 5)
    assert pair([2, 5], "stride") == (2, 5)
    for bad in ((1, 2, 3), 1.5, "3", (1, 2.0)):
        with pytest.raises(ValueError, match="stride must be an int or a pair of ints"):
            pair(bad, "stride")  # type: ignore[arg-type]


def test_devices_resolve_and_cuda_without_cuda_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"^--device cuda: CUDA is not available here; use cpu \(or auto\)$"):
        resolve_device("cuda", "--device cuda")
    with pytest.raises(ValueError, match="device must be one of auto, cpu, cuda, got 'tpu'"):
        resolve_device("tpu")


def test_a_missing_optional_dependency_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # what an install without it sees
    from sacseg.training.monitor import _summary_writer

    with pytest.raises(MissingExtraError, match=r"TensorBoard logging .* pip install 'sacseg\[train\]'"):
        _summary_writer(Path("unused"))
    assert import_optional("json", "train", "unused").dumps([]) == "[]"


def _optional_imports() -> list[tuple[str, str, Path]]:
    """Every ``import_optional(module, extra, ...)`` in sacseg: (module, extra, file)."""
    found = []
    for path in (REPO / "sacseg").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "import_optional":
                module, extra = (arg.value for arg in node.args[:2] if isinstance(arg, ast.Constant))
                found.append((module, extra, path))
    return found


def test_every_optional_import_names_an_extra_of_pyproject_that_dev_installs() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    imports = _optional_imports()
    assert {extra for _, extra, _ in imports} >= {"train", "viz", "cityscapes", "export"}
    dev = " ".join(extras["dev"])
    for module, extra, path in imports:
        assert extra in extras, f"{path}: import_optional({module!r}) names extra {extra!r}, not in pyproject.toml"
        assert extra in dev, f"the dev extra does not install sacseg[{extra}]"


def test_positive_pair_refuses_empty_sizes() -> None:
    assert positive_pair([4, 2], "crop_size") == (4, 2)
    with pytest.raises(ValueError, match=r"crop_size must be positive, got \(0, 2\)"):
        positive_pair((0, 2), "crop_size")


def test_read_image_applies_the_exif_orientation(tmp_path: Path) -> None:
    # 40 wide, 20 high, its left half red: orientation 6 (as phones write) shows it turned 90 degrees
    # clockwise, 20 wide and 40 high with the red half on top.
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:, :20, 0] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    shown = np.asarray(read_image(tmp_path / "phone.jpg"))
    assert shown.shape == (40, 20, 3)
    assert shown[:20, :, 0].min() > 200 and shown[20:, :, 0].max() < 50
