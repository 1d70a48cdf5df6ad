"""Sizes given as one int (square) or a pair ``(h, w)``, as ``nn.Conv2d`` takes them."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["IntOrPair", "pair", "positive_pair"]

#: A size or step: one int for both dimensions, or ``(h, w)`` (a tuple, or a list as YAML configs give it).
IntOrPair = int | Sequence[int]


def pair(value: IntOrPair, name: str) -> tuple[int, int]:
    """``value`` as ``(h, w)``; ValueError naming ``name`` unless it is an int or two ints."""
    if isinstance(value, int):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")


def positive_pair(value: IntOrPair, name: str) -> tuple[int, int]:
    """``pair(value, name)`` of sizes ``>= 1``; ValueError naming ``name`` otherwise."""
    size = pair(value, name)
    if min(size) < 1:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return size
