"""torch.distributed for both stages, when launched by torchrun; a no-op in a single process.

    $ torchrun --nproc-per-node 2 -m logitcache dump STORE --teacher ... --dataset ...
    $ torchrun --nproc-per-node 2 -m logitcache train --out RUN --student ... --store STORE ...

    >>> with distributed("cpu") as dist:       # reads RANK/WORLD_SIZE from the environment
    ...     dist.rank, dist.world_size, dist.is_main
    ...     dist.agree(error)                  # every rank raises the first rank's error, or none does

Collectives go through torch.distributed (gloo on CPU, NCCL on CUDA). Every point where ranks
wait for each other goes through ``agree``, which also carries errors, so one rank's failure is
every rank's one-line error instead of a hang.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def agree(self, error: BaseException | None = None) -> None:
        """Wait for every rank; if any rank brings an error, raise the lowest rank's on all."""
        if not self.enabled:
            if error is not None:
                raise error
            return
        errors = [None] * self.world_size
        torch_dist.all_gather_object(errors, error)
        for err in errors:
            if err is not None:
                raise err

    def broadcast(self, value):
        """Rank 0's ``value`` on every rank."""
        if not self.enabled:
            return value
        box = [value]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks."""
        if not self.enabled:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64)
        torch_dist.all_reduce(tensor)
        return tensor.tolist()

    def device(self, name: str) -> str:
        """One GPU per process: ``cuda`` means ``cuda:LOCAL_RANK`` under torchrun."""
        return f"cuda:{self.local_rank}" if self.enabled and name in ("cuda", "auto") and torch.cuda.is_available() else name


def is_main_process() -> bool:
    """True unless torchrun started this process as a rank other than 0 (for printing)."""
    return int(os.environ.get("RANK", "0")) == 0


@contextlib.contextmanager
def distributed(device: str = "cpu"):
    """The process group torchrun asks for (from RANK, WORLD_SIZE, ...), or a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        yield Distributed()
        return
    owned = not torch_dist.is_initialized()
    if owned:
        backend = "nccl" if device != "cpu" and torch.cuda.is_available() else "gloo"
        torch_dist.init_process_group(backend=backend)
    try:
        yield Distributed(torch_dist.get_rank(), torch_dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    finally:
        if owned:
            torch_dist.destroy_process_group()
