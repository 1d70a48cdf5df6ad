"""What every segmentation data set offers: class names, colours, the ignored label, and indexed samples."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from torch import Tensor

__all__ = ["SegmentationDataset"]


@runtime_checkable
class SegmentationDataset(Protocol):
    """``ds[i] -> (image float [3, H, W], target long [H, W])``, targets holding class indices
    ``0..len(classes) - 1`` and ``ignore_index``; ``palette`` is uint8 ``[len(classes), 3]``."""

    @property
    def classes(self) -> Sequence[str]: ...

    @property
    def palette(self) -> Tensor: ...

    @property
    def ignore_index(self) -> int: ...

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]: ...
