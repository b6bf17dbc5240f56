"""A teacher's cached features by store row, beside its logits in a student's batches.

    >>> features = TeacherFeatures(store, "default", ["s1", "emb"], rows=logits.rows)
    >>> features[17]                                   # {"s1": (C, H, W) float32, "emb": (C,) float32}
    >>> pairs = FeaturePairs(paired, features, views=0)   # items (input, label, logits, {name: tensor})
    >>> loader = pairs.loader(sampler, batch_size=64)     # their batches, features gathered a batch at a time

Every read is checked as the logits' are (CRC-32C, position-bound digests, rows never written), through
the same reader (``stored_rows.StoredRows``): when the decoded features fit the budget they are read
once into memory; otherwise a cache keeps the chunks of the current window (the sampler visits the
teacher's chunks in windows), and a teacher that changed since the run opened it (overwritten under
it) is refused. ``FeaturePairs.loader`` gathers a batch's features in the process that iterates it;
item by item (``FeaturePairs[i]``, as a plain DataLoader reads them) each worker keeps its own window.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import torch
from torch.utils.data import Dataset

from ..store import feature_array_name
from ..stored_rows import ReadsStoredRows, StoredRows


class TeacherFeatures(ReadsStoredRows):
    """Decoded float32 features of one teacher, by store row: {name: (*shape) or (K, *shape)}."""

    def __init__(self, store, teacher_name: str, names: list[str], rows: np.ndarray, budget_bytes: int,
                 workers: int = 0):
        teacher = store.teacher(teacher_name)
        self.teacher_name, self.names = teacher_name, list(names)
        records = {f["name"]: f for f in teacher.features}
        row_bytes = 4 * teacher.views_per_sample * sum(math.prod(records[n]["shape"]) for n in self.names)
        self.reader = StoredRows([teacher], row_bytes, budget_bytes, arrays=[feature_array_name(n) for n in self.names],
                                 rows=rows, prepare=partial(_decoded, names=self.names),
                                 window_bytes=budget_bytes // max(workers, 1), reading="its features")

    def __getitem__(self, row: int) -> dict[str, torch.Tensor]:
        return {name: values[0] for name, values in self.take(np.asarray([row])).items()}

    def take(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """The features of many rows, stacked: {name: (n, *shape) or (n, K, *shape)}: one gather per feature."""
        return {name: torch.from_numpy(values) for name, values in self.reader.take(rows).items()}


def _decoded(teachers, pieces: list[dict], start: int, stop: int, names: list[str]) -> dict[str, np.ndarray]:
    """The stored ``features/NAME`` arrays of rows [start, stop) -> what the reader holds: float32 by name."""
    return teachers[0].decode_features(pieces[0], start, stop, names)


class FeaturePairs(Dataset):
    """A paired dataset's items with the teacher's features appended: (input, label, logits, features).
    With ``views`` = K > 0 (a multi-view store) indices are ``row * K + view`` and each feature is that view's."""

    def __init__(self, paired, features: TeacherFeatures, views: int = 0):
        self.paired, self.features, self.views = paired, features, views

    def __len__(self):
        return len(self.paired)

    def __getitem__(self, index: int):
        row, view = divmod(index, self.views) if self.views else (index, None)
        features = self.features[row]
        if view is not None:
            features = {name: values[view] for name, values in features.items()}
        return (*self.paired[index], features)

    def batch_features(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        """The features of a batch of indices, as a DataLoader collates the items' (one view each)."""
        rows, views = np.divmod(indices, self.views) if self.views else (indices, None)
        features = self.features.take(rows)
        if views is None:
            return features
        pick = (torch.arange(len(rows)), torch.as_tensor(views, dtype=torch.int64))
        return {name: values[pick] for name, values in features.items()}

    def loader(self, sampler, batch_size: int, **options):
        """``PairedDataset.loader``'s batches with the batch's features appended: gathered, like the
        targets, where the batches are iterated, so DataLoader workers load inputs only."""
        return self.paired.loader(sampler, batch_size, extra=self.batch_features, **options)
