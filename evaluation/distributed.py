"""Thin torch.distributed helpers for sharding an experiment across processes started by ``torchrun``.

A run is distributed only when the environment says ``WORLD_SIZE > 1`` (torchrun sets ``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``); otherwise every helper is a no-op and the code runs
as a plain single process. The backend is ``gloo`` on CPU and ``nccl`` when the device is CUDA.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")
#: How long a collective (a barrier) waits for the other ranks before the run fails.
BARRIER_TIMEOUT = timedelta(hours=24)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def world_from_env() -> tuple[int, int]:
    """``(rank, world_size)`` read from ``RANK`` / ``WORLD_SIZE`` (``(0, 1)`` when unset)."""
    rank, world_size = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"invalid RANK={rank} / WORLD_SIZE={world_size}: need 0 <= RANK < WORLD_SIZE")
    return rank, world_size


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: its ``rank`` among ``world_size`` processes."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (no-op for a single process)."""
        if self.is_distributed and dist.is_initialized():
            dist.barrier()

    def total(self, value: int) -> int:
        """The sum of ``value`` over all ranks (a collective: every rank must call it; also a barrier)."""
        if not (self.is_distributed and dist.is_initialized()):
            return value
        summed = torch.tensor([value], dtype=torch.int64)
        if dist.get_backend() == "nccl":
            summed = summed.cuda()
        dist.all_reduce(summed, op=dist.ReduceOp.SUM)
        return int(summed.item())

    def all_ok(self, ok: bool) -> bool:
        """True when ``ok`` holds on every rank (a collective: every rank must call it; also a barrier)."""
        return self.total(0 if ok else 1) == 0


def uses_cuda(device: str | None) -> bool:
    """Whether ``device`` (None = GPU when available, "cpu", "cuda", "cuda:1", "gpu") is a CUDA device."""
    if device is None:
        return torch.cuda.is_available()
    return str(device) == "gpu" or torch.device(device).type == "cuda"


def init_distributed(device: str | torch.device | None = None) -> DistributedContext:
    """Join the process group when ``WORLD_SIZE > 1`` (gloo on CPU, nccl on CUDA) and return the context.

    On CUDA each rank uses GPU ``LOCAL_RANK`` (modulo the GPU count), set before any model is built.

    Calling it again in an already initialised process reuses the existing group.
    """
    rank, world_size = world_from_env()
    if world_size == 1:
        return DistributedContext(0, 1)
    if not dist.is_initialized():
        on_cuda = uses_cuda(device)
        backend = "nccl" if on_cuda else "gloo"
        if on_cuda:
            torch.cuda.set_device(_env_int("LOCAL_RANK", rank) % torch.cuda.device_count())
        # A rank that ends its share early waits at the final barrier for the slowest one, which on a
        # resume or with GPNN-CAM can take far longer than torch's default 30-minute timeout.
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, timeout=BARRIER_TIMEOUT)
    return DistributedContext(rank, world_size)


def shutdown_distributed() -> None:
    """Leave the process group if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Round-robin share of ``items`` for ``rank``: items ``rank, rank + world_size, ...``.

    The shares of all ranks are disjoint and together hold every item exactly once.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return list(items[rank::world_size])
