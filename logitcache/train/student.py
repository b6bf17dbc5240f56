"""What every run does to its student, image or token data: the optimizer, and the DDP wrapper.

    >>> optimizer = build_optimizer(student, "sgd", lr=0.05, momentum=0.9, weight_decay=5e-4)   # or "adamw"
    >>> model = wrap_ddp(student, dist, device)          # DistributedDataParallel under torchrun, else itself
"""

from __future__ import annotations

import torch

from ..distributed import Distributed


def build_optimizer(model, name: str, *, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    """``--optimizer adamw`` (momentum unused), or SGD, with Nesterov momentum when there is momentum."""
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay,
                           nesterov=momentum > 0)


def wrap_ddp(student, dist: Distributed, device):
    if not dist.enabled:
        return student
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda" else None)
