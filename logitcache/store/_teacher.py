"""One teacher's group in a store: its logit arrays, shard ledger, provenance and status.

    >>> teacher = open_store("digits.zarr").teacher("default")
    >>> teacher.status, teacher.num_classes, teacher.codec.name
    ('complete', 10, 'fp16')
    >>> teacher.read(0, 128)          # float32 (128, C), decoded
    >>> teacher.take([7, 3])          # any rows, any order

A shard is the unit of writing. ``shard_done`` (one chunk per shard, so concurrent writers of
disjoint shards never touch the same object) records the shards whose every array was written
and read back intact; ``status`` turns ``complete`` only once every shard is done.
"""

from __future__ import annotations

import copy
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
from ._codecs import Codec, get_codec
from ._schema import SHARD_DONE_ARRAY, STATUS_COMPLETE, STATUS_WRITING, TEACHER_ATTR, TEACHERS_GROUP, Layout


def compressors(shuffle: str = "shuffle") -> list:
    """Blosc/zstd then a crc32c checksum on every chunk (the sharding index has its own)."""
    return [zarr.codecs.BloscCodec(cname="zstd", clevel=5, shuffle=shuffle), zarr.codecs.Crc32cCodec()]


def teacher_status(group: zarr.Group) -> str:
    return (group.attrs.get(TEACHER_ATTR) or {}).get("status", "creating")


def teacher_exists(root: zarr.Group, name: str) -> bool:
    return TEACHERS_GROUP in root and name in root[TEACHERS_GROUP]


def create_teacher_arrays(
    teachers: zarr.Group,
    name: str,
    *,
    num_samples: int,
    num_classes: int,
    codec: Codec,
    layout: Layout,
    settings: dict,
    provenance: dict,
) -> zarr.Group:
    """Create a teacher's empty arrays and its attribute with status ``writing``."""
    # The attribute is part of the group's first metadata write, so a reader never sees a
    # teacher group without a status; the arrays follow, and status stays "writing" until done.
    group = teachers.create_group(name, attributes={TEACHER_ATTR: {
        "status": STATUS_WRITING,
        "num_classes": num_classes,
        "codec": codec.name,
        "layout": layout.to_dict(),
        "settings": settings,
        "provenance": provenance,
        "metrics": None,
        "run": {},
    }})
    for array_name, spec in codec.arrays.items():
        row = (spec.width or num_classes,) if spec.per_class else ()
        group.create_array(
            array_name,
            shape=(num_samples, *row),
            dtype=spec.dtype,
            chunks=(layout.rows_per_chunk, *row),
            shards=(layout.rows_per_shard, *row),
            compressors=compressors(),
            fill_value=spec.fill_value,
        )
    group.create_array(
        SHARD_DONE_ARRAY, shape=(layout.num_shards(num_samples),), dtype="uint8", chunks=(1,),
        compressors=[zarr.codecs.Crc32cCodec()], fill_value=0,
    )
    return group


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
        return self.store.num_samples

    @property
    def num_shards(self) -> int:
        return self.layout.num_shards(self.num_samples)

    @cached_property
    def arrays(self) -> dict[str, zarr.Array]:
        return {name: self.group[name] for name in self.codec.arrays}

    def shard_done(self) -> np.ndarray:
        """bool (num_shards,): which shards were written and read back intact."""
        return self.group[SHARD_DONE_ARRAY][:].astype(bool)

    def nbytes_stored(self) -> int:
        """Bytes the logit arrays take in the store (compressed, with shard indexes)."""
        return sum(int(array.nbytes_stored()) for array in self.arrays.values())

    # -- reading -------------------------------------------------------------------------------

    def read_stored(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """The raw stored arrays for rows [start, stop), checksums verified by zarr."""
        try:
            return retry_transient(lambda: {name: array[start:stop] for name, array in self.arrays.items()},
                                   self.store.location)
        except (StoreConnectionError, StoreAccessError):
            raise
        except Exception as err:  # zarr raises several types for a bad checksum or truncated shard
            reason = (
                "checksum mismatch (corrupted or truncated bytes)"
                if "checksum" in str(err).lower()
                else f"{type(err).__name__}: {err}"
            )
            raise CorruptStoreError(f"teacher {self.name!r}, rows {start}-{stop}: {reason}") from None

    def read(self, start: int, stop: int) -> np.ndarray:
        """Decoded float32 logits (stop - start, C) for a contiguous row range.

        Raises:
            CorruptStoreError: a chunk fails its checksum.
            StoreIncompleteError: rows that were never written (they decode to NaN).
        """
        stored = self.read_stored(start, stop)
        missing = ~self.codec.rows_ok(stored)
        if missing.any():
            first = start + int(np.flatnonzero(missing)[0])
            raise StoreIncompleteError(
                f"teacher {self.name!r}: {int(missing.sum())} rows in {start}-{stop} hold no logits "
                f"(first: row {first}); the dump did not finish — rerun it to resume"
            )
        return self.codec.decode(stored)

    def read_targets(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Rows [start, stop) as the codec's sparse training targets (checked like ``read``)."""
        stored = self.read_stored(start, stop)
        if not self.codec.rows_ok(stored).all():
            raise StoreIncompleteError(f"teacher {self.name!r}: rows {start}-{stop} are not all written")
        return self.codec.sparse_targets(stored)

    def take(self, indices) -> np.ndarray:
        """Decoded float32 logits (len(indices), C) for any rows, in the order given."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size == 0:
            return np.empty((0, self.num_classes), dtype=np.float32)
        lo, hi = int(indices.min()), int(indices.max()) + 1
        if hi - lo <= 4 * indices.size:  # dense enough: one contiguous read
            return self.read(lo, hi)[indices - lo]
        unique, inverse = np.unique(indices, return_inverse=True)
        stored = {name: array.get_orthogonal_selection((unique,)) for name, array in self.arrays.items()}
        return self.codec.decode(stored)[inverse]

    # -- writing -------------------------------------------------------------------------------

    def write_shard(self, shard: int, logits: np.ndarray) -> dict[str, np.ndarray]:
        """Encode and write one whole shard, read it back, record it done; return what was stored.

        Raises:
            NonFiniteLogitsError: a row holds NaN or inf; the message names the sample keys.
            CorruptStoreError: what was read back differs from what was written.
        """
        start, stop = self.layout.shard_rows(shard, self.num_samples)
        if logits.shape != (stop - start, self.num_classes):
            raise ValueError(f"shard {shard} needs shape {(stop - start, self.num_classes)}, got {logits.shape}")
        bad = np.flatnonzero(~np.isfinite(logits).all(axis=1))
        if bad.size:
            keys = self.store.keys[start + bad[:5]]
            raise NonFiniteLogitsError(
                f"the teacher produced NaN/inf logits for {bad.size} samples in rows {start}-{stop} "
                f"(keys: {', '.join(map(repr, keys))}{', …' if bad.size > 5 else ''}); "
                "nothing was marked complete"
            )
        encoded = self.codec.encode_shard(logits, shard)

        def write_and_check():  # idempotent: a retry after a network error rewrites the same bytes
            for name, values in encoded.items():
                self.arrays[name][start:stop] = values
            stored = self.read_stored(start, stop)
            for name, values in encoded.items():
                if not np.array_equal(stored[name], values, equal_nan=values.dtype.kind == "f"):
                    raise CorruptStoreError(f"teacher {self.name!r}: shard {shard} of {name!r} read back differently")
            self.group[SHARD_DONE_ARRAY][shard] = 1
            return stored

        return retry_transient(write_and_check, self.store.location)

    def remove_partial_objects(self) -> int:
        """Delete temp files a killed writer left behind (zarr's LocalStore writes ``*.partial``
        then renames); they are never read, but a resumed store should hold exactly the bytes of
        an uninterrupted one. Returns how many were removed."""
        store, prefix = self.group.store_path.store, self.group.store_path.path

        async def sweep() -> int:
            orphans = [key async for key in store.list_prefix(prefix) if key.endswith(".partial")]
            for key in orphans:
                await store.delete(key)
            return len(orphans)

        return zarr.core.sync.sync(sweep())

    def update_attrs(self, **changes) -> None:
        """Replace top-level fields of the teacher attribute (one metadata write)."""
        attrs = self.attrs
        attrs.update(changes)

        def write():
            self.group.attrs[TEACHER_ATTR] = attrs

        retry_transient(write, self.store.location)

    def mark_complete(self, **changes) -> None:
        """Set status ``complete`` once every shard is done, with any final fields.

        Raises:
            StoreIncompleteError: some shard is not done.
        """
        pending = np.flatnonzero(~self.shard_done())
        if pending.size:
            raise StoreIncompleteError(
                f"teacher {self.name!r}: {pending.size} shards are not written (first: {int(pending[0])})"
            )
        self.update_attrs(status=STATUS_COMPLETE, **changes)
