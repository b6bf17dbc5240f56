"""One teacher's group in a store: its logit arrays, shard ledger, provenance and status.

    >>> teacher = open_store("digits.zarr").teacher("default")
    >>> teacher.status, teacher.num_classes, teacher.codec.name
    ('complete', 10, 'fp16')
    >>> teacher.read(0, 128)          # float32 (128, C), decoded
    >>> teacher.take([7, 3])          # any rows, any order

A shard is the unit of writing. ``shard_done`` (one chunk per shard, so concurrent writers of
disjoint shards never touch the same object) records the shards whose every array was written
and read back intact; ``status`` turns ``complete`` only once every shard is done.

A multi-view teacher (format v2) holds K views per sample: every codec array gains a view axis,
(N, K, ...), and ``view_params`` (N, K, P) float16 records how each view was cut (optionally with
``view_hashes`` (N, K) uint64 of each view's input). Reads then return (n, K, C); the codec itself
always sees flat (n * K, ...) rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
from functools import cached_property

import numpy as np
import zarr
import zarr.codecs

from ..codecs import Codec, stored_codec
from ..errors import (
    CorruptStoreError,
    StoreAccessError,
    StoreConnectionError,
    StoreIncompleteError,
)
from ._backend import retry_transient
from ._create import teacher_status
from ._features import decode_features, feature_array_name, read_features
from ._integrity import CHUNK_DIGESTS_ARRAY, chunk_digest, shard_chunk_digests
from ._schema import (
    SHARD_DONE_ARRAY,
    STATUS_COMPLETE,
    TEACHER_ATTR,
    VIEW_HASHES_ARRAY,
    VIEW_PARAMS_ARRAY,
    Layout,
)
from ._shard_io import ShardIO, parallel_map
from ._teacher_writes import TeacherWrites
from ._tokens import SHARD_STATS_ARRAY, token_extra_arrays


def _settle_pending_reads(timeout: float = 5.0) -> None:
    """After one chunk read failed, let zarr's other reads of that request finish on its event loop,
    so none is left pending when the process exits (asyncio would print a warning for each)."""

    async def settle() -> None:
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        if others:
            await asyncio.wait(others, timeout=timeout)

    with contextlib.suppress(Exception):
        zarr.core.sync.sync(settle())


class Teacher(TeacherWrites):
    """Read (and, for a writable store, write: ``_teacher_writes.py``) one teacher's logits."""

    def __init__(self, group: zarr.Group, name: str, store):
        self.group = group
        self.name = name
        self.store = store

    def __repr__(self):
        return f"Teacher({self.name!r}, status={self.status!r}, C={self.num_classes}, codec={self.codec.name})"

    @property
    def attrs(self) -> dict:
        """A copy of the teacher attribute (provenance, settings, status, metrics, run)."""
        return copy.deepcopy(dict(self.group.attrs[TEACHER_ATTR]))

    @property
    def raw_attrs(self) -> dict:
        """The teacher attribute as stored, or {} when there is none yet."""
        return dict(self.group.attrs.get(TEACHER_ATTR) or {})

    @property
    def has_digests(self) -> bool:
        """True for a format-v3 teacher: chunk digests and an integrity record (``_integrity.py``)."""
        return "integrity" in self.raw_attrs

    @property
    def digest(self) -> str | None:
        """The complete teacher's digest (``integrity.teacher``, checked on open), or None before v3
        or completion."""
        return (self.raw_attrs.get("integrity") or {}).get("teacher")

    @property
    def identity(self) -> str:
        """What this teacher is, for noticing that it changed under a reader: the teacher digest, or
        (before v3, or before completion) a digest of its settings and when its dump started."""
        if self.digest:
            return self.digest
        record = {"settings": self.raw_attrs.get("settings"), "started": (self.raw_attrs.get("run") or {})
                  .get("started_at")}
        text = json.dumps(record, sort_keys=True, default=str)
        return "attributes:" + hashlib.sha256(text.encode()).hexdigest()

    @cached_property
    def chunk_digests(self) -> np.ndarray:
        """(n_chunks, 32) uint8: each inner chunk's digest, zero where not written yet."""
        return self.group[CHUNK_DIGESTS_ARRAY][:]

    @property
    def status(self) -> str:
        """``writing`` or ``complete`` (``creating`` for a group another process is just making)."""
        return teacher_status(self.group)

    @property
    def is_complete(self) -> bool:
        return self.status == STATUS_COMPLETE

    @cached_property
    def num_classes(self) -> int:
        return int(self.group.attrs[TEACHER_ATTR]["num_classes"])

    @cached_property
    def codec(self) -> Codec:
        """The codec its record names, for its classes, with its ids as stored (packed: format v5;
        gaps: v6) and its log-probabilities (one sum per row: v7)."""
        return stored_codec({**self.group.attrs[TEACHER_ATTR], "num_classes": self.num_classes})

    @cached_property
    def layout(self) -> Layout:
        return Layout.from_dict(self.group.attrs[TEACHER_ATTR]["layout"])

    @property
    def num_samples(self) -> int:
        """Rows: the store's samples, or (token store) its token positions."""
        return self.store.num_rows

    @property
    def num_shards(self) -> int:
        return self.layout.num_shards(self.num_samples)

    @cached_property
    def views(self) -> dict | None:
        """A multi-view teacher's ``views`` record (count, params, hashes, augment, ...); else None."""
        return self.group.attrs[TEACHER_ATTR].get("views")

    @property
    def views_per_sample(self) -> int:
        return int(self.views["count"]) if self.views else 1

    @property
    def has_view_hashes(self) -> bool:
        return bool(self.views and self.views.get("hashes"))

    @cached_property
    def arrays(self) -> dict[str, zarr.Array]:
        """The codec's arrays, which hold the logits."""
        return {name: self.group[name] for name in self.codec.arrays}

    @cached_property
    def content_arrays(self) -> dict[str, zarr.Array]:
        """Every array the chunk digests cover: the codec's, the views', a token teacher's extras and the features'."""
        return {**self.arrays, **self.view_arrays, **self.token_arrays, **self.feature_arrays}

    @cached_property
    def token_arrays(self) -> dict[str, zarr.Array]:
        """A token teacher's per-row arrays beside its codec's (``_tokens.token_extra_arrays``)."""
        names = token_extra_arrays(self.codec.name) if self.store.is_tokens else {}
        return {name: self.group[name] for name in names}

    @cached_property
    def features(self) -> list[dict]:
        """The records of the teacher's named features (format v4, ``_features.py``), in order; else []."""
        return list(self.group.attrs[TEACHER_ATTR].get("features") or [])

    @cached_property
    def feature_arrays(self) -> dict[str, zarr.Array]:
        """``features/NAME`` for every named feature (empty for a teacher without features)."""
        return {feature_array_name(f["name"]): self.group[feature_array_name(f["name"])] for f in self.features}

    @cached_property
    def _io(self) -> ShardIO | None:
        """Whole-shard writes and chunk-run reads without zarr's per-chunk pipeline (``_shard_io.py``)
        for the content arrays laid out as logitcache makes them; zarr reads and writes any other
        (``_zarr_names``). None: zarr does everything."""
        return ShardIO.for_arrays(self.content_arrays, self.num_samples, self.layout.rows_per_chunk,
                                  self.layout.rows_per_shard)

    def _zarr_names(self, names) -> list[str]:
        """Those of ``names`` that the fast path does not serve."""
        return [name for name in names if self._io is None or name not in self._io.arrays]

    @cached_property
    def view_arrays(self) -> dict[str, zarr.Array]:
        """``view_params`` (and ``view_hashes``, if recorded) of a multi-view teacher; else empty."""
        names = [VIEW_PARAMS_ARRAY, VIEW_HASHES_ARRAY] if self.has_view_hashes else [VIEW_PARAMS_ARRAY]
        return {name: self.group[name] for name in names} if self.views else {}

    def flat(self, stored: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Stored codec arrays with views folded into rows, (n, K, ...) -> (n * K, ...), as the
        codec reads them (unchanged for a single-view teacher)."""
        if not self.views:
            return stored
        return {name: values.reshape(-1, *values.shape[2:]) for name, values in stored.items()
                if name in self.codec.arrays}

    def _unflat(self, values: np.ndarray) -> np.ndarray:
        return values.reshape(-1, self.views_per_sample, *values.shape[1:]) if self.views else values

    def decode(self, stored: dict[str, np.ndarray]) -> np.ndarray:
        """Stored arrays -> float32 logits: (n, C), or (n, K, C) for a multi-view teacher."""
        return self._unflat(self.codec.decode(self.flat(stored)))

    def rows_ok(self, stored: dict[str, np.ndarray]) -> np.ndarray:
        """(n,) True where a sample's row (every view of it) was written."""
        ok = self.codec.rows_ok(self.flat(stored))
        return ok.reshape(-1, self.views_per_sample).all(axis=1)

    def shard_stats(self) -> np.ndarray:
        """float64 (num_shards, 4) of a token teacher: per shard the teacher's own statistics over
        its target positions (``_tokens.SHARD_STATS``), NaN where not written."""
        return self.group[SHARD_STATS_ARRAY][:]

    def shard_done(self) -> np.ndarray:
        """bool (num_shards,): which shards were written and read back intact."""
        return self.group[SHARD_DONE_ARRAY][:].astype(bool)

    def nbytes_stored(self) -> int:
        """Bytes the logit arrays (and a token teacher's extras) take in the store, compressed, with
        shard indexes."""
        return sum(int(array.nbytes_stored()) for array in {**self.arrays, **self.token_arrays}.values())

    def nbytes_views(self) -> int:
        """Bytes ``view_params`` and ``view_hashes`` take (0 for a single-view teacher)."""
        return sum(int(array.nbytes_stored()) for array in self.view_arrays.values())

    # -- reading -------------------------------------------------------------------------------

    def read_stored(self, start: int, stop: int, arrays: dict | None = None) -> dict[str, np.ndarray]:
        """The raw stored arrays (default: the codec's; ``arrays``: any content arrays by name) for rows
        [start, stop), checked: each chunk's CRC-32C, and a v3 teacher's chunks must match their
        position-bound digests (over every content array, so all of them are read)."""
        names = list(self.arrays if arrays is None else arrays)
        if not self.has_digests:
            return self._read_raw(start, stop, {name: self.content_arrays[name] for name in names})
        rows = self.layout.rows_per_chunk
        lo, hi = start // rows * rows, min(-(-stop // rows) * rows, self.num_samples)
        stored = self._read_checked([(lo, hi)])[0]
        return {name: stored[name][start - lo:stop - lo] for name in names}

    def read_chunks(self, chunks, arrays: dict | None = None) -> list[dict[str, np.ndarray]]:
        """The stored arrays (default: the codec's; ``arrays``: any content arrays by name) of whole
        inner chunks (the rows of each), checked like ``read_stored``; many chunks are fetched and
        checked together (few requests per array and shard, decompression and digests on the pool)."""
        rows = self.layout.rows_per_chunk
        ranges = [(int(c) * rows, min((int(c) + 1) * rows, self.num_samples)) for c in chunks]
        if self._io is None or not self.has_digests:
            return [self.read_stored(start, stop, arrays) for start, stop in ranges]
        names = list(self.arrays if arrays is None else arrays)
        return [{name: stored[name] for name in names} for stored in self._read_checked(ranges)]

    def _read_checked(self, ranges: list[tuple[int, int]]) -> list[dict[str, np.ndarray]]:
        """Every content array over each chunk-aligned row range, each inner chunk checked against its
        digest: arrays the fast path does not serve are read by zarr first and checked with the chunks
        the fast path decodes (on the pool); with no fast path, zarr reads all and they are checked here."""
        others = {name: self.content_arrays[name] for name in self._zarr_names(self.content_arrays)}
        extra = [self._read_raw(lo, hi, others) for lo, hi in ranges] if others else None
        if self._io is None:
            for (lo, hi), stored in zip(ranges, extra):
                self._check_digests(lo, hi, stored)
            return extra
        first, last = (ranges[0][0], ranges[-1][1]) if ranges else (0, 0)
        return self._reading(lambda: self._io.read_ranges(ranges, list(self._io.arrays), self._check_chunk, extra),
                             first, last)

    def _check_chunk(self, start: int, stop: int, stored: dict[str, np.ndarray]) -> None:
        """One inner chunk's rows against its recorded digest (none recorded: not written yet)."""
        chunk = start // self.layout.rows_per_chunk
        recorded = self.chunk_digests[chunk]
        if recorded.any() and bytes(recorded) != chunk_digest(chunk, start, stop, stored):
            raise CorruptStoreError(
                f"teacher {self.name!r}, rows {start}-{stop}: the stored values are not the ones the dump wrote "
                "there (digest mismatch: moved, swapped or edited chunks)")

    def _read_raw(self, start: int, stop: int, arrays: dict) -> dict[str, np.ndarray]:
        """Rows [start, stop) of the given content arrays as stored, CRC-checked, not digest-checked."""
        slow = self._zarr_names(arrays)
        fast = [name for name in arrays if name not in slow]

        def read():
            stored = {name: arrays[name][start:stop] for name in slow}
            return {**stored, **(self._io.read(start, stop, fast) if fast else {})}

        return self._reading(read, start, stop)

    def _reading(self, read, start: int, stop: int):
        """``read()``, retried after transient network errors; damage becomes one CorruptStoreError."""
        try:
            return retry_transient(read, self.store.location)
        except (StoreConnectionError, StoreAccessError, CorruptStoreError):
            raise
        except Exception as err:  # zarr raises several types for a bad checksum or truncated shard
            _settle_pending_reads()
            reason = (
                "checksum mismatch (corrupted or truncated bytes)"
                if "checksum" in str(err).lower()
                else f"{type(err).__name__}: {err}"
            )
            raise CorruptStoreError(f"teacher {self.name!r}, rows {start}-{stop}: {reason}") from None

    def _check_digests(self, lo: int, hi: int, stored: dict[str, np.ndarray]) -> None:
        """Compare chunk-aligned rows [lo, hi) with their recorded digests (unwritten chunks: none)."""
        rows = self.layout.rows_per_chunk
        found = shard_chunk_digests(stored, lo, hi, rows, map=parallel_map)
        recorded = self.chunk_digests[lo // rows:lo // rows + len(found)]
        bad = np.flatnonzero(recorded.any(axis=1) & (recorded != found).any(axis=1))
        if bad.size:
            chunk = lo // rows + int(bad[0])
            raise CorruptStoreError(
                f"teacher {self.name!r}, rows {chunk * rows}-{min((chunk + 1) * rows, self.num_samples)}: the stored "
                "values are not the ones the dump wrote there (digest mismatch: moved, swapped or edited chunks)"
            )

    def read(self, start: int, stop: int) -> np.ndarray:
        """Decoded float32 logits (stop - start, C) for a contiguous row range.

        Raises:
            CorruptStoreError: a chunk fails its checksum.
            StoreIncompleteError: rows that were never written (they decode to NaN).
        """
        stored = self.read_stored(start, stop)
        self.require_rows(stored, start, stop)
        return self.decode(stored)

    def require_rows(self, stored: dict[str, np.ndarray], start: int, stop: int, missing=None,
                      kind: str = "logits") -> None:
        """Unwritten rows: an unfinished dump (rerun it), or, in a complete teacher, damage."""
        missing = ~self.rows_ok(stored) if missing is None else missing
        if not missing.any():
            return
        what = f"teacher {self.name!r}: {int(missing.sum())} rows in {start}-{stop} hold no {kind} " \
               f"(first: row {start + int(np.flatnonzero(missing)[0])})"
        if self.is_complete:
            raise CorruptStoreError(f"{what}, though it is marked complete: the store was damaged after the dump "
                                    "(a chunk is missing); restore it, or dump again with --overwrite")
        raise StoreIncompleteError(f"{what}; the dump did not finish — rerun it to resume")

    def read_features(self, start: int, stop: int, names: list[str] | None = None) -> dict[str, np.ndarray]:
        """Decoded float32 features by name for rows [start, stop): (n, [K,] *shape), checked like ``read``."""
        return read_features(self, start, stop, names)

    def decode_features(self, stored: dict[str, np.ndarray], start: int, stop: int,
                        names: list[str] | None = None) -> dict[str, np.ndarray]:
        """``read_features`` of stored ``features/NAME`` arrays already read (checked) for rows [start, stop)."""
        return decode_features(self, stored, start, stop, names)

    def read_view_params(self, start: int, stop: int) -> np.ndarray:
        """float16 (stop - start, K, P): how each stored view was cut (see docs/FORMAT.md)."""
        params = self.read_stored(start, stop, {VIEW_PARAMS_ARRAY: self.view_arrays[VIEW_PARAMS_ARRAY]})
        return params[VIEW_PARAMS_ARRAY]

    def read_view_hashes(self, start: int, stop: int) -> np.ndarray:
        """uint64 (stop - start, K): the recorded hash of each view's input tensor."""
        hashes = self.read_stored(start, stop, {VIEW_HASHES_ARRAY: self.view_arrays[VIEW_HASHES_ARRAY]})
        return hashes[VIEW_HASHES_ARRAY]

    def read_targets(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Rows [start, stop) as the codec's sparse training targets (checked like ``read``)."""
        stored = self.read_stored(start, stop)
        self.require_rows(stored, start, stop)
        return {key: self._unflat(values) for key, values in self.codec.sparse_targets(self.flat(stored)).items()}

    def take(self, indices) -> np.ndarray:
        """Decoded float32 logits (len(indices), C) — (len(indices), K, C) for a multi-view
        teacher — for any rows, in the order given (each inner chunk touched is read once)."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size == 0:
            return np.empty((0, *self.row_shape), dtype=np.float32)
        rows = self.layout.rows_per_chunk
        out = np.empty((indices.size, *self.row_shape), dtype=np.float32)
        for chunk in np.unique(indices // rows):
            picked = np.flatnonzero(indices // rows == chunk)
            start = int(chunk) * rows
            out[picked] = self.read(start, min(start + rows, self.num_samples))[indices[picked] - start]
        return out

    @property
    def row_shape(self) -> tuple[int, ...]:
        """The decoded shape of one sample: (C,), or (K, C) for a multi-view teacher."""
        return (self.views_per_sample, self.num_classes) if self.views else (self.num_classes,)
