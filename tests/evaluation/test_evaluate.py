"""evaluate(): the loop over a loader gives the matrix of the per-batch predictions."""

from __future__ import annotations

import torch
from torch import nn

from sacseg.evaluation.evaluate import evaluate
from sacseg.evaluation.metrics import ConfusionMatrix
from sacseg.models.inference import predict
from sacseg.options import InferenceOptions


def test_evaluate_counts_every_batch_and_restores_train_mode() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    model = _DictModel(net).train()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(2, 3, 9, 11, generator=g), torch.randint(0, 4, (2, 9, 11), generator=g)) for _ in range(3)]
    batches[1][1][:, :3] = 255
    stats_before = net[1].running_mean.clone()

    options = InferenceOptions(mode="slide", crop_size=6, stride=4, flip=True)
    matrix = evaluate(model, batches, num_classes=4, options=options)

    assert model.training and torch.equal(net[1].running_mean, stats_before)  # ran in eval mode
    expected = ConfusionMatrix(4)
    model.eval()
    for images, targets in batches:
        expected.update(predict(model, images, options).argmax(1), targets)
    assert torch.equal(matrix.matrix, expected.matrix)
    assert int(matrix.matrix.sum()) == 3 * 2 * 9 * 11 - 2 * 3 * 11


class _DictModel(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> dict:
        return {"out": self.body(x), "scales": {}}
