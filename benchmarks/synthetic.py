"""Synthetic datasets and logits for benchmarks, named by spec (``benchmarks.synthetic:NAME``).

Inputs are seeded random tensors: benchmarks measure the machinery (teacher, store, loader,
student), not what is learnt. ``realistic_logits`` imitates a trained classifier's outputs.
"""

from __future__ import annotations

import os

import numpy as np
import torch


class RandomImages(torch.utils.data.Dataset):
    """N seeded 3x32x32 images with labels in [0, C): CIFAR-100's shape without its files."""

    def __init__(self, n: int, num_classes: int, size: int = 32, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, size, size, generator=generator)
        self.targets = torch.randint(0, num_classes, (n,), generator=generator).tolist()
        self.keys = [f"synthetic/{i:06d}" for i in range(n)]
        self.classes = [str(c) for c in range(num_classes)]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        return self.images[index], self.targets[index]


def cifar_like(split=None):
    """BENCH_N images (default 2048) of 3x32x32 with 100 classes."""
    return RandomImages(int(os.environ.get("BENCH_N", "2048")), 100)


def realistic_logits(n: int, num_classes: int, seed: int = 0) -> np.ndarray:
    """Logits shaped like a trained classifier's: a confident top class, a few close rivals, a
    broad tail. Per row: tail ~ N(0, s) with s in [1, 3]; the label +U(4, 14); 5 rival classes
    +U(1, 6); above C=1000 both lifts grow by log(C/1000), so the top classes keep the same share of
    the mass as C grows. Top-1 probabilities then spread from ~0.3 to ~1, as on ImageNet."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, (n, num_classes)) * rng.uniform(1, 3, (n, 1))
    rows = np.arange(n)
    lift = np.log(max(num_classes, 1000) / 1000)  # more classes, same share of mass at the top
    logits[rows, rng.integers(0, num_classes, n)] += rng.uniform(4, 14, n) + lift
    for _ in range(5):
        logits[rows, rng.integers(0, num_classes, n)] += rng.uniform(1, 6, n) + lift
    return logits.astype(np.float32)
