"""Dataset fingerprints: one sha256 that names a dataset's sample keys, their order and labels.

    >>> dataset_fingerprint(["a.png", "b.png"], [0, 1])
    'sha256:…'
    >>> describe_mismatch(store_keys, store_labels, keys, labels)   # None when they agree

The exact byte layout is part of the store format (docs/FORMAT.md), so other tools can
recompute it: the ASCII line ``logitcache-dataset-v1\\n``, N as little-endian uint64, then per
sample the UTF-8 key's length (uint64 LE) and bytes, then all labels as little-endian int64.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

import numpy as np

_PREFIX = b"logitcache-dataset-v1\n"


def dataset_fingerprint(keys: Sequence[str], labels: Sequence[int] | np.ndarray) -> str:
    """sha256 over the keys (in order) and the labels, as ``"sha256:<hex>"``."""
    labels = np.asarray(labels)
    if len(keys) != len(labels):
        raise ValueError(f"{len(keys)} keys but {len(labels)} labels")
    digest = hashlib.sha256(_PREFIX)
    digest.update(struct.pack("<Q", len(keys)))
    for key in keys:
        raw = str(key).encode("utf-8")
        digest.update(struct.pack("<Q", len(raw)))
        digest.update(raw)
    digest.update(labels.astype("<i8").tobytes())
    return "sha256:" + digest.hexdigest()


def describe_mismatch(
    store_keys: Sequence[str],
    store_labels: np.ndarray,
    keys: Sequence[str],
    labels: np.ndarray,
) -> str | None:
    """Say in one line how a dataset differs from the one a store was made from, or None."""
    if len(keys) != len(store_keys):
        return (
            f"the dataset has {len(keys)} samples but the store was made from {len(store_keys)} "
            "(a truncated, extended or different dataset)"
        )
    store_keys = np.asarray(store_keys, dtype=object)
    keys = np.asarray(keys, dtype=object)
    differ = np.flatnonzero(store_keys != keys)
    if differ.size:
        i = int(differ[0])
        if set(keys.tolist()) == set(store_keys.tolist()):
            kind = "the same samples in another order"
        else:
            kind = "other samples"
        return (
            f"the dataset holds {kind}: {differ.size} keys differ, first at index {i} "
            f"(dataset {keys[i]!r}, store {store_keys[i]!r})"
        )
    differ = np.flatnonzero(np.asarray(store_labels) != np.asarray(labels))
    if differ.size:
        i = int(differ[0])
        same_counts = np.array_equal(np.sort(np.asarray(store_labels)), np.sort(np.asarray(labels)))
        kind = ("reordered or relabelled (its keys are positions, so the two cannot be told apart; the label "
                "counts agree, which suggests reordered)" if same_counts else "relabelled")
        return (
            f"the dataset is {kind}: {differ.size} labels differ, first at index {i} "
            f"(key {keys[i]!r}: dataset {int(labels[i])}, store {int(store_labels[i])})"
        )
    return None
