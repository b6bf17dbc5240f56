"""Pair every sample with the logits its teacher produced for it, with bounded memory.

    >>> logits = TeacherLogits.open("data/stores/digits.zarr", budget_bytes=2 << 30)
    >>> paired = PairedDataset(get_dataset("digits@train").dataset, logits)
    >>> sampler = EpochSampler(logits.rows, seed=0, block_rows=logits.block_rows, window_blocks=logits.window_blocks)
    >>> loader = DataLoader(paired, batch_size=64, sampler=sampler)   # yields (input, label, logits)

Sample i of the dataset is row i of the store: the caller checks the dataset against the store's
fingerprint first (``LogitStore.check_dataset``). When the decoded logits fit the budget they are
read once into one tensor shared by all workers; otherwise each worker keeps a small cache of
decoded chunks and the sampler visits chunks in a shuffled, windowed order so the cache hits.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .errors import StoreIncompleteError
from .store import open_store


class TeacherLogits:
    """Decoded float32 logits of one teacher, by store row: in memory, or streamed by chunk."""

    def __init__(self, location: str, teacher_name: str | None, budget_bytes: int, workers: int = 0,
                 allow_partial: bool = False):
        store = open_store(location)
        teacher = store.teacher(teacher_name)
        if not teacher.is_complete and not allow_partial:
            done = int(teacher.shard_done().sum())
            raise StoreIncompleteError(
                f"teacher {teacher.name!r} in {location} is {teacher.status} ({done}/{teacher.num_shards} shards); "
                "finish the dump, or pass --allow-partial to train on the written samples only"
            )
        self.location, self.teacher_name = location, teacher.name
        self.num_classes = teacher.num_classes
        self.rows = _written_rows(teacher)
        row_bytes = 4 * teacher.num_classes
        self.in_memory = store.num_samples * row_bytes <= budget_bytes
        self.block_rows = teacher.layout.rows_per_chunk
        chunk_bytes = self.block_rows * row_bytes
        self.window_blocks = max(1, budget_bytes // (chunk_bytes * max(workers, 1)))
        self._table = self._load_all(teacher) if self.in_memory else None
        self._teacher = None if self.in_memory else teacher
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()

    @classmethod
    def open(cls, location, teacher_name=None, budget_bytes=2 << 30, **kwargs) -> TeacherLogits:
        return cls(location, teacher_name, budget_bytes, **kwargs)

    def _load_all(self, teacher) -> torch.Tensor:
        table = torch.full((teacher.num_samples, teacher.num_classes), float("nan"))
        done = teacher.shard_done()
        for shard in np.flatnonzero(done):
            start, stop = teacher.layout.shard_rows(int(shard), teacher.num_samples)
            table[start:stop] = torch.from_numpy(teacher.read(start, stop))
        return table

    def __getstate__(self):  # workers reopen the store themselves (zarr handles are per process)
        state = self.__dict__.copy()
        state["_teacher"], state["_cache"] = None, OrderedDict()
        return state

    def __getitem__(self, row: int) -> torch.Tensor:
        if self._table is not None:
            return self._table[row]
        block = row // self.block_rows
        chunk = self._cache.get(block)
        if chunk is None:
            chunk = self._read_block(block)
        self._cache.move_to_end(block)
        return chunk[row - block * self.block_rows]

    def _read_block(self, block: int) -> torch.Tensor:
        if self._teacher is None:
            self._teacher = open_store(self.location).teacher(self.teacher_name)
        start = block * self.block_rows
        stop = min(start + self.block_rows, self._teacher.num_samples)
        chunk = torch.from_numpy(self._teacher.read(start, stop))
        self._cache[block] = chunk
        while len(self._cache) > self.window_blocks:
            self._cache.popitem(last=False)
        return chunk


def _written_rows(teacher) -> np.ndarray:
    """Store rows whose shards are written (all rows for a complete teacher)."""
    done = teacher.shard_done()
    parts = [np.arange(*teacher.layout.shard_rows(int(s), teacher.num_samples)) for s in np.flatnonzero(done)]
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


class PairedDataset(Dataset):
    """(input, label, teacher_logits) by store row; without logits, (input, label, empty)."""

    def __init__(self, dataset, logits: TeacherLogits | None):
        self.dataset = dataset
        self.logits = logits

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, row: int):
        inputs, label = self.dataset[row]
        targets = self.logits[row] if self.logits is not None else torch.empty(0)
        return inputs, label, targets


class EpochSampler(Sampler[int]):
    """A seeded order over given rows that is a pure function of (seed, epoch).

    With ``block_rows`` it is a block shuffle: blocks of consecutive rows are visited in random
    order, ``window_blocks`` at a time, with the rows of each window shuffled together. Every
    row still comes exactly once per epoch, and a reader needs only one window of blocks.
    """

    def __init__(self, rows, seed: int, shuffle: bool = True, block_rows: int | None = None,
                 window_blocks: int = 1):
        self.rows = np.asarray(rows, dtype=np.int64)
        self.seed, self.shuffle = seed, shuffle
        self.block_rows, self.window_blocks = block_rows, max(1, window_blocks)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        return len(self.rows)

    def order(self) -> np.ndarray:
        if not self.shuffle:
            return self.rows
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.block_rows is None:
            return rng.permutation(self.rows)
        blocks = self.rows // self.block_rows
        starts = np.flatnonzero(np.r_[True, blocks[1:] != blocks[:-1]])
        groups = np.split(self.rows, starts[1:])
        visit = rng.permutation(len(groups))
        windows = []
        for first in range(0, len(visit), self.window_blocks):
            window = np.concatenate([groups[g] for g in visit[first : first + self.window_blocks]])
            windows.append(rng.permutation(window))
        return np.concatenate(windows) if windows else self.rows

    def __iter__(self):
        return iter(self.order().tolist())
