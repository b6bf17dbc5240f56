"""A teacher's stored rows by store row, for training: held in memory when they fit a budget, else
served through a window of whole chunks.

    >>> reader = StoredRows([store.teacher("default")], row_bytes=2 * 1000, budget_bytes=1 << 30)
    >>> reader.in_memory, reader.block_rows, reader.window_blocks
    >>> reader.take(np.array([7, 3, 5]))       # {"logits": float16 (3, 1000)}: the rows as stored, in order

Logits (``train/paired_data.py``), a token teacher's targets (``lm.py``) and cached features
(``features/cached_features.py``) are all read through this one reader; decoding is theirs. When
``num_rows * row_bytes`` fits the budget, the rows are read once, a shard at a time, into one table.
Otherwise a fixed cache of ``window_blocks`` slots holds whole chunks: a batch's missing chunks are
read together (``Teacher.read_chunks``: many chunks at once, on the store's thread pool), least
recently used out, and the sampler (``EpochSampler`` with ``block_rows``, ``window_blocks``) visits
the chunks a window at a time so that the cache hits. A batch is one ``np.take`` per array over an
array of row indices, never a Python int per row.

Every read is checked against the store's digests (``Teacher.read_stored``, ``read_chunks``). Zarr
handles are per process: a pickled reader (a DataLoader worker's) holds no teacher; the process that
reads reopens its teachers on first use and refuses any that changed since the reader was made.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict

import numpy as np

from .errors import CorruptStoreError


class StoredRows:
    """Rows of one teacher's stored arrays (or what ``prepare`` makes of several teachers'), by store row.

    Args:
        teachers: the teacher, or an ensemble's teachers (one store, so the same rows).
        row_bytes: bytes one store row takes as held (as ``prepare`` returns it).
        budget_bytes: every row is held in memory when they fit; else the window's size.
        arrays: the content arrays to read, by name (default: the codec's).
        rows: the store rows that will be asked for, ascending (default: all); in memory, only the
            shards holding them are read and the other rows stay zero.
        views: 0 keeps a view axis as stored; K (a K-view teacher) folds the views into rows, each
            taken by (row, view).
        prepare: ``prepare(teachers, pieces, start, stop)``, picklable: each teacher's stored arrays
            of rows [start, stop) -> the arrays held (default: the first teacher's, views folded).
        window_bytes: the window's size, if not ``budget_bytes``.
        reading: what a changed teacher's error says was being read.
        reopen: ``reopen(store, name)``, picklable: what a process reads from, opened again (default:
            the store's teacher ``name``; ``store._tokens.sequence_rows``: the store's own sequences).
    """

    def __init__(self, teachers: list, row_bytes: int, budget_bytes: int, *, arrays: list[str] | None = None,
                 rows: np.ndarray | None = None, views: int = 0, prepare=None, window_bytes: int | None = None,
                 reading: str = "it", reopen=None):
        first = teachers[0]
        self.store, self.names = first.store, [t.name for t in teachers]
        self.identities = [t.identity for t in teachers]  # what every later read must find
        self.arrays = None if arrays is None else list(arrays)  # None: each teacher's codec arrays
        self.num_rows, self.views, self.per_row = first.num_samples, views, max(views, 1)
        self.prepare, self.reading, self.reopen = prepare, reading, reopen or _teacher_named
        self.block_rows = math.lcm(*(t.layout.rows_per_chunk for t in teachers))  # whole chunks of every teacher
        self.in_memory = self.num_rows * row_bytes <= budget_bytes
        window = budget_bytes if window_bytes is None else window_bytes
        self.window_blocks = max(1, window // max(1, self.block_rows * row_bytes))
        self.table = self._read_all(teachers, rows) if self.in_memory else None
        self.cache: OrderedDict = OrderedDict()  # streamed: block -> its slot in ``_slots``, least recently used first
        self._slots: dict[str, np.ndarray] | None = None
        self._slot_of = np.full(-(-self.num_rows // self.block_rows), -1, dtype=np.int64)
        self._teachers, self._pid = None, None  # the streamed reads' teachers, reopened in each process

    def __getstate__(self):  # no zarr handles: the process that reads reopens the teachers
        state = self.__dict__.copy()
        state.update(_teachers=None, cache=OrderedDict(), _slots=None, _slot_of=np.full_like(self._slot_of, -1))
        return state

    def take(self, rows: np.ndarray, views: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The held arrays of store rows ``rows`` (int64), in order, (len(rows), ...) each; with folded
        views, view ``views[i]`` of row ``rows[i]`` (default: view 0)."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.in_memory:
            return _gather(self.table, self._index(rows, views))
        blocks = rows // self.block_rows
        wanted = np.unique(blocks)
        if len(wanted) > self.window_blocks and len(rows) > 1:  # more than the window holds: in halves
            half = len(rows) // 2
            first = self.take(rows[:half], None if views is None else views[:half])
            second = self.take(rows[half:], None if views is None else views[half:])
            return {name: np.concatenate([first[name], second[name]]) for name in first}
        slots = self._cached_slots(wanted)[blocks]
        return _gather(self._slots, self._index(slots * self.block_rows + rows - blocks * self.block_rows, views))

    def _index(self, rows: np.ndarray, views: np.ndarray | None) -> np.ndarray:
        index = rows * self.per_row if self.per_row > 1 else rows
        return index if views is None else index + np.asarray(views, dtype=np.int64)

    def _prepared(self, teachers: list, pieces: list[dict], start: int, stop: int) -> dict[str, np.ndarray]:
        if self.prepare is not None:
            return self.prepare(teachers, pieces, start, stop)
        if not self.views:
            return pieces[0]
        return {name: values.reshape(-1, *values.shape[2:]) for name, values in pieces[0].items()}

    def _read_all(self, teachers: list, rows: np.ndarray | None) -> dict[str, np.ndarray]:
        """Every shard (of the first teacher's layout) holding any of ``rows``, read whole, into one table."""
        layout = teachers[0].layout
        shards = (range(layout.num_shards(self.num_rows)) if rows is None
                  else np.unique(np.asarray(rows, dtype=np.int64) // layout.rows_per_shard).tolist())
        table: dict[str, np.ndarray] = {}
        for shard in shards:
            start, stop = layout.shard_rows(shard, self.num_rows)
            held = self._prepared(teachers, [t.read_stored(start, stop, self.arrays) for t in teachers], start, stop)
            for name, values in held.items():
                if name not in table:  # rows never asked for keep zeros
                    table[name] = np.zeros((self.num_rows * self.per_row, *values.shape[1:]), values.dtype)
                table[name][start * self.per_row:stop * self.per_row] = values
        return table

    def _cached_slots(self, wanted: np.ndarray) -> np.ndarray:
        """The cache slot of every block (indexed by block), the missing ones of ``wanted`` read together
        into the least recently used slots of blocks not wanted."""
        missing = wanted[self._slot_of[wanted] < 0].tolist()
        if missing:
            pieces = self._read_blocks(missing)
            if self._slots is None:
                size = self.window_blocks * self.block_rows * self.per_row
                self._slots = {name: np.empty((size, *v.shape[1:]), v.dtype) for name, v in pieces[0].items()}
            free = list(range(len(self.cache), min(self.window_blocks, len(self.cache) + len(missing))))
            keep = set(wanted.tolist())
            for block in list(self.cache):  # least recently used first
                if len(free) >= len(missing):
                    break
                if block not in keep:
                    free.append(self.cache.pop(block))
                    self._slot_of[block] = -1
            for block, slot, piece in zip(missing, free, pieces):
                start = slot * self.block_rows * self.per_row
                for name, values in piece.items():
                    self._slots[name][start:start + len(values)] = values
                self.cache[block], self._slot_of[block] = slot, slot
        for block in wanted.tolist():
            self.cache.move_to_end(block)
        return self._slot_of

    def _read_blocks(self, blocks: list[int]) -> list[dict[str, np.ndarray]]:
        """The held arrays of whole blocks, each teacher's chunks of all of them read at once."""
        teachers = self._open_teachers()
        per_teacher = [_blocks_of(teacher, blocks, self.block_rows, self.arrays) for teacher in teachers]
        spans = [(block * self.block_rows, min((block + 1) * self.block_rows, self.num_rows)) for block in blocks]
        return [self._prepared(teachers, list(pieces), start, stop) for (start, stop), pieces in
                zip(spans, zip(*per_teacher))]

    def _open_teachers(self) -> list:
        if self._teachers is None or self._pid != os.getpid():
            teachers = [self.reopen(self.store, name) for name in self.names]
            for teacher, identity in zip(teachers, self.identities):
                if teacher.identity != identity:
                    what = getattr(teacher, "label", f"teacher {teacher.name!r}")
                    raise CorruptStoreError(
                        f"{what} in {self.store.location} changed while this run was reading "
                        f"{self.reading} (it was {identity[:24]}…, it is now {teacher.identity[:24]}…: "
                        "overwritten?); start the run again")
            self._teachers, self._pid = teachers, os.getpid()
        return self._teachers


class ReadsStoredRows:
    """What a reader built on ``StoredRows`` (its ``reader``) tells the epoch's sampler: whether its
    rows are in memory, and when they are streamed, the rows of a chunk (the sampler's block) and
    the chunks the cache holds (its window)."""

    reader: StoredRows

    @property
    def in_memory(self) -> bool:
        return self.reader.in_memory

    @property
    def block_rows(self) -> int:
        return self.reader.block_rows

    @property
    def window_blocks(self) -> int:
        return self.reader.window_blocks


def _teacher_named(store, name: str):
    return store.teacher(name)


def _gather(arrays: dict[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
    return {name: np.take(values, index, axis=0) for name, values in arrays.items()}


def _blocks_of(teacher, blocks: list[int], block_rows: int, arrays: list[str] | None) -> list[dict[str, np.ndarray]]:
    """One teacher's stored arrays of each block: its chunks of all the blocks in one checked read (an
    ensemble's block spans a whole number of every teacher's chunks)."""
    per_block = block_rows // teacher.layout.rows_per_chunk
    if per_block == 1:
        return teacher.read_chunks(blocks, arrays)
    chunks = -(-teacher.num_samples // teacher.layout.rows_per_chunk)
    spans = [range(block * per_block, min((block + 1) * per_block, chunks)) for block in blocks]
    pieces = teacher.read_chunks([chunk for span in spans for chunk in span], arrays)
    ends = np.cumsum([len(span) for span in spans]).tolist()
    return [{name: np.concatenate([piece[name] for piece in pieces[end - len(span):end]]) for name in pieces[0]}
            for span, end in zip(spans, ends)]
