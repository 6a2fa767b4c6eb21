"""torch.distributed set-up for ``train`` and ``score`` under torchrun, made inside those functions (never at import).

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) :func:`init` joins the process group — NCCL on
CUDA, gloo on the CPU — and pins each process to ``cuda:LOCAL_RANK``. A plain process gets a world of one:
no process group, and every helper here is a no-op, so the single-process code path is unchanged.
"""

from __future__ import annotations

import atexit
import gc
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


def launched() -> bool:
    """True when this process is one of several started by torchrun (or an equivalent launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass(frozen=True)
class Dist:
    """This process's place in the job; ``world == 1`` means no process group."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """The device of this rank: ``cuda:LOCAL_RANK`` for a CUDA run, the CPU otherwise."""
        if device.type == "cuda" and self.enabled:
            return torch.device("cuda", self.local_rank)
        return device

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce(self, tensor: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
        """In-place all-reduce (identity for a world of one); returns ``tensor``."""
        if self.enabled:
            dist.all_reduce(tensor, op=op)
        return tensor

    def broadcast_object(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if not self.enabled:
            return value
        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather_objects(self, value: Any) -> list[Any]:
        if not self.enabled:
            return [value]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value)
        return out


def init(device: torch.device) -> Dist:
    """Join the torchrun job (once per process) or return the single-process world."""
    if not launched():
        return Dist()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
        atexit.register(_destroy)
        if dist.get_rank() != 0:
            # Logs come from rank 0 only; warnings and errors from every rank.
            logging.getLogger("facecleaner").setLevel(logging.WARNING)
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(),
                local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def _destroy() -> None:
    """Leave the job while the interpreter is whole: collect first, so no gloo work object holding tensors
    outlives the group and is freed during interpreter shutdown (which aborts the process)."""
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def shard_range(num_classes: int, world: int, rank: int) -> tuple[int, int]:
    """The contiguous class range ``[start, end)`` of ``rank``: sizes differ by at most one, larger first."""
    base, extra = divmod(num_classes, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard_ranges(num_classes: int, world: int) -> list[tuple[int, int]]:
    return [shard_range(num_classes, world, r) for r in range(world)]
