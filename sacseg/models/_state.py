"""Checks a state dict against a module's before loading, so a bad file changes nothing."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor


def check_state_dict(expected: Mapping[str, Tensor], state: Mapping[str, Tensor], message: str) -> None:
    """Raise ``ValueError`` starting with ``message`` that names missing, unexpected and misshapen keys."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshapen = [
        f"{k}: {tuple(state[k].shape)} instead of {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or misshapen:
        raise ValueError(f"{message}: missing keys {missing}, unexpected keys {unexpected}, shape mismatches {misshapen}")
