"""Batch normalisation with frozen statistics and affine parameters, state-dict compatible with BatchNorm2d."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["FrozenBatchNorm2d"]


class FrozenBatchNorm2d(nn.Module):
    """``nn.BatchNorm2d`` in eval mode that no training step can change.

    ``weight``, ``bias``, ``running_mean``, ``running_var`` and ``num_batches_tracked`` are all
    buffers (so no optimiser sees them and ``model.train()`` has no effect), under the state-dict
    keys of ``nn.BatchNorm2d``: checkpoints move both ways. Unlike ``torchvision.ops.FrozenBatchNorm2d``
    it keeps ``num_batches_tracked`` (a missing one is filled in, as ``nn.BatchNorm2d`` does for old
    checkpoints) and computes exactly what ``nn.BatchNorm2d`` computes in eval mode.

    Shapes:
        ``[N, C, H, W]`` -> ``[N, C, H, W]``.
    """

    weight: Tensor
    bias: Tensor
    running_mean: Tensor
    running_var: Tensor
    num_batches_tracked: Tensor

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        state_dict.setdefault(prefix + "num_batches_tracked", self.num_batches_tracked)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, input: Tensor) -> Tensor:
        return F.batch_norm(input, self.running_mean, self.running_var, self.weight, self.bias, training=False, eps=self.eps)

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d) -> FrozenBatchNorm2d:
        """A frozen copy of ``bn``'s affine parameters and running statistics."""
        if not bn.affine or not bn.track_running_stats:
            raise ValueError(f"only affine BatchNorm2d with running statistics can be frozen, got {bn}")
        frozen = cls(bn.num_features, bn.eps).to(device=bn.weight.device, dtype=bn.weight.dtype)
        frozen.load_state_dict(bn.state_dict())
        return frozen

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        """Replace every ``nn.BatchNorm2d`` (and ``nn.SyncBatchNorm``) inside ``module`` in place.

        Build the optimiser afterwards: the frozen layers hold buffers, not the old parameters.
        Returns ``module`` itself, or a new frozen layer when ``module`` is a batch norm.
        """
        if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            return cls.from_batchnorm(module)  # type: ignore[arg-type]
        for name, child in module.named_children():
            converted = cls.convert(child)
            if converted is not child:
                setattr(module, name, converted)
        return module

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"
