"""Seeded convolutional teachers and students for the feature tests (``tests.feature_factories:NAME``).

Module paths (both are ``nn.Sequential``): 2 = first block's ReLU (C, 8, 8), 5 = second block's ReLU
(2C, 8, 8), 9 = third block's ReLU (2C, 4, 4), 11 = the pooled, flattened embedding (2C,).
"""

from __future__ import annotations

import os

import torch
from torch import nn


def _conv_net(num_classes: int, width: int, seed: int) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(2 * width, num_classes),
        )


def conv_teacher(num_classes: int = 10) -> nn.Module:
    """A fixed (seeded) CNN of width 8 for the 8x8 digits."""
    return _conv_net(num_classes, 8, seed=7)


def conv_student(num_classes: int = 10) -> nn.Module:
    """A (seeded) CNN of width 4: the teacher's layout, half its channels."""
    return _conv_net(num_classes, 4, seed=11)


class _FailsAfter(nn.Module):
    """Raises on batch LOGITCACHE_TEST_FAIL_AFTER (if set): a dump cut short at a known point."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        limit = os.environ.get("LOGITCACHE_TEST_FAIL_AFTER")
        if limit and self.calls > int(limit):
            raise KeyboardInterrupt
        return self.inner(x)


def interrupted_conv_teacher(num_classes: int = 10) -> nn.Module:
    """``conv_teacher`` as ``inner``: its modules are ``inner.2``, ``inner.11``, ..."""
    return _FailsAfter(conv_teacher(num_classes))
