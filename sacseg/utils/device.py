"""The device a command runs on: "auto" (CUDA when available), "cpu" or "cuda", with one clear error without CUDA."""

from __future__ import annotations

import typing
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["DeviceName", "model_device", "resolve_device"]

#: The devices a config (key ``device``) or a command line (``--device``) may name.
DeviceName = Literal["auto", "cpu", "cuda"]


def resolve_device(device: str | torch.device, what: str = "device") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cpu"`` / ``"cuda"`` (or a ``torch.device``) as given.

    ValueError, starting with ``what`` (e.g. ``"--device cuda"``), when CUDA is asked for but not
    available, or for a name that is not a ``DeviceName``.
    """
    import torch  # here, not above: the command line reads DeviceName without loading torch

    if isinstance(device, torch.device):
        resolved = device
    elif device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif device in typing.get_args(DeviceName):
        resolved = torch.device(device)
    else:
        raise ValueError(f"{what} must be one of {', '.join(typing.get_args(DeviceName))}, got {device!r}")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{what}: CUDA is not available here; use cpu (or auto)")
    return resolved


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter; the CPU for a model without any (an ONNX file's
    :class:`~sacseg.evaluation.onnx_model.OnnxModel` takes and returns CPU tensors)."""
    import torch

    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")
