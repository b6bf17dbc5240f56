"""``digits``: scikit-learn's bundled 8x8 handwritten digits — real data that ships, no download.

    >>> get_dataset("digits@train")   # 1437 samples; @val: 360 (every 5th sample); @all: 1797

Inputs are float32 tensors (1, 8, 8) scaled to [0, 1]; labels 0-9. Keys are ``digits/NNNN``,
the sample's index in scikit-learn's array, so every split shares one key space.
"""

from __future__ import annotations

import numpy as np

from ._registry import register_dataset


class DigitsDataset:
    """(image, label) pairs from sklearn.datasets.load_digits, as a map-style dataset."""

    def __init__(self, indices: np.ndarray, transform=None):
        import torch
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = bunch.images[indices].astype(np.float32) / 16.0
        self.images = torch.from_numpy(images).unsqueeze(1)  # (N, 1, 8, 8)
        self.targets = bunch.target[indices].astype(np.int64)
        self.transform = transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])


def split_indices(split: str) -> np.ndarray:
    """A fixed split: every 5th sample is validation, the rest train."""
    indices = np.arange(1797)
    if split == "val":
        return indices[indices % 5 == 0]
    if split == "train":
        return indices[indices % 5 != 0]
    return indices


@register_dataset("digits", default_transform="none", splits=("train", "val", "all"),
                  default_split="train", needs_arg=False, description="scikit-learn's 8x8 digits, bundled")
def digits(arg, split, transform):
    indices = split_indices(split)
    dataset = DigitsDataset(indices, transform)
    keys = [f"digits/{i:04d}" for i in indices]
    return dataset, keys, dataset.targets, [str(d) for d in range(10)]
