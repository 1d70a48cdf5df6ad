"""Checkpoints: saved atomically with RNG states, labels and a format version, read back upgraded, with errors naming the file."""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sacseg.config import TrainConfig, config_from_dict
from sacseg.labels import record_labels
from sacseg.utils.io import atomic_open

__all__ = [
    "CHECKPOINT_FORMAT_VERSION",
    "atomic_torch_save",
    "capture_rng_state",
    "load_checkpoint",
    "migrate_checkpoint",
    "read_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
]

# The layout ``save_checkpoint`` writes. A change to it raises this by one and adds the step from
# the previous version to ``_UPGRADES``, so every file written before still reads.
CHECKPOINT_FORMAT_VERSION = 2


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save(obj, path)`` through a temporary file, fsync and ``os.replace``.

    A reader, or a crash at any moment, sees the old file or the complete new one, never a part.
    A failed write (disk full, ...) is an OSError naming ``path``; the old file stays.
    """
    with atomic_open(path, "wb") as handle:
        try:
            torch.save(obj, handle)
        except RuntimeError as err:
            # torch's zip writer reports a short write as "[enforce fail at inline_container.cc:...]
            # unexpected pos ..."; atomic_open turns the OSError into "cannot write <path>: ...".
            raise OSError(f"torch.save failed, is the disk full? ({str(err).splitlines()[0]})") from err


def capture_rng_state() -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's global generators (CPU and every CUDA device).

    Stored as tensors and plain numbers so ``torch.load(weights_only=True)`` accepts them.
    """
    np_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back the generator states saved by ``capture_rng_state``."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _non_finite_parameter(model: nn.Module) -> str | None:
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    iteration: int,
    epoch: int,
    config: dict[str, Any],
    best_metric: float,
    git_revision: str = "unknown",
    labels: dict[str, Any] | None = None,
) -> None:
    """Write everything a run needs to continue exactly, atomically.

    ``iteration`` counts completed optimisation steps; ``epoch`` is the epoch they are in. Refuses
    (ValueError) to write a model whose weights or buffers are not finite, so the previous file
    at ``path`` stays the last good one.

    ``labels`` (``sacseg.labels.record_labels``: class names and colours) make the file
    self-contained for inference; by default they are resolved from ``config`` when it holds every
    ``TrainConfig`` key (what ``sacseg train`` passes; a class-name file is read now, relative to
    the working directory the run has), else none is recorded.
    """
    bad = _non_finite_parameter(model)
    if bad is not None:
        raise ValueError(f"not writing {path}: model tensor {bad!r} holds NaN or inf at iteration {iteration}")
    if labels is None and set(config) >= {field.name for field in dataclasses.fields(TrainConfig)}:
        labels = record_labels(config_from_dict(config, source=f"config of checkpoint {path}"))
    state = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "iteration": int(iteration),
        "epoch": int(epoch),
        "config": dict(config),
        "best_metric": float(best_metric),
        "rng": capture_rng_state(),
        "git_revision": git_revision,
        "labels": labels,
    }
    atomic_torch_save(state, path)


def read_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu", required: tuple[str, ...] = ("model",)
) -> dict[str, Any]:
    """Any file ``torch.load(weights_only=True)`` reads as a dict holding the keys ``required``, through
    ``migrate_checkpoint``; FileNotFoundError / ValueError (corrupt, keys missing, a newer format, an ONNX
    file or a torchvision ResNet state dict, each said in one line) name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for a bad file
        if _is_onnx(path):  # torch's message would be a paragraph about weights_only
            raise ValueError(
                f"checkpoint {path} is an ONNX file, not a PyTorch checkpoint: run it with onnxruntime; "
                "sacseg eval, predict and export read the .pt files that sacseg train writes"
            ) from None
        raise ValueError(f"checkpoint {path} is corrupt or not a checkpoint: {err}") from err
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} lacks {', '.join(required)}")
    if _is_torchvision_resnet(state.get("model", state)):  # else: every key name, missing and unexpected
        raise ValueError(
            f"checkpoint {path} holds a torchvision ResNet state dict, not a sacseg checkpoint: "
            "use it as the config key backbone_weights to start a training run from it"
        )
    state = migrate_checkpoint(state, path)
    missing = [key for key in required if key not in state]
    if missing:
        raise ValueError(f"checkpoint {path} lacks {', '.join(missing)}")
    return state


def _is_onnx(path: Path) -> bool:
    """Whether ``path`` is named ``.onnx`` or starts as an ONNX ``ModelProto`` does: field 1 (``ir_version``,
    a one-byte varint), then another of its fields (producer, domain, graph, opset imports, ...)."""
    if path.suffix.lower() == ".onnx":
        return True
    with path.open("rb") as handle:
        head = handle.read(3)
    return len(head) == 3 and head[0] == 0x08 and head[1] < 0x80 and head[2] in (0x12, 0x1A, 0x22, 0x2A, 0x32, 0x3A, 0x42)


def _is_torchvision_resnet(weights: object) -> bool:
    """Whether ``weights`` is the state dict of a torchvision ``resnet*`` (stem, stages and ``fc`` at the top level)."""
    return isinstance(weights, dict) and {"conv1.weight", "layer4.0.conv1.weight", "fc.weight"} <= set(weights)


def _add_format_version(state: dict[str, Any]) -> dict[str, Any]:
    """Version 0 (sacseg 0.1.0, which wrote no ``format_version``) to 1: the same keys, the version added."""
    return {**state, "format_version": 1}


def _add_labels(state: dict[str, Any]) -> dict[str, Any]:
    """Version 1 to 2: ``labels`` added, None in files written before (their config names the labels)."""
    return {**state, "labels": None, "format_version": 2}


# _UPGRADES[v] turns a checkpoint of format version v into one of version v + 1.
_UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {0: _add_format_version, 1: _add_labels}


def migrate_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> dict[str, Any]:
    """``state``, read from ``path``, upgraded one format version at a time to ``CHECKPOINT_FORMAT_VERSION``.

    A checkpoint without ``format_version`` is version 0. One of a newer version (written by a
    newer sacseg) is a ValueError naming the file, its version and the newest this code reads.
    """
    version = state.get("format_version", 0)
    if not isinstance(version, int) or version < 0:
        raise ValueError(f"checkpoint {path} has an invalid format_version {version!r}")
    if version > CHECKPOINT_FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {path} has format version {version}, but this sacseg reads versions up to "
            f"{CHECKPOINT_FORMAT_VERSION}: it was written by a newer sacseg; upgrade sacseg to read it"
        )
    while version < CHECKPOINT_FORMAT_VERSION:
        state = _UPGRADES[version](state)
        version = state["format_version"]
    return state


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint`` (of any format version up to
    ``CHECKPOINT_FORMAT_VERSION``, upgraded to it); FileNotFoundError / ValueError name the file."""
    return read_checkpoint(Path(path), map_location, ("model", "iteration"))
