"""The evaluation loop: predict every batch of a loader and count it in a confusion matrix."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from tqdm import tqdm

from sacseg.data.transforms import IGNORE_INDEX
from sacseg.evaluation.metrics import ConfusionMatrix
from sacseg.models.inference import predict
from sacseg.options import InferenceOptions

__all__ = ["evaluate"]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
    device: torch.device | str | None = None,
    options: InferenceOptions = InferenceOptions(),
    progress: bool = False,
    desc: str = "eval",
) -> ConfusionMatrix:
    """Confusion matrix of ``model`` over ``loader`` batches ``(images [N, 3, H, W], targets [N, H, W])``.

    Each batch is predicted under ``options`` (see ``predict``); ``device`` defaults to the model's.
    The model runs in eval mode and is put back in its previous mode afterwards. Under
    torch.distributed (each process given its share of the data) the returned matrix is already
    summed over processes; call ``.compute()`` on it. ``progress`` shows a tqdm bar (on stderr)
    over the batches, labelled ``desc``.
    """
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    matrix = ConfusionMatrix(num_classes, ignore_index=ignore_index, device=device)
    was_training = model.training
    model.eval()
    try:
        for images, targets in tqdm(loader, desc=desc, unit="batch", disable=not progress, dynamic_ncols=True):
            probs = predict(model, images.to(device), options)
            matrix.update(probs.argmax(dim=1), targets.to(device))
    finally:
        model.train(was_training)
    matrix.reduce()
    return matrix
