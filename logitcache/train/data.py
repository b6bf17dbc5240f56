"""Pair every sample with the logits its teacher produced for it, with bounded memory.

    >>> logits = TeacherLogits.open("data/stores/digits.zarr", budget_bytes=2 << 30)
    >>> paired = PairedDataset(get_dataset("digits@train").dataset, logits)
    >>> sampler = EpochSampler(logits.rows, seed=0, block_rows=logits.block_rows, window_blocks=logits.window_blocks)
    >>> loader = DataLoader(paired, batch_size=64, sampler=sampler)   # yields (input, label, logits)

Sample i of the dataset is row i of the store: the caller checks the dataset against the store's
fingerprint first (``LogitStore.check_dataset``). When the decoded logits fit the budget they are
read once into one tensor shared by all workers; otherwise each worker keeps a small cache of
decoded chunks and the sampler visits chunks in a shuffled, windowed order so the cache hits.

A multi-view store holds K views per sample. The sampler then picks one view per sample and
epoch and yields ``row * K + view``; the paired dataset rebuilds that view from the raw sample
(``views.replay.ViewReplay``) and pairs it with that view's logits.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..errors import (
    ConfigError,
    CorruptStoreError,
    StoreIncompleteError,
    StoreMismatchError,
)
from ..store import LogitStore, open_store
from .config import CACHE_BUDGET


def ensemble_logits(stack: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logits whose softmax at ``temperature`` is the mean of K teachers' softmaxes at it.

    stack: (K, n, C) -> (n, C), ``T * log(mean_k softmax(z_k / T))``: any loss that applies
    softmax(. / T) to these logits sees exactly the averaged teacher distribution.
    """
    probs = torch.softmax(stack.float() / temperature, dim=-1).mean(0)
    return temperature * torch.log(probs.clamp_min(torch.finfo(torch.float32).tiny))


class TeacherLogits:
    """Targets of one teacher (or a K-teacher ensemble), by store row: in memory, or streamed by
    chunk. Dense stores give float32 logits (C,); with ``sparse=True`` a topk:K or sample:K store
    gives its sparse targets instead (a dict of (K,) tensors), so no dense row is ever built.
    A K-teacher ensemble is combined with ``ensemble_logits``."""

    def __init__(self, location, teacher_names=None, budget_bytes: int = CACHE_BUDGET, workers: int = 0,
                 allow_partial: bool = False, temperature: float = 1.0, storage_options: dict | None = None,
                 sparse: bool = False, dense_for: str | None = None, expect_teacher: str | None = None):
        # ``location``: a path or URL, or a store the caller opened already (train opens it once).
        store = location if isinstance(location, LogitStore) else open_store(location, storage_options=storage_options)
        teachers = _resolve_teachers(store, teacher_names, allow_partial)
        _check_combinable(teachers, sparse, dense_for)
        self.store, self.location = store, store.location  # a LogitStore reopens itself in each worker
        self.teacher_names = [t.name for t in teachers]
        self.teacher_name = ",".join(self.teacher_names)
        self.codec = teachers[0].codec
        self.num_classes, self.temperature = teachers[0].num_classes, temperature
        self.views = teachers[0].views  # the first teacher's views record (all teachers share it), or None
        self.transform = teachers[0].attrs["settings"].get("transform")  # what made the inputs the teacher saw
        self.sparse = sparse and len(teachers) == 1 and self.codec.sparse_form
        self.rows = _written_rows(teachers)
        if self.rows.size == 0:
            raise StoreIncompleteError(f"{', '.join(self.teacher_names)} in {store.location}: no shard is written "
                                       "yet, so there is nothing to train on; let the dump run first")
        self.identities = [t.identity for t in teachers]  # a reopen (worker, later block) must find the same
        self.recorded = {t.name: [t.attrs["settings"].get("weights_sha256"), t.attrs["settings"].get(
            "parameters_sha256"), t.digest] for t in teachers}
        per_view = 16 * self.codec.k + 8 if self.sparse else 4 * self.num_classes * len(teachers)
        row_bytes = per_view * teachers[0].views_per_sample
        self.in_memory = store.num_samples * row_bytes <= budget_bytes
        self.block_rows = min(t.layout.rows_per_chunk for t in teachers)
        self.window_blocks = max(1, budget_bytes // (self.block_rows * row_bytes * max(workers, 1)))
        if expect_teacher:  # before a byte of logits is read
            check_teacher_identity(self, expect_teacher)
        self._table = self._load_all(teachers) if self.in_memory else None
        self._teachers = None
        self._cache: OrderedDict = OrderedDict()

    @classmethod
    def open(cls, location, teacher_names=None, budget_bytes=CACHE_BUDGET, **kwargs) -> TeacherLogits:
        if isinstance(teacher_names, str):
            teacher_names = [n for n in teacher_names.split(",") if n]
        return cls(location, teacher_names, budget_bytes, **kwargs)

    def _read(self, teachers, start: int, stop: int):
        """Rows [start, stop): a (n, C) tensor, or a dict of (n, ...) tensors when sparse."""
        if self.sparse:
            return {k: torch.from_numpy(v) for k, v in teachers[0].read_targets(start, stop).items()}
        parts = [t.read(start, stop) for t in teachers]
        if len(parts) == 1:
            return torch.from_numpy(parts[0])
        return ensemble_logits(torch.from_numpy(np.stack(parts)), self.temperature)

    def _load_all(self, teachers):
        pieces = {start: self._read(teachers, start, stop)
                  for start, stop in _contiguous_ranges(self.rows, teachers[0].layout.rows_per_shard)}
        if not self.sparse:
            table = torch.full((teachers[0].num_samples, *teachers[0].row_shape), float("nan"))
            for start, piece in pieces.items():
                table[start:start + len(piece)] = piece
            return table
        table = {}
        for start, piece in pieces.items():
            for key, values in piece.items():
                if key not in table:
                    table[key] = torch.zeros((teachers[0].num_samples, *values.shape[1:]), dtype=values.dtype)
                table[key][start:start + len(values)] = values
        return table

    def __getstate__(self):  # workers reopen the store themselves (zarr handles are per process)
        state = self.__dict__.copy()
        state["_teachers"], state["_cache"] = None, OrderedDict()
        return state

    def __getitem__(self, row: int):
        if self._table is not None:
            return _row(self._table, row)
        block = row // self.block_rows
        chunk = self._cache.get(block)
        if chunk is None:
            chunk = self._read_block(block)
        self._cache.move_to_end(block)
        return _row(chunk, row - block * self.block_rows)

    def _read_block(self, block: int):
        if self._teachers is None or self._pid != os.getpid():
            teachers = [self.store.teacher(n) for n in self.teacher_names]
            for teacher, identity in zip(teachers, self.identities):
                if teacher.identity != identity:
                    raise CorruptStoreError(
                        f"teacher {teacher.name!r} in {self.location} changed while this run was reading it (it "
                        f"was {identity[:24]}…, it is now {teacher.identity[:24]}…: overwritten?); start the run again"
                    )
            self._teachers, self._pid = teachers, os.getpid()
        start = block * self.block_rows
        stop = min(start + self.block_rows, self._teachers[0].num_samples)
        chunk = self._read(self._teachers, start, stop)
        self._cache[block] = chunk
        while len(self._cache) > self.window_blocks:
            self._cache.popitem(last=False)
        return chunk


def _row(table, index: int):
    return {key: values[index] for key, values in table.items()} if isinstance(table, dict) else table[index]


def _check_combinable(teachers, sparse: bool, dense_for: str | None = None) -> None:
    classes = {t.num_classes for t in teachers}
    if len(classes) > 1:
        detail = ", ".join(f"{t.name}: {t.num_classes}" for t in teachers)
        raise StoreMismatchError(f"an ensemble needs teachers with one class count; these have {detail}")
    first = teachers[0]
    for other in teachers[1:]:  # an ensemble of multi-view teachers must have seen the very same views
        same = other.views_per_sample == first.views_per_sample and bool(other.views) == bool(first.views)
        if same and first.views:
            same = np.array_equal(first.read_view_params(0, first.num_samples),
                                  other.read_view_params(0, other.num_samples), equal_nan=True)
        if not same:
            raise StoreMismatchError(
                f"teachers {first.name!r} and {other.name!r} saw different views of the samples; an ensemble "
                "needs teachers dumped with the same --augment, --views and --seed"
            )
    for teacher in teachers:
        if teacher.codec.sparse_only and (len(teachers) > 1 or not sparse):
            use = "an ensemble" if len(teachers) > 1 else dense_for or "this loss"
            raise ConfigError(
                f"teacher {teacher.name!r} is stored as {teacher.codec.name} (sampled classes, no distribution), "
                f"which {use} cannot use: train it alone with --loss kl"
            )


def check_teacher_identity(logits: TeacherLogits, expected: str) -> None:
    """Refuse teachers whose weights/parameters sha256 or (format v3) teacher digest do not start
    with the expected digests: the teacher digest pins the exact stored logits and metadata. Checked
    against the teachers ``logits`` opened, which every later read is held to (``identities``)."""
    names = logits.teacher_names
    wanted = [e.strip().lower().removeprefix("sha256:") for e in expected.split(",")]
    if len(wanted) != len(names):
        raise ConfigError(f"--expect-teacher names {len(wanted)} digests for {len(names)} teachers ({', '.join(names)})")
    for name, digest in zip(names, wanted):
        if len(digest) < 8:
            raise ConfigError(f"--expect-teacher {digest!r} is too short: give at least 8 hex digits")
        recorded = logits.recorded[name]
        if not any(r and r.removeprefix("sha256:").startswith(digest) for r in recorded):
            shown = ", ".join(r for r in recorded if r)
            raise StoreMismatchError(
                f"teacher {name!r} in {logits.location} is not the expected teacher {digest[:16]}…: it has {shown}"
            )


def sampled_codec(location, teacher_names: str | None, allow_partial: bool, storage_options: dict | None):
    """The codec of the one teacher a run would read, if it stores sampled classes (``sample:K:T``,
    which fixes the temperature); None for every other store and for ensembles."""
    store = location if isinstance(location, LogitStore) else open_store(location, storage_options=storage_options)
    names = [n for n in (teacher_names or "").split(",") if n]
    if len(names) > 1:
        return None
    codec = _resolve_teachers(store, names, allow_partial)[0].codec
    return codec if codec.sparse_only else None


def _resolve_teachers(store, names, allow_partial: bool) -> list:
    if not names:  # the only complete teacher; or the only teacher, if none is complete yet
        only_one = not store.teacher_names and len(store.all_teacher_names) == 1
        teachers = [store.teacher(store.all_teacher_names[0] if only_one else None)]
    else:
        teachers = [store.teacher(name) for name in names]
    for teacher in teachers:
        if not teacher.is_complete and not allow_partial:
            done = int(teacher.shard_done().sum())
            raise StoreIncompleteError(
                f"teacher {teacher.name!r} in {store.location} is {teacher.status} ({done}/{teacher.num_shards} "
                "shards); finish the dump, or pass --allow-partial to train on the written samples only"
            )
    return teachers


def _written_rows(teachers) -> np.ndarray:
    """Store rows whose shards every teacher has written (all rows for complete teachers)."""
    written = np.ones(teachers[0].num_samples, dtype=bool)
    for teacher in teachers:
        mask = np.zeros(teacher.num_samples, dtype=bool)
        for shard in np.flatnonzero(teacher.shard_done()):
            mask[slice(*teacher.layout.shard_rows(int(shard), teacher.num_samples))] = True
        written &= mask
    return np.flatnonzero(written)


def _contiguous_ranges(rows: np.ndarray, max_len: int):
    """[start, stop) runs of consecutive rows, each at most ``max_len`` long."""
    if rows.size == 0:
        return
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    for run in np.split(rows, breaks):
        for first in range(0, len(run), max_len):
            piece = run[first:first + max_len]
            yield int(piece[0]), int(piece[-1]) + 1


class PairedDataset(Dataset):
    """(input, label, teacher_logits) by store row; without logits, (input, label, empty).

    With a ``replay`` (multi-view stores) indices are ``row * K + view``: the input is that view,
    rebuilt from the raw sample, and the targets are that view's."""

    def __init__(self, dataset, logits: TeacherLogits | None, replay=None):
        self.dataset = dataset
        self.logits = logits
        self.replay = replay

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index: int):
        if self.replay is None:
            inputs, label = self.dataset[index]
            return inputs, label, self.logits[index] if self.logits is not None else torch.empty(0)
        row, view = divmod(index, self.replay.views)
        image, label = self.dataset[row]
        return self.replay.build(image, row, view), label, _row(self.logits[row], view)


class EpochSampler(Sampler[int]):
    """A seeded order over given rows that is a pure function of (seed, epoch).

    Under DDP every rank computes the same order and takes its share (``rank_order``).
    With ``block_rows`` it is a block shuffle: blocks of consecutive rows are visited in random
    order, ``window_blocks`` at a time, with the rows of each window shuffled together. Every
    row still comes exactly once per epoch, and a reader needs only one window of blocks.

    With ``views`` = K > 0 it yields ``row * K + view``: one view per row and epoch, ``random``
    (seeded by (seed, epoch, row)) or ``cycle`` (view (epoch - 1 + row) mod K, so over K epochs
    every sample shows every view once).
    """

    def __init__(self, rows, seed: int, shuffle: bool = True, block_rows: int | None = None,
                 window_blocks: int = 1, rank: int = 0, world_size: int = 1, views: int = 0,
                 view_order: str = "random"):
        self.rows = np.asarray(rows, dtype=np.int64)
        self.seed, self.shuffle = seed, shuffle
        self.block_rows, self.window_blocks = block_rows, max(1, window_blocks)
        self.rank, self.world_size = rank, world_size
        self.views, self.view_order = views, view_order
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        return -(-len(self.rows) // self.world_size)

    def rank_order(self) -> np.ndarray:
        """This rank's share: every world_size-th row of the epoch's order, padded by wrapping
        around (as DistributedSampler does) so every rank takes the same number of steps."""
        order = self.order()
        if self.world_size == 1:
            return order
        padding = len(self) * self.world_size - len(order)
        return np.concatenate([order, order[:padding]])[self.rank :: self.world_size]

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

    def view_of(self, rows: np.ndarray) -> np.ndarray:
        """The view each of ``rows`` shows this epoch."""
        if self.view_order == "cycle":
            return (self.epoch - 1 + rows) % self.views
        choice = np.random.default_rng([self.seed, self.epoch, VIEW_CHOICE_TAG]).integers(
            self.views, size=int(self.rows.max(initial=-1)) + 1)
        return choice[rows]

    def __iter__(self):
        order = self.rank_order()
        if self.views:
            order = order * self.views + self.view_of(order)
        return iter(order.tolist())


VIEW_CHOICE_TAG = 0x71E6  # keeps the view choice's random stream apart from the order's
