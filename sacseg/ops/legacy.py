"""The migration path of programs that sacseg 0.1.0 exported: its operator's old schema rewritten into the current one on load.

sacseg 0.1.0 registered ``sacseg::sac_conv2d(Tensor input, Tensor scale, Tensor weight, Tensor?
bias, int[] stride, int[] padding, int[] dilation, bool project, bool native) -> (Tensor, Tensor)``:
two strategy flags, and the backward's tables as a second output. ``torch.export.load`` finds an
operator by its name and reads a node's arguments by the current schema, so it loads such a program
against today's ``sac_conv2d`` (the flags ignored) with a second output that no longer exists: the
program fails, or returns the wrong tensor, when it runs. :func:`load_exported_program` rewrites
those nodes into the current schema first: the flags dropped (today's kernels decide the strategy
when they run) and the tables, which no program could use, removed. The program it returns calls the
current operator; ``torch.export.save`` of it gives a file that ``torch.export.load`` reads.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from typing import IO, Any

import torch

__all__ = ["load_exported_program"]

_TARGET = "torch.ops.sacseg.sac_conv2d.default"
_FLAGS = ("project", "native")


def _graphs(value: Any) -> list[dict[str, Any]]:
    """Every serialized graph in ``value``: the program's and those nested in its nodes' arguments."""
    if isinstance(value, list):
        return [g for item in value for g in _graphs(item)]
    if not isinstance(value, dict):
        return []
    own = [value] if "nodes" in value and "outputs" in value else []
    return own + [g for item in value.values() for g in _graphs(item)]


def _tensor_names(value: Any) -> set[str]:
    """The names of the tensors that ``value`` (arguments, outputs) refers to."""
    if isinstance(value, list):
        return {name for item in value for name in _tensor_names(item)}
    if not isinstance(value, dict):
        return set()
    names = {value["as_tensor"]["name"]} if isinstance(value.get("as_tensor"), dict) else set()
    return names | {name for item in value.values() for name in _tensor_names(item)}


def _migrate(model: dict[str, Any]) -> bool:
    """Rewrites ``model``'s 0.1.0 operator nodes in place; whether there were any."""
    found = False
    for graph in _graphs(model):
        for node in graph["nodes"]:
            names = [argument["name"] for argument in node["inputs"]]
            if node["target"] != _TARGET or not set(_FLAGS) <= set(names):
                continue
            tables = _tensor_names(node["outputs"][1:])
            used = _tensor_names([other["inputs"] for other in graph["nodes"]]) | _tensor_names(graph["outputs"])
            if tables & used:
                raise ValueError(f"node {node.get('name')!r} of a sacseg 0.1.0 program uses the operator's internal tables")
            node["inputs"] = [argument for argument in node["inputs"] if argument["name"] not in _FLAGS]
            node["outputs"] = node["outputs"][:1]
            for name in tables:
                graph.get("tensor_values", {}).pop(name, None)
            found = True
    return found


def load_exported_program(f: str | os.PathLike[str] | IO[bytes]) -> torch.export.ExportedProgram:
    """``torch.export.load(f)`` for a program saved by any sacseg version (see the module docstring).

    Programs without a 0.1.0 node are loaded as they are.
    """
    if isinstance(f, (str, os.PathLike)):
        with open(f, "rb") as file:
            data = file.read()
    else:
        data = f.read()
    migrated = io.BytesIO()
    changed = False
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(migrated, "w", zipfile.ZIP_STORED) as target:
        for entry in source.infolist():
            content = source.read(entry)
            parts = entry.filename.split("/")
            if len(parts) >= 2 and parts[-2] == "models" and parts[-1].endswith(".json"):
                model = json.loads(content)
                if _migrate(model):
                    content, changed = json.dumps(model).encode(), True
            target.writestr(entry, content)
    migrated.seek(0)
    return torch.export.load(migrated if changed else io.BytesIO(data))
