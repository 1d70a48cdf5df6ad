"""Tests of the package's layering: no import cycle between sacseg's modules or sub-packages, configs and
``--help`` without torch, and commands that only run a trained model load neither the training loop nor TensorBoard."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sacseg.checkpoint import atomic_torch_save
from sacseg.cli import _build_parser
from sacseg.config import TrainConfig, config_from_dict, save_config
from sacseg.factory import build_model_from_config

PACKAGE = Path(__file__).resolve().parents[1] / "sacseg"
REPO = PACKAGE.parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str) -> set[str]:
    """The sacseg modules that ``path`` imports: at module level and inside functions (which import
    later, but still depend on the module they name). Imports under ``if TYPE_CHECKING:`` never run."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m == "sacseg" or m.startswith("sacseg.")}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        # "from sacseg.data import ADE20K" names a class, not a module: keep what is a module. Every
        # module imports the root package before itself, so "from sacseg import __version__" adds
        # no dependency (while the root's lazy re-exports do).
        graph[name] = {m for m in _imports(path, name) if m in modules and m not in (name, "sacseg")}
    return graph


def _layer(module: str) -> str:
    """``sacseg.training.train`` -> ``sacseg.training``; top-level modules (``sacseg.config``) are layers of their own."""
    return ".".join(module.split(".")[:2])


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_imports_inside_functions_count(tmp_path: Path) -> None:
    # A module importing its sibling inside a function (as sacseg.ops._bilinear once imported
    # _triton_kernels) depends on it as much as one importing at the top; TYPE_CHECKING imports never run.
    source = tmp_path / "mod.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "from sacseg.a import x\n"
        "if TYPE_CHECKING:\n    from sacseg.b import y\n"
        "def f():\n    from sacseg import c\n    if True:\n        import sacseg.d\n"
        "class K:\n    def g(self):\n        from .e import z\n",
        encoding="utf-8",
    )
    found = _imports(source, "sacseg.pkg.mod")
    assert {"sacseg.a", "sacseg.c", "sacseg.d", "sacseg.pkg.e"} <= found
    assert not any(m.startswith("sacseg.b") for m in found)


def test_no_import_cycle_between_modules() -> None:
    graph = _graph()
    assert len(graph) > 30 and "sacseg.training.train" in graph["sacseg.training.demo"]  # the walk sees the package
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_no_import_cycle_between_sub_packages() -> None:
    layers: dict[str, set[str]] = {}
    for module, imports in _graph().items():
        # The package's own __init__ re-exports nothing eagerly: it is not a layer.
        if module == "sacseg":
            continue
        layers.setdefault(_layer(module), set()).update(_layer(m) for m in imports if _layer(m) not in (_layer(module), "sacseg"))
    assert {"sacseg.ops", "sacseg.nn", "sacseg.models", "sacseg.training", "sacseg.evaluation"} <= set(layers)
    assert _cycle(layers) is None, " -> ".join(_cycle(layers) or [])


# Run in a fresh interpreter: which modules the command line loaded, printed after it ran.
_RUN_AND_LIST_MODULES = """
import sys
from sacseg.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit_:
    code = exit_.code
print("MODULES", " ".join(sorted(sys.modules)))
sys.exit(code)
"""


def _loaded_modules(*args: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-c", _RUN_AND_LIST_MODULES, *args], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("MODULES "))
    return set(line.split()[1:])


_HEAVY = {"torch", "torchvision"}

# Run in a fresh interpreter: read and check a config, then list which of torch, torchvision are loaded.
_LOAD_CONFIG_AND_LIST_HEAVY = f"""
import sys
from sacseg.config import load_config
cfg = load_config(sys.argv[1])
assert (cfg.eval_mode, cfg.eval_crop_size, cfg.eval_scales, cfg.eval_flip) == ("slide", [64, 96], [0.5, 1.0], True)
print("HEAVY", *sorted(m for m in {sorted(_HEAVY)!r} if m in sys.modules))
"""


def test_configs_and_help_load_neither_torch_nor_torchvision(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("iterations: 2\neval_mode: slide\neval_crop_size: [64, 96]\neval_scales: [0.5, 1]\neval_flip: true\n")
    result = subprocess.run([sys.executable, "-c", _LOAD_CONFIG_AND_LIST_HEAVY, str(path)], capture_output=True, text=True,
                            timeout=300, cwd=REPO)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["HEAVY"]
    subparsers = next(a for a in _build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for args in (["--help"], *([command, "--help"] for command in subparsers.choices)):
        assert sorted(_loaded_modules(*args) & _HEAVY) == [], f"sacseg {' '.join(args)}"


def _training_stack(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.startswith(("sacseg.training", "tensorboard", "torch.utils.tensorboard")))


def test_eval_help_loads_no_training_module() -> None:
    modules = _loaded_modules("eval", "--help")
    assert _training_stack(modules) == []


@pytest.mark.slow  # a whole evaluation in a fresh interpreter
def test_a_whole_eval_run_loads_neither_the_training_loop_nor_tensorboard(
    tiny_config: Callable[..., TrainConfig], tmp_path: Path
) -> None:
    cfg = tiny_config(tmp_path)  # one 64x64 validation scene
    save_config(cfg, tmp_path / "config.yaml")
    model = build_model_from_config(cfg)
    atomic_torch_save({"model": model.state_dict(), "config": dataclasses.asdict(cfg)}, tmp_path / "model.pt")
    out = tmp_path / "eval.json"
    modules = _loaded_modules("eval", "--checkpoint", str(tmp_path / "model.pt"), "--device", "cpu", "--out", str(out))
    assert out.is_file()  # the evaluation ran to its end
    assert "sacseg.evaluation.evaluate" in modules and "sacseg.factory" in modules
    assert _training_stack(modules) == []
    # Nor any other extra's package: `pip install sacseg` evaluates.
    extras = {"tensorboard", "matplotlib", "cityscapesscripts", "onnx", "onnxruntime", "timm", "segmentation_models_pytorch"}
    assert sorted(m for m in modules if m.split(".")[0] in extras) == []


@pytest.mark.slow  # a training run in a fresh interpreter
def test_a_training_run_does_load_them(two_step_settings: dict[str, Any], tmp_path: Path) -> None:
    """The other side of the two tests above: the check sees the training stack where it is used."""
    save_config(config_from_dict(dict(two_step_settings, iterations=1, val_every=1)), tmp_path / "tiny.yaml")
    modules = _loaded_modules("train", "--config", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "run"))
    assert {"sacseg.training.train", "torch.utils.tensorboard"} <= set(_training_stack(modules))
