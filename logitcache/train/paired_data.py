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

from functools import partial

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from ..errors import ConfigError, StoreIncompleteError, StoreMismatchError
from ..store import LogitStore, open_store
from ..stored_rows import ReadsStoredRows, StoredRows
from .train_config import CACHE_BUDGET
from .sampler import ArrayBatches, EpochSampler  # noqa: F401 -- the loader's companion, imported from here too
from .targets import BatchDecoder


def ensemble_logits(stack: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logits whose softmax at ``temperature`` is the mean of K teachers' softmaxes at it.

    stack: (K, n, C) -> (n, C), ``T * log(mean_k softmax(z_k / T))``: any loss that applies
    softmax(. / T) to these logits sees exactly the averaged teacher distribution.
    """
    probs = torch.softmax(stack.float() / temperature, dim=-1).mean(0)
    return temperature * torch.log(probs.clamp_min(torch.finfo(torch.float32).tiny))


class TeacherLogits(ReadsStoredRows):
    """Targets of one teacher (or a K-teacher ensemble), by store row: in memory, or streamed by
    chunk. Dense stores give float32 logits (C,); with ``sparse=True`` a topk:K or sample:K store
    gives its typed sparse targets instead (``TopKTargets``, ``SampledTargets`` of (K,) rows), so no
    dense row is ever built.
    A K-teacher ensemble is combined with ``ensemble_logits``.

    Rows are held as stored (fp16 logits stay fp16: half the memory of float32, so ImageNet-1k's
    1000 classes fit the default budget) and decoded a batch at a time (``take``). Streamed, a
    window of chunks lives in one fixed cache (``stored_rows.StoredRows``), read in the process that
    calls ``take`` (train's main process), many chunks at a time; DataLoader workers never hold or
    read logits."""

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
        self.recorded = {t.name: [t.attrs["settings"].get("weights_sha256"), t.attrs["settings"].get(
            "parameters_sha256"), t.digest] for t in teachers}
        self.per_sample = teachers[0].views_per_sample
        self._decode = BatchDecoder(self.codec, self.sparse, ensemble=len(teachers) > 1)
        if expect_teacher:  # before a byte of logits is read
            check_teacher_identity(self, expect_teacher)
        # every later read (a worker's, a later window's) is held to the teachers opened here
        combine = partial(_ensemble_rows, temperature=temperature) if len(teachers) > 1 else None
        self.reader = StoredRows(teachers, self._decode.row_bytes(self.num_classes) * self.per_sample, budget_bytes,
                                 rows=self.rows, views=self.per_sample if self.views else 0, prepare=combine)

    @classmethod
    def open(cls, location, teacher_names=None, budget_bytes=CACHE_BUDGET, **kwargs) -> TeacherLogits:
        if isinstance(teacher_names, str):
            teacher_names = [n for n in teacher_names.split(",") if n]
        return cls(location, teacher_names, budget_bytes, **kwargs)

    def __getitem__(self, row: int):
        """One row's targets: (C,), or (K, C) for a multi-view store (typed sparse targets when sparse)."""
        return _row(self.take(np.asarray([row])), 0)

    def take(self, rows, views=None):
        """The targets of many rows at once: (n, C) float32 (typed targets of (n, K) rows when sparse),
        or (n, V, C) for a multi-view store unless ``views`` picks one view per row."""
        rows = np.asarray(rows, dtype=np.int64)
        if views is None and self.per_sample > 1:
            every = np.arange(self.per_sample)
            flat = self._decode(self.reader.take(np.repeat(rows, self.per_sample), np.tile(every, len(rows))))
            return _reshape(flat, (len(rows), self.per_sample))
        return self._decode(self.reader.take(rows, views))


def _ensemble_rows(teachers, pieces: list[dict], start: int, stop: int, temperature: float) -> dict[str, np.ndarray]:
    """K teachers' stored arrays of the same rows -> what the reader holds: their combined float32
    logits (``ensemble_logits``), views folded into rows."""
    decoded = np.stack([t.decode(stored) for t, stored in zip(teachers, pieces)])
    logits = ensemble_logits(torch.from_numpy(decoded), temperature).numpy()
    return {"logits": logits.reshape(-1, logits.shape[-1])}


# Targets are a float32 tensor or a codec's typed sparse targets (``codecs.Targets``), which select,
# reshape, pin and move their rows as a tensor does.
def _row(targets, index: int):
    return targets[index]


def _reshape(targets, leading: tuple[int, ...]):
    return targets.unflatten(0, leading)


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
    against the teachers ``logits`` opened, which every later read is held to (``StoredRows``)."""
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
