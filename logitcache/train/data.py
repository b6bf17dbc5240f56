"""Pair every sample with the logits its teacher produced for it, with bounded memory.

    >>> logits = TeacherLogits.open("data/stores/digits.zarr", budget_bytes=2 << 30)
    >>> paired = PairedDataset(get_dataset("digits@train").dataset, logits)
    >>> sampler = EpochSampler(logits.rows, seed=0, block_rows=logits.block_rows, window_blocks=logits.window_blocks)
    >>> loader = paired.loader(sampler, batch_size=64, workers=2)   # yields (inputs, labels, logits) batches
    >>> logits.take([7, 3, 5])                                      # float32 (3, C): one gather, one decode

Sample i of the dataset is row i of the store: the caller checks the dataset against the store's
fingerprint first (``LogitStore.check_dataset``). When the stored rows fit the budget they are read
once into memory, as stored (fp16 rows stay fp16); otherwise a fixed cache holds a window of
chunks and the sampler visits chunks in a shuffled, windowed order so the cache hits. Either way
targets are gathered and decoded a batch at a time in the process that iterates the loader; the
DataLoader (and its workers) loads inputs and labels only.

A multi-view store holds K views per sample. The sampler then picks one view per sample and
epoch and yields ``row * K + view``; the paired dataset rebuilds that view from the raw sample
(``views.replay.ViewReplay``) and pairs it with that view's logits.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from ..errors import (
    ConfigError,
    CorruptStoreError,
    StoreIncompleteError,
    StoreMismatchError,
)
from ..store import LogitStore, open_store
from .config import CACHE_BUDGET
from .sampler import ArrayBatches, EpochSampler  # noqa: F401 -- the loader's companion, imported from here too
from .targets import BatchDecoder


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
    gives its typed sparse targets instead (``TopKTargets``, ``SampledTargets`` of (K,) rows), so no
    dense row is ever built.
    A K-teacher ensemble is combined with ``ensemble_logits``.

    Rows are held as stored (fp16 logits stay fp16: half the memory of float32, so ImageNet-1k's
    1000 classes fit the default budget) and decoded a batch at a time (``take``). Streamed, a
    window of chunks lives in one fixed cache, read in the process that calls ``take`` (train's main
    process), many chunks at a time; DataLoader workers never hold or read logits."""

    def __init__(self, location, teacher_names=None, budget_bytes: int = CACHE_BUDGET, workers: int = 0,
                 allow_partial: bool = False, temperature: float = 1.0, storage_options: dict | None = None,
                 sparse: bool = False, dense_for: str | None = None, expect_teacher: str | None = None):
        # ``location``: a path or URL, or a store the caller opened already (train opens it once).
        # ``workers`` is accepted for callers that pass it; workers no longer read logits.
        store = location if isinstance(location, LogitStore) else open_store(location, storage_options=storage_options)
        teachers = _resolve_teachers(store, teacher_names, allow_partial)
        _check_combinable(teachers, sparse, dense_for)
        self.store, self.location = store, store.location  # a LogitStore reopens itself in each process
        self.num_samples = store.num_samples
        self.teacher_names = [t.name for t in teachers]
        self.teacher_name = ",".join(self.teacher_names)
        self.codec = teachers[0].codec
        self.num_classes, self.temperature = teachers[0].num_classes, temperature
        self.views = teachers[0].views  # the first teacher's views record (all teachers share it), or None
        self.transform = teachers[0].attrs["settings"].get("transform")  # what made the inputs the teacher saw
        self.sparse = sparse and len(teachers) == 1 and self.codec.has_sparse_form
        self.rows = _written_rows(teachers)
        if self.rows.size == 0:
            raise StoreIncompleteError(f"{', '.join(self.teacher_names)} in {store.location}: no shard is written "
                                       "yet, so there is nothing to train on; let the dump run first")
        self.identities = [t.identity for t in teachers]  # a reopen (worker, later block) must find the same
        self.recorded = {t.name: [t.attrs["settings"].get("weights_sha256"), t.attrs["settings"].get(
            "parameters_sha256"), t.digest] for t in teachers}
        self.per_sample = teachers[0].views_per_sample
        self._decode = BatchDecoder(self.codec, self.sparse, ensemble=len(teachers) > 1)
        row_bytes = self._decode.row_bytes(self.num_classes) * self.per_sample
        self.in_memory = self.num_samples * row_bytes <= budget_bytes
        self.block_rows = min(t.layout.rows_per_chunk for t in teachers)
        self.window_blocks = max(1, budget_bytes // (self.block_rows * row_bytes))
        if expect_teacher:  # before a byte of logits is read
            check_teacher_identity(self, expect_teacher)
        self._table = self._load_all(teachers) if self.in_memory else None
        self._teachers = None
        self._cache: OrderedDict = OrderedDict()  # streamed: chunk -> its slot in ``_slots`` (LRU order)
        self._slots: dict[str, np.ndarray] | None = None
        self._slot_of = np.full(-(-self.num_samples // self.block_rows), -1, dtype=np.int64)

    @classmethod
    def open(cls, location, teacher_names=None, budget_bytes=CACHE_BUDGET, **kwargs) -> TeacherLogits:
        if isinstance(teacher_names, str):
            teacher_names = [n for n in teacher_names.split(",") if n]
        return cls(location, teacher_names, budget_bytes, **kwargs)

    def _stored(self, teachers, pieces: list[dict]) -> list[dict[str, np.ndarray]]:
        """Each teacher's stored arrays of the same rows -> what the table holds, views folded into
        rows (one teacher: its arrays as stored; an ensemble: the combined float32 logits)."""
        if len(teachers) == 1:
            return [{name: v.reshape(-1, *v.shape[2:]) if self.views else v for name, v in p[0].items()}
                    for p in pieces]
        combined = []
        for parts in pieces:
            decoded = np.stack([t.decode(stored) for t, stored in zip(teachers, parts)])
            logits = ensemble_logits(torch.from_numpy(decoded), self.temperature).numpy()
            combined.append({"logits": logits.reshape(-1, self.num_classes)})
        return combined

    def _load_all(self, teachers) -> dict[str, np.ndarray]:
        ranges = list(_contiguous_ranges(self.rows, teachers[0].layout.rows_per_shard))
        table = None
        for (start, stop), piece in zip(ranges, self._stored(teachers, [[t.read_stored(start, stop) for t in teachers]
                                                                         for start, stop in ranges])):
            if table is None:  # unwritten rows keep the codec's fill value (they are never sampled)
                table = {name: np.zeros((self.num_samples * self.per_sample, *v.shape[1:]), v.dtype)
                         for name, v in piece.items()}
            for name, values in piece.items():
                table[name][start * self.per_sample:stop * self.per_sample] = values
        return table

    def __getstate__(self):  # a LogitStore reopens itself; teachers and the streamed cache are per process
        state = self.__dict__.copy()
        state["_teachers"], state["_cache"], state["_slots"] = None, OrderedDict(), None
        state["_slot_of"] = np.full_like(self._slot_of, -1)
        return state

    def __getitem__(self, row: int):
        """One row's targets: (C,), or (K, C) for a multi-view store (typed sparse targets when sparse)."""
        return _row(self.take(np.asarray([row])), 0)

    def take(self, rows, views=None):
        """The targets of many rows at once: (n, C) float32 (typed targets of (n, K) rows when sparse),
        or (n, V, C) for a multi-view store unless ``views`` picks one view per row."""
        rows = np.asarray(rows, dtype=np.int64)
        if views is None and self.per_sample > 1:
            every = np.arange(self.per_sample)
            flat = self._take_flat(np.repeat(rows, self.per_sample), np.tile(every, len(rows)))
            return _reshape(flat, (len(rows), self.per_sample))
        return self._take_flat(rows, np.zeros_like(rows) if views is None else np.asarray(views, dtype=np.int64))

    def _take_flat(self, rows: np.ndarray, views: np.ndarray):
        if self._table is not None:
            return self._decode.gather(self._table, rows * self.per_sample + views)
        blocks = rows // self.block_rows
        if len(np.unique(blocks)) > self.window_blocks and len(rows) > 1:  # more than the cache holds: halves
            half = len(rows) // 2
            return _concat(self._take_flat(rows[:half], views[:half]), self._take_flat(rows[half:], views[half:]))
        slots = self._cached_slots(blocks)
        index = (slots * self.block_rows + rows - blocks * self.block_rows) * self.per_sample + views
        return self._decode.gather(self._slots, index)

    def _cached_slots(self, blocks: np.ndarray) -> np.ndarray:
        """The cache slot of every block, reading the missing ones together (least recently used out)."""
        wanted = np.unique(blocks)
        missing = wanted[self._slot_of[wanted] < 0].tolist()
        if missing:
            teachers = self._open_teachers()
            pieces = self._stored(teachers, list(zip(*[t.read_chunks(missing) for t in teachers])))
            if self._slots is None:
                size = self.window_blocks * self.block_rows * self.per_sample
                self._slots = {name: np.empty((size, *v.shape[1:]), v.dtype) for name, v in pieces[0].items()}
            free = list(range(len(self._cache), min(self.window_blocks, len(self._cache) + len(missing))))
            keep = set(wanted.tolist())
            for block in list(self._cache):  # least recently used first
                if len(free) >= len(missing):
                    break
                if block not in keep:
                    free.append(self._cache.pop(block))
                    self._slot_of[block] = -1
            for block, slot, piece in zip(missing, free, pieces):
                start = slot * self.block_rows * self.per_sample
                for name, values in piece.items():
                    self._slots[name][start:start + len(values)] = values
                self._cache[block], self._slot_of[block] = slot, slot
        for block in wanted.tolist():
            self._cache.move_to_end(block)
        return self._slot_of[blocks]

    def _open_teachers(self) -> list:
        if self._teachers is None or self._pid != os.getpid():
            teachers = [self.store.teacher(n) for n in self.teacher_names]
            for teacher, identity in zip(teachers, self.identities):
                if teacher.identity != identity:
                    raise CorruptStoreError(
                        f"teacher {teacher.name!r} in {self.location} changed while this run was reading it (it "
                        f"was {identity[:24]}…, it is now {teacher.identity[:24]}…: overwritten?); start the run again"
                    )
            self._teachers, self._pid = teachers, os.getpid()
        return self._teachers


# Targets are a float32 tensor or a codec's typed sparse targets (``codecs.Targets``), which select,
# reshape, pin and move their rows as a tensor does.
def _row(targets, index: int):
    return targets[index]


def _reshape(targets, leading: tuple[int, ...]):
    return targets.unflatten(0, leading)


def _concat(first, second):
    return torch.cat([first, second]) if isinstance(first, torch.Tensor) else type(first).cat([first, second])


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
        if not teacher.codec.has_dense_form and (len(teachers) > 1 or not sparse):
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
    return codec if codec.sampled_at is not None else None


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
    rebuilt from the raw sample, and the targets are that view's. ``loader`` batches it the fast
    way: inputs and labels in the DataLoader (its workers, if any), the targets of a whole batch at
    once in the process that iterates (``targets``)."""

    def __init__(self, dataset, logits: TeacherLogits | None, replay=None):
        self.dataset = dataset
        self.logits = logits
        self.replay = replay

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index: int):
        inputs, label = _Inputs(self.dataset, self.replay).sample(index)
        targets = self.targets(np.asarray([index]))
        return inputs, label, _row(targets, 0)

    def targets(self, indices: np.ndarray):
        """The targets of a batch of indices (an empty (n, 0) tensor without logits)."""
        if self.logits is None:
            return torch.empty(len(indices), 0)
        if self.replay is None:
            return self.logits.take(indices)
        return self.logits.take(indices // self.replay.views, indices % self.replay.views)

    def loader(self, sampler, batch_size: int, workers: int = 0, drop_last: bool = False, pin_memory: bool = False,
               persistent_workers: bool = False, extra=None) -> PairedLoader:
        """Batches of ``(inputs, labels, targets)`` in ``sampler``'s order, as
        ``DataLoader(self, batch_size, sampler=sampler, drop_last=drop_last)`` would give them;
        ``extra(indices)``, if given, is appended to each (a batch's cached features)."""
        batches = ArrayBatches(sampler, batch_size, drop_last)
        inputs = DataLoader(_Inputs(self.dataset, self.replay), sampler=batches, batch_size=None,
                            num_workers=workers, pin_memory=pin_memory, persistent_workers=persistent_workers)
        return PairedLoader(inputs, self, pin_memory, extra)


class _Inputs(Dataset):
    """What DataLoader workers load: a batch's inputs and labels (and its indices), never logits."""

    def __init__(self, dataset, replay=None):
        self.dataset, self.replay = dataset, replay

    def sample(self, index: int):
        if self.replay is None:
            return self.dataset[index]
        row, view = divmod(index, self.replay.views)
        image, label = self.dataset[row]
        return self.replay.build(image, row, view), label

    def __getitem__(self, indices: np.ndarray):
        listed = np.asarray(indices, dtype=np.int64).tolist()
        if self.replay is None and callable(getattr(self.dataset, "__getitems__", None)):
            samples = self.dataset.__getitems__(listed)
        else:
            samples = [self.sample(index) for index in listed]
        inputs, labels = default_collate(samples)
        return inputs, labels, torch.tensor(listed, dtype=torch.int64)


class PairedLoader:
    """Iterates ``(inputs, labels, targets)``: the DataLoader's batches, with their targets gathered
    (one gather per batch, decoded as a batch) where they are iterated."""

    def __init__(self, inputs: DataLoader, paired: PairedDataset, pin_memory: bool = False, extra=None):
        self.inputs, self.paired, self.pin_memory, self.extra = inputs, paired, pin_memory, extra

    def __len__(self):
        return len(self.inputs)

    def __iter__(self):
        for inputs, labels, indices in self.inputs:
            gathered = [self.paired.targets(indices.numpy())]
            if self.extra is not None:
                gathered.append(self.extra(indices.numpy()))
            if self.pin_memory:
                gathered = [_pinned(values) for values in gathered]
            yield inputs, labels, *gathered


def _pinned(targets):
    return targets.pin_memory()
