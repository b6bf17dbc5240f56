"""What every run does to its student, image or token data: the optimizer, and the DDP wrapper.

    >>> optimizer = build_optimizer(config, student)      # SGD (Nesterov) or AdamW from the options
    >>> model = wrap_ddp(student, dist, device)          # DistributedDataParallel under torchrun, else itself
"""

from __future__ import annotations

import torch

from ..distributed import Distributed
from .config import TrainConfig


def build_optimizer(config: TrainConfig, model) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay, nesterov=config.momentum > 0)


def wrap_ddp(student, dist: Distributed, device):
    if not dist.enabled:
        return student
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda" else None)
