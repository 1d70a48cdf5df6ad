"""Multi-process training on torch.distributed: set-up from torchrun's environment, DDP wrapping, reductions."""

from __future__ import annotations

import dataclasses
import datetime
import os

import torch
from torch import distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["DistContext", "all_reduce_mean", "cleanup_distributed", "init_distributed", "unwrap", "wrap_model"]


@dataclasses.dataclass(frozen=True)
class DistContext:
    """Where this process sits: ``rank`` of ``world_size`` processes, and the device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 writes logs and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError as err:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from err


def init_distributed(device: str = "auto", timeout: float | None = None) -> DistContext:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ...).

    ``device``: "auto" (CUDA if available, else CPU), "cuda" or "cpu". With more than one process
    the backend is NCCL on CUDA and Gloo on CPU, and each process takes GPU ``LOCAL_RANK``.
    ``timeout``: seconds a collective operation waits for the other processes (None: torch's
    default); Gloo then raises a RuntimeError ("Timed out ..."), NCCL's watchdog ends the process.
    Without torchrun's variables this is a single process and nothing is initialised.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available")
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if use_cuda:
        torch.cuda.set_device(local_rank)
        torch_device = torch.device("cuda", local_rank)
    else:
        torch_device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            device_id=torch_device if use_cuda else None,
            timeout=None if timeout is None else datetime.timedelta(seconds=timeout),
        )
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=torch_device)


def cleanup_distributed() -> None:
    """Leave the process group (if any), so the process can exit cleanly."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, ctx: DistContext, sync_bn: bool = False) -> nn.Module:
    """Move ``model`` to the device and, with several processes, wrap it in DDP.

    ``sync_bn`` turns BatchNorm into SyncBatchNorm (statistics over the global batch); it needs
    CUDA (NCCL), so on CPU it is a ValueError.
    """
    model = model.to(ctx.device)
    if sync_bn and ctx.distributed:
        if ctx.device.type != "cuda":
            raise ValueError("config key 'sync_bn' needs CUDA devices; set sync_bn: false on CPU")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if ctx.distributed:
        device_ids = [ctx.local_rank] if ctx.device.type == "cuda" else None
        model = DistributedDataParallel(model, device_ids=device_ids)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a DDP wrapper (or ``model`` itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def all_reduce_mean(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """The mean of ``value`` over all processes (a copy; ``value`` itself unchanged)."""
    out = value.detach().clone()
    if ctx.distributed:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= ctx.world_size
    return out
