"""Training checkpoints: atomic writes, random-number-generator states, and loading with clear errors."""

from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from sacseg.engine.io import atomic_open

if TYPE_CHECKING:
    from sacseg.engine.config import TrainConfig

__all__ = [
    "atomic_torch_save",
    "capture_rng_state",
    "restore_rng_state",
    "save_checkpoint",
    "load_checkpoint",
    "load_trained_model",
]


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
) -> None:
    """Write everything a run needs to continue exactly, atomically.

    ``iteration`` counts completed optimisation steps; ``epoch`` is the epoch they are in. Refuses
    (ValueError) to write a model whose weights or buffers are not finite, so the previous file
    at ``path`` stays the last good one.
    """
    bad = _non_finite_parameter(model)
    if bad is not None:
        raise ValueError(f"not writing {path}: model tensor {bad!r} holds NaN or inf at iteration {iteration}")
    state = {
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
    }
    atomic_torch_save(state, path)


def _read(path: Path, map_location: str | torch.device, required: tuple[str, ...]) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for a bad file
        raise ValueError(f"checkpoint {path} is corrupt or not a checkpoint: {err}") from err
    missing = [key for key in required if not isinstance(state, dict) or key not in state]
    if missing:
        raise ValueError(f"checkpoint {path} lacks {', '.join(missing)}")
    return state


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint``; FileNotFoundError / ValueError name the file."""
    return _read(Path(path), map_location, ("model", "iteration"))


def load_trained_model(
    path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    default_config: TrainConfig | None = None,
) -> tuple[nn.Module, TrainConfig]:
    """The trained model of a checkpoint, in eval mode on ``device``, and the config it was built from.

    Reads any file holding ``{"model": state_dict, "config": {...}}`` (``save_checkpoint`` writes
    both), rebuilds the model with ``build_model_from_config`` and loads the weights strictly.
    ``default_config`` is used only when the checkpoint stores no config. The config's
    ``backbone_weights``, ``baseline_checkpoint`` and ``init_checkpoint`` are not read: the checkpoint already holds
    every weight, so neither an ImageNet download nor the baseline file of a "-only" run is needed.
    FileNotFoundError / ValueError name the file (missing, corrupt, no config, weights that do not
    fit the model).
    """
    # Imported here: train.py imports this module (and is heavy: TensorBoard).
    from sacseg.engine.config import config_from_dict
    from sacseg.engine.train import build_model_from_config

    path = Path(path)
    state = _read(path, "cpu", ("model",))
    if state.get("config") is not None:
        cfg = config_from_dict(state["config"], source=f"config stored in checkpoint {path}")
    elif default_config is not None:
        cfg = default_config
    else:
        raise ValueError(f"checkpoint {path} stores no config: give the training config (--config)")
    model = build_model_from_config(dataclasses.replace(cfg, backbone_weights=None, baseline_checkpoint=None, init_checkpoint=None))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise ValueError(f"checkpoint {path}: its weights do not fit model {cfg.model!r} of its config: {err}") from err
    return model.to(device).eval(), cfg
