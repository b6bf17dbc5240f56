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

from ..errors import (
    CorruptStoreError,
    NonFiniteLogitsError,
    StoreAccessError,
    StoreConnectionError,
    StoreIncompleteError,
)
from ._backend import retry_transient
from ._checks import teacher_metadata_digest
from ._codecs import Codec, get_codec
from ._create import teacher_status
from ._features import encode_features, feature_array_name, read_features
from ._integrity import (
    CHUNK_DIGESTS_ARRAY,
    content_digest,
    integrity_record,
    shard_chunk_digests,
)
from ._schema import (
    SHARD_DONE_ARRAY,
    STATUS_COMPLETE,
    TEACHER_ATTR,
    VIEW_HASHES_ARRAY,
    VIEW_PARAMS_ARRAY,
    Layout,
)
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


class Teacher:
    """Read (and, for a writable store, write) one teacher's logits."""

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
        return get_codec(self.group.attrs[TEACHER_ATTR]["codec"]).for_classes(self.num_classes)

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
        """The raw stored arrays (default: the codec's) for rows [start, stop), checked: zarr checks
        each chunk's CRC-32C, and a v3 teacher's chunks must match their position-bound digests."""
        names = list(self.arrays if arrays is None else arrays)
        if not self.has_digests:
            return self._read_raw(start, stop, {name: self.content_arrays[name] for name in names})
        rows = self.layout.rows_per_chunk
        lo, hi = start // rows * rows, min(-(-stop // rows) * rows, self.num_samples)
        stored = self._read_raw(lo, hi, self.content_arrays)
        self._check_digests(lo, hi, stored)
        return {name: stored[name][start - lo:stop - lo] for name in names}

    def _read_raw(self, start: int, stop: int, arrays: dict) -> dict[str, np.ndarray]:
        try:
            return retry_transient(lambda: {name: array[start:stop] for name, array in arrays.items()},
                                   self.store.location)
        except (StoreConnectionError, StoreAccessError):
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
        found = shard_chunk_digests(stored, lo, hi, rows)
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

    # -- writing -------------------------------------------------------------------------------

    def write_shard(self, shard: int, logits: np.ndarray, views: dict | None = None,
                    features: dict | None = None) -> dict[str, np.ndarray]:
        """Encode and write one whole shard, read it back, record it done; return what was stored.

        ``logits`` is float32 (n, C), or (n, K, C) with ``views`` = {"view_params": (n, K, P),
        "view_hashes": (n, K) uint64 if recorded} for a multi-view teacher. ``features``: float32
        (n, [K,] *shape) by feature name, for a teacher with features.

        Raises:
            NonFiniteLogitsError: a row holds NaN or inf; the message names the sample keys.
            CorruptStoreError: what was read back differs from what was written.
        """
        start, stop = self.layout.shard_rows(shard, self.num_samples)
        if logits.shape != (stop - start, *self.row_shape):
            raise ValueError(f"shard {shard} needs shape {(stop - start, *self.row_shape)}, got {logits.shape}")
        if sorted(views or {}) != sorted(self.view_arrays):
            raise ValueError(f"shard {shard} needs view arrays {sorted(self.view_arrays)}, got {sorted(views or {})}")
        bad = np.flatnonzero(~np.isfinite(logits.reshape(len(logits), -1)).all(axis=1))
        if bad.size:
            keys = self.store.keys[start + bad[:5]]
            raise NonFiniteLogitsError(
                f"the teacher produced NaN/inf logits for {bad.size} samples in rows {start}-{stop} "
                f"(keys: {', '.join(map(repr, keys))}{', …' if bad.size > 5 else ''}); "
                "nothing was marked complete"
            )
        encoded = self.codec.encode_shard(logits.reshape(-1, self.num_classes), shard)
        encoded = {name: self._unflat(values) for name, values in encoded.items()}
        encoded.update({name: np.asarray(values, dtype=self.view_arrays[name].dtype) for name, values in
                        (views or {}).items()})
        encoded.update(encode_features(self.features, features or {}, self.store.keys[start:stop]))
        return self.write_encoded(shard, encoded)

    def read_features(self, start: int, stop: int, names: list[str] | None = None) -> dict[str, np.ndarray]:
        """Decoded float32 features by name for rows [start, stop): (n, [K,] *shape), checked like ``read``."""
        return read_features(self, start, stop, names)

    def write_encoded(self, shard: int, encoded: dict[str, np.ndarray],
                      stats: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Write one whole shard of already-encoded arrays (one per content array), read it back,
        record its digests and mark it done; return what was stored. ``write_shard`` encodes on the
        host; a token dump reduces on the device and hands its arrays here, with the shard's
        ``stats`` (``_tokens.SHARD_STATS``).

        Raises:
            CorruptStoreError: what was read back differs from what was written.
        """
        start, stop = self.layout.shard_rows(shard, self.num_samples)
        arrays = self.content_arrays
        if sorted(encoded) != sorted(arrays):
            raise ValueError(f"shard {shard} needs arrays {sorted(arrays)}, got {sorted(encoded)}")
        for name, values in encoded.items():
            if values.shape != (stop - start, *arrays[name].shape[1:]) or values.dtype != arrays[name].dtype:
                raise ValueError(f"shard {shard} of {name!r} needs {(stop - start, *arrays[name].shape[1:])} "
                                 f"{arrays[name].dtype}, got {values.shape} {values.dtype}")

        def write_and_check():  # idempotent: a retry after a network error rewrites the same bytes
            for name, values in encoded.items():
                arrays[name][start:stop] = values
            stored = self._read_raw(start, stop, arrays)
            for name, values in encoded.items():
                if not np.array_equal(stored[name], values, equal_nan=values.dtype.kind == "f"):
                    raise CorruptStoreError(f"teacher {self.name!r}: shard {shard} of {name!r} read back differently")
            if self.has_digests:  # digests of what was read back, then the ledger: done means checkable
                rows = self.layout.rows_per_chunk
                digests = shard_chunk_digests(stored, start, stop, rows)
                self.group[CHUNK_DIGESTS_ARRAY][start // rows:start // rows + len(digests)] = digests
                self.chunk_digests[start // rows:start // rows + len(digests)] = digests
            if stats is not None:
                self.group[SHARD_STATS_ARRAY][shard] = np.asarray(stats, dtype=np.float64)
            self.group[SHARD_DONE_ARRAY][shard] = 1
            return stored

        return retry_transient(write_and_check, self.store.location)

    def update_attrs(self, **changes) -> None:
        """Replace top-level fields of the teacher attribute (one metadata write)."""
        attrs = self.attrs
        attrs.update(changes)

        def write():
            self.group.attrs[TEACHER_ATTR] = attrs

        retry_transient(write, self.store.location)

    def mark_complete(self, **changes) -> None:
        """Set status ``complete`` once every shard is done, with any final fields and (v3) the
        integrity record: the metadata digest and the digest of every chunk digest.

        Raises:
            StoreIncompleteError: some shard is not done.
        """
        pending = np.flatnonzero(~self.shard_done())
        if pending.size:
            raise StoreIncompleteError(
                f"teacher {self.name!r}: {pending.size} shards are not written (first: {int(pending[0])})"
            )
        if self.has_digests:
            final = {**self.attrs, **changes, "status": STATUS_COMPLETE}
            digests = self.group[CHUNK_DIGESTS_ARRAY][:]  # as every rank wrote them, not this process's copy
            if not digests.any(axis=1).all():
                raise CorruptStoreError(f"teacher {self.name!r}: {int((~digests.any(axis=1)).sum())} chunk digests "
                                        "are missing though every shard is marked done; pass --overwrite to dump "
                                        "it again")
            changes["integrity"] = integrity_record(teacher_metadata_digest(self, final), content_digest(digests))
        self.update_attrs(status=STATUS_COMPLETE, **changes)
