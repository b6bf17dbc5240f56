"""A teacher's cached features by store row, beside its logits in a student's batches.

    >>> features = TeacherFeatures(store, "default", ["s1", "emb"], rows=logits.rows)
    >>> features[17]                                   # {"s1": (C, H, W) float32, "emb": (C,) float32}
    >>> pairs = FeaturePairs(paired, features, views=0)   # items (input, label, logits, {name: tensor})
    >>> loader = pairs.loader(sampler, batch_size=64)     # their batches, features gathered a batch at a time

Every read is checked as the logits' are (CRC-32C, position-bound digests, rows never written). When
the decoded features fit the budget they are read once into memory; otherwise a cache keeps the
chunks of the current window (the sampler visits the teacher's chunks in windows), and a teacher
that changed since the run opened it (overwritten under it) is refused. ``FeaturePairs.loader``
gathers a batch's features in the process that iterates it; item by item (``FeaturePairs[i]``, as
a plain DataLoader reads them) each worker keeps its own window.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import CorruptStoreError


class TeacherFeatures:
    """Decoded float32 features of one teacher, by store row: {name: (*shape) or (K, *shape)}."""

    def __init__(self, store, teacher_name: str, names: list[str], rows: np.ndarray, budget_bytes: int,
                 workers: int = 0):
        teacher = store.teacher(teacher_name)
        self.store, self.teacher_name, self.names = store, teacher_name, list(names)
        self.identity = teacher.identity
        records = {f["name"]: f for f in teacher.features}
        row_bytes = 4 * teacher.views_per_sample * sum(math.prod(records[n]["shape"]) for n in self.names)
        self.in_memory = teacher.num_samples * row_bytes <= budget_bytes
        self.block_rows = teacher.layout.rows_per_chunk
        self.window_blocks = max(1, budget_bytes // max(1, self.block_rows * row_bytes * max(workers, 1)))
        self._table = self._load(teacher, rows) if self.in_memory else None
        self._teacher, self._pid = None, None
        self._cache: OrderedDict = OrderedDict()

    def _load(self, teacher, rows: np.ndarray) -> dict[str, torch.Tensor]:
        table = {}
        step = teacher.layout.rows_per_shard
        for start in range(0, teacher.num_samples, step):
            stop = min(start + step, teacher.num_samples)
            if not ((rows >= start) & (rows < stop)).any():
                continue  # a shard an unfinished dump has not written (--allow-partial)
            for name, values in teacher.read_features(start, stop, self.names).items():
                if name not in table:
                    table[name] = torch.full((teacher.num_samples, *values.shape[1:]), float("nan"))
                table[name][start:stop] = torch.from_numpy(values)
        return table

    def __getstate__(self):  # workers reopen the store themselves (zarr handles are per process)
        state = self.__dict__.copy()
        state["_teacher"], state["_cache"] = None, OrderedDict()
        return state

    def __getitem__(self, row: int) -> dict[str, torch.Tensor]:
        if self._table is not None:
            return {name: values[row] for name, values in self._table.items()}
        block = row // self.block_rows
        chunk = self._cache.get(block)
        if chunk is None:
            chunk = self._read_block(block)
        self._cache.move_to_end(block)
        return {name: values[row - block * self.block_rows] for name, values in chunk.items()}

    def take(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """The features of many rows, stacked: {name: (n, *shape) or (n, K, *shape)}; from memory one
        gather per feature, streamed row by row through the window's chunks."""
        if self._table is not None:
            index = torch.as_tensor(rows, dtype=torch.int64)
            return {name: values[index] for name, values in self._table.items()}
        items = [self[int(row)] for row in rows]
        return {name: torch.stack([item[name] for item in items]) for name in items[0]}

    def _read_block(self, block: int) -> dict[str, torch.Tensor]:
        if self._teacher is None or self._pid != os.getpid():
            teacher = self.store.teacher(self.teacher_name)
            if teacher.identity != self.identity:
                raise CorruptStoreError(f"teacher {self.teacher_name!r} in {self.store.location} changed while this "
                                        "run was reading its features (overwritten?); start the run again")
            self._teacher, self._pid = teacher, os.getpid()
        start = block * self.block_rows
        stop = min(start + self.block_rows, self._teacher.num_samples)
        chunk = {name: torch.from_numpy(values) for name, values in
                 self._teacher.read_features(start, stop, self.names).items()}
        self._cache[block] = chunk
        while len(self._cache) > self.window_blocks:
            self._cache.popitem(last=False)
        return chunk


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
