"""Writing one teacher: whole shards, checked before they count, and completion.

    >>> teacher.write_shard(0, logits)             # float32 (n, C): encode, write, prove, digest, ledger
    >>> teacher.write_shard(0, logits, features={"emb": ...})  # a teacher with features: theirs too
    >>> teacher.write_encoded(0, {"logits": ...}, stats)  # already encoded (a token dump reduces on the device)
    >>> teacher.mark_complete(metrics=...)         # once every shard is done: status and integrity record

``Teacher`` (``_teacher.py``) takes these methods from ``TeacherWrites``; reading is there.
"""

from __future__ import annotations

import numpy as np

from ..errors import (
    CorruptStoreError,
    LogitCacheError,
    NonFiniteLogitsError,
    StoreIncompleteError,
    StoreWriteError,
)
from ._backend import retry_transient
from ._checks import teacher_metadata_digest
from ._integrity import (
    CHUNK_DIGESTS_ARRAY,
    content_digest,
    integrity_record,
    shard_chunk_digests,
)
from ._features import encode_features
from ._schema import SHARD_DONE_ARRAY, STATUS_COMPLETE, TEACHER_ATTR
from ._shard_io import parallel_map
from ._tokens import SHARD_STATS_ARRAY


class TeacherWrites:
    """The writing half of ``Teacher``."""

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
        self.require_finite(shard, logits)
        encoded = self.codec.encode_shard(logits.reshape(-1, self.num_classes), shard)
        encoded = {name: self._unflat(values) for name, values in encoded.items()}
        encoded.update({name: np.asarray(values, dtype=self.view_arrays[name].dtype) for name, values in
                        (views or {}).items()})
        encoded.update(encode_features(self.features, features or {}, self.store.keys[start:stop]))
        return self.write_encoded(shard, encoded)

    def require_finite(self, shard: int, logits: np.ndarray) -> None:
        """Raise NonFiniteLogitsError, naming the sample keys, if a row of the shard holds NaN or inf
        (``write_shard`` checks; the dump checks first, before the shard leaves the teacher's thread)."""
        start, stop = self.layout.shard_rows(shard, self.num_samples)
        bad = np.flatnonzero(~np.isfinite(logits.reshape(len(logits), -1)).all(axis=1))
        if bad.size:
            keys = self.store.keys[start + bad[:5]]
            raise NonFiniteLogitsError(
                f"the teacher produced NaN/inf logits for {bad.size} samples in rows {start}-{stop} "
                f"(keys: {', '.join(map(repr, keys))}{', …' if bad.size > 5 else ''}); "
                "nothing was marked complete"
            )

    def write_encoded(self, shard: int, encoded: dict[str, np.ndarray],
                      stats: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Write one whole shard of already-encoded arrays (one per content array), read it back,
        record its digests and mark it done; return what was stored. ``write_shard`` encodes on the
        host; a token dump reduces on the device and hands its arrays here, with the shard's
        ``stats`` (``_tokens.SHARD_STATS``).

        Arrays laid out as logitcache makes them (``_io``) are compressed here, on the thread pool,
        into the very bytes zarr would write; each object is read back and compared byte for byte,
        and the digests are of the arrays those bytes encode (docs/FORMAT.md, "the write check").
        Any other array goes through zarr, and is read back, decoded and compared.

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
            stored = self._write_checked(shard, start, stop, encoded)
            if self.has_digests:  # digests of what is stored, then the ledger: done means checkable
                rows = self.layout.rows_per_chunk
                digests = shard_chunk_digests(stored, start, stop, rows, map=parallel_map)
                self.group[CHUNK_DIGESTS_ARRAY][start // rows:start // rows + len(digests)] = digests
                self.chunk_digests[start // rows:start // rows + len(digests)] = digests
            if stats is not None:
                self.group[SHARD_STATS_ARRAY][shard] = np.asarray(stats, dtype=np.float64)
            self.group[SHARD_DONE_ARRAY][shard] = 1
            return stored

        try:
            return retry_transient(write_and_check, self.store.location)
        except OSError as err:
            if isinstance(err, LogitCacheError):
                raise
            raise StoreWriteError(f"cannot write shard {shard} of teacher {self.name!r} in {self.store.location}: "
                                  f"{err.strerror or err}; the shards written are kept: free space (or fix the "
                                  "cause) and rerun the same command to resume") from None

    def _write_checked(self, shard: int, start: int, stop: int, encoded: dict) -> dict[str, np.ndarray]:
        """Write a shard's arrays and prove the store holds them; return the stored arrays. The fast
        path's objects are compared byte for byte as written; zarr's arrays are read back and compared."""
        slow = {name: self.content_arrays[name] for name in self._zarr_names(encoded)}
        fast = {name: values for name, values in encoded.items() if name not in slow}
        bad = None
        if fast:
            try:
                self._io.write(shard, fast)
            except ValueError as err:
                bad = str(err)
        for name, array in slow.items():
            array[start:stop] = encoded[name]
        stored = {**fast, **(self._read_raw(start, stop, slow) if slow else {})}
        bad = bad or next((name for name in slow if not np.array_equal(
            stored[name].view(np.uint8), np.ascontiguousarray(encoded[name]).view(np.uint8))), None)
        if bad is not None:
            raise CorruptStoreError(f"teacher {self.name!r}: shard {shard} of {bad!r} read back differently")
        return stored

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
