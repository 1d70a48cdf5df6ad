"""What every segmentation data set offers: class names, colours, the ignored label, and indexed samples."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["SegmentationDataset", "torch_dataset"]


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


def torch_dataset(dataset: SegmentationDataset) -> Dataset[tuple[Tensor, Tensor]]:
    """``dataset`` as the ``torch.utils.data.Dataset`` that ``DataLoader`` and ``Subset`` take (every sacseg
    data set is one; the protocol states only what sacseg itself reads); TypeError for anything else."""
    if not isinstance(dataset, Dataset):
        raise TypeError(f"expected a torch.utils.data.Dataset, got {type(dataset).__name__}")
    return dataset
