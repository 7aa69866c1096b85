"""torch.distributed helpers: DDP through torchrun (env:// rendezvous), one process per device.

Everything works on a single CPU process without a process group: collectives are called only when
``torch.distributed.is_initialized()``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run: global rank, rank on its node and number of processes; the defaults describe
    a single process."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Whether the run has more than one process."""
        return self.world_size > 1


def init_distributed(device: str) -> DistInfo:
    """Join the process group torchrun describes (WORLD_SIZE > 1); otherwise a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device == "cuda" else "gloo"
        if device == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world)


def cleanup_distributed() -> None:
    """Destroy the process group when one was initialised; nothing otherwise."""
    if dist.is_initialized():
        dist.destroy_process_group()
