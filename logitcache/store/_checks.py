"""The checks every open runs: metadata that is well-formed, agrees with the arrays it describes,
a ledger that agrees with the status, and (format v3) digests that agree with the metadata.

    >>> check_root(store)          # num_samples matches the keys and labels arrays
    >>> check_teacher(teacher)     # CorruptStoreError naming what is wrong, in one line

They read only metadata and the small ledger arrays, never the logits, so they are cheap enough to
run on every open: a store edited or damaged after its dump is refused before anything trains on
it. Reading the logits themselves checks each chunk against its digest (``Teacher.read_stored``);
``verify`` reads everything.
"""

from __future__ import annotations

import numpy as np
import zarr

from ..codecs import stored_codec
from ..errors import CorruptStoreError, LogitCacheError, StoreIncompleteError
from ._backend import first_line, is_transient
from ._create import chunk_key_shard
from ._features import FEATURES_GROUP, check_feature_records, feature_array_specs
from ._integrity import (
    CHUNK_DIGESTS_ARRAY,
    DIGEST_BYTES,
    content_digest,
    describe_array,
    metadata_digest,
    teacher_digest,
)
from ._schema import (
    SHARD_DONE_ARRAY,
    STATUS_COMPLETE,
    STATUS_CREATING,
    STATUS_WRITING,
    VIEW_HASHES_ARRAY,
    VIEW_PARAMS_ARRAY,
    Layout,
)
from ._tokens import SHARD_STATS, SHARD_STATS_ARRAY, check_token_root, token_extra_arrays

MAX_VIEWS = 4096  # views per sample
MAX_VIEW_SIDE = 8192  # pixels per side of a stored view size
MAX_CLASSES = 1 << 24


class _Bad(Exception):
    """What is wrong, in a few words; turned into one CorruptStoreError line by the caller."""


def _int(value, what: str, low: int = 0, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        raise _Bad(f"{what} is {value!r}, not a whole number in [{low}, {high if high is not None else '∞'}]")
    return value


def check_root(store) -> None:
    """The root's ``dataset`` record is well-formed and its N is the length of keys and labels (or,
    in a token store, of its sequences)."""
    try:
        dataset = store.dataset
        if not isinstance(dataset, dict):
            raise _Bad("the dataset record is not an object")
        n = _int(dataset.get("num_samples"), "dataset.num_samples")
        if not isinstance(dataset.get("fingerprint"), str):
            raise _Bad("dataset.fingerprint is missing")
        names = dataset.get("class_names") or []
        if not isinstance(names, list) or not all(isinstance(c, str) for c in names):
            raise _Bad("dataset.class_names is not a list of names")
        if store.is_tokens:
            check_token_root(store, _Bad)
            return
        for array in ("keys", "labels"):
            if array not in store.group:
                raise _Bad(f"array {array!r} is missing")
            if tuple(store.group[array].shape) != (n,):
                raise _Bad(f"array {array!r} has shape {tuple(store.group[array].shape)}, but num_samples is {n}")
    except _Bad as bad:
        raise CorruptStoreError(f"{store.location}: {bad}; the store was damaged or edited") from None
    except (LogitCacheError, RecursionError):
        raise  # one line already, or remote_errors' (nesting past the recursion limit)
    except Exception as err:  # zarr's own errors on an array's unreadable metadata (bad JSON, a link loop)
        if isinstance(err, (ConnectionError, PermissionError)) or is_transient(err):
            raise
        raise CorruptStoreError(f"{store.location}: the samples' metadata cannot be read ({type(err).__name__}: "
                                f"{first_line(err)}); the store was damaged or edited") from None


def check_teacher(teacher) -> None:
    """Refuse a teacher whose metadata is malformed or edited, or whose ledger contradicts its status.

    Raises:
        StoreIncompleteError: the teacher is still being created.
        CorruptStoreError: anything else, in one line.
    """
    where = f"teacher {teacher.name!r} in {teacher.store.location}"
    try:
        attrs = teacher.raw_attrs
        if attrs.get("status") == STATUS_CREATING:
            raise StoreIncompleteError(f"{where} is still being created (or its creation was cut short: "
                                       "rerun the dump to finish it)")
        _check_attrs(attrs)
        if teacher.store.is_tokens and attrs.get("views") is not None:
            raise _Bad("a token store's teacher has views")
        if teacher.codec.format_version > teacher.store.version:
            raise _Bad(f"its codec's arrays are format v{teacher.codec.format_version}'s, but the store says "
                       f"v{teacher.store.version}")
        _check_arrays(teacher, attrs)
        if attrs["status"] == STATUS_COMPLETE:
            _check_complete(teacher, attrs)
        elif teacher.has_digests:
            _check_done_shards_have_digests(teacher)
    except _Bad as bad:
        raise CorruptStoreError(f"{where}: {bad}; the store was damaged or edited after the dump — "
                                "restore it, or dump again with --overwrite") from None
    except LogitCacheError:
        raise
    except Exception as err:  # zarr's own errors on unreadable metadata or ledger chunks
        raise CorruptStoreError(f"{where} cannot be read ({type(err).__name__}: {err}); the store was "
                                "damaged or edited after the dump") from None


def _check_attrs(attrs: dict) -> None:
    if attrs.get("status") not in (STATUS_WRITING, STATUS_COMPLETE):
        raise _Bad(f"status is {attrs.get('status')!r}")
    num_classes = _int(attrs.get("num_classes"), "num_classes", 1, MAX_CLASSES)
    try:
        stored_codec({**attrs, "num_classes": num_classes})
        layout = attrs.get("layout") or {}
        Layout(_int(layout.get("rows_per_chunk"), "layout.rows_per_chunk", 1),
               _int(layout.get("rows_per_shard"), "layout.rows_per_shard", 1))
    except LogitCacheError as err:
        raise _Bad(f"its codec or layout is invalid ({err})") from None
    for name in ("settings", "provenance"):
        if not isinstance(attrs.get(name), dict):
            raise _Bad(f"{name} is not an object")
    views = attrs.get("views")
    if views is not None:
        if not isinstance(views, dict):
            raise _Bad("views is not an object")
        _int(views.get("count"), "views.count", 1, MAX_VIEWS)
        size = views.get("size")
        if size is not None and (not isinstance(size, list) or len(size) != 2):
            raise _Bad(f"views.size is {size!r}, not [height, width]")
        for side in size or []:
            _int(side, "views.size", 1, MAX_VIEW_SIDE)
        if not isinstance(views.get("params"), list) or not views["params"]:
            raise _Bad("views.params is not a list of column names")
    if "features" in attrs:
        try:
            check_feature_records(attrs["features"])
        except ValueError as err:
            raise _Bad(str(err)) from None


def expected_arrays(teacher, attrs: dict) -> dict[str, tuple]:
    """Every array the attribute implies: name -> (dtype, shape, inner chunk rows)."""
    n, layout = teacher.store.num_rows, Layout.from_dict(attrs["layout"])
    views = attrs.get("views")
    per_sample = (views["count"],) if views else ()
    shapes = {name: (spec.dtype, (n, *per_sample, *((spec.width or attrs["num_classes"],) if spec.per_class else ())))
              for name, spec in teacher.codec.arrays.items()}
    if views:
        shapes[VIEW_PARAMS_ARRAY] = ("float16", (n, *per_sample, len(views["params"])))
        if views.get("hashes"):
            shapes[VIEW_HASHES_ARRAY] = ("uint64", (n, *per_sample))
    if teacher.store.is_tokens:
        shapes.update({name: (dtype, (n,)) for name, (dtype, _) in token_extra_arrays(teacher.codec.name).items()})
    for name, (dtype, row, _) in feature_array_specs(attrs.get("features") or []).items():
        shapes[name] = (dtype, (n, *per_sample, *row))
    return {name: (dtype, shape, layout.rows_per_chunk, layout.rows_per_shard) for name, (dtype, shape) in
            shapes.items()}


def _check_arrays(teacher, attrs: dict) -> None:
    group = teacher.group
    for name, (dtype, shape, chunk_rows, shard_rows) in expected_arrays(teacher, attrs).items():
        if name not in group:
            raise _Bad(f"array {name!r} is missing")
        array = group[name]
        found = (np.dtype(array.dtype), tuple(array.shape), array.chunks[0], (array.shards or (None,))[0])
        if found != (np.dtype(dtype), shape, chunk_rows, shard_rows):
            raise _Bad(f"array {name!r} is {found[0]} {found[1]} in chunks of {found[2]} rows, shards of {found[3]}; "
                       f"the metadata says {np.dtype(dtype)} {shape}, {chunk_rows}, {shard_rows}")
    if attrs.get("features"):  # its arrays open by path without it; a zarr reader needs it all the same
        try:
            features = group.get(FEATURES_GROUP)
        except Exception as err:  # zarr's, on metadata that is not JSON or not an object
            raise _Bad(f"the metadata of its group {FEATURES_GROUP!r} cannot be read ({type(err).__name__})") from None
        if not isinstance(features, zarr.Group):
            raise _Bad(f"the metadata of its group {FEATURES_GROUP!r} is missing")
    shards = teacher.layout.num_shards(teacher.store.num_rows)
    if SHARD_DONE_ARRAY not in group or tuple(group[SHARD_DONE_ARRAY].shape) != (shards,):
        raise _Bad(f"the shard ledger {SHARD_DONE_ARRAY!r} is missing or not {shards} long")
    if teacher.store.is_tokens and (SHARD_STATS_ARRAY not in group
                                    or tuple(group[SHARD_STATS_ARRAY].shape) != (shards, len(SHARD_STATS))):
        raise _Bad(f"array {SHARD_STATS_ARRAY!r} is missing or not ({shards}, {len(SHARD_STATS)})")
    if teacher.has_digests:
        chunks = -(-teacher.store.num_rows // teacher.layout.rows_per_chunk)
        if CHUNK_DIGESTS_ARRAY not in group or tuple(group[CHUNK_DIGESTS_ARRAY].shape) != (chunks, DIGEST_BYTES):
            raise _Bad(f"array {CHUNK_DIGESTS_ARRAY!r} is missing or not ({chunks}, {DIGEST_BYTES})")
    elif CHUNK_DIGESTS_ARRAY in group:
        raise _Bad("it has chunk digests but no integrity record")


def _check_complete(teacher, attrs: dict) -> None:
    """A complete teacher: every shard in the ledger; a v3 teacher's digests match its metadata."""
    missing = np.flatnonzero(~teacher.shard_done())
    if missing.size:
        raise _Bad(f"it is marked complete but {missing.size} shards are not in its ledger (first: {missing[0]})")
    _check_objects(teacher, attrs)
    if not teacher.has_digests:
        return
    integrity = attrs.get("integrity")
    if not isinstance(integrity, dict):
        raise _Bad("it is marked complete but has no integrity record")
    if teacher_metadata_digest(teacher, attrs) != integrity.get("metadata"):
        raise _Bad("its metadata differs from what its dump recorded (metadata digest mismatch)")
    digests = teacher.chunk_digests
    empty = np.flatnonzero(~digests.any(axis=1))
    if empty.size:
        raise _Bad(f"{empty.size} chunk digests are missing (first: chunk {empty[0]})")
    if content_digest(digests) != integrity.get("content"):
        raise _Bad("its chunk digests differ from what its dump recorded (content digest mismatch)")
    if integrity.get("teacher") != teacher_digest(integrity["metadata"], integrity["content"]):
        raise _Bad("its teacher digest is not the digest of its metadata and content (teacher digest mismatch)")


def _check_objects(teacher, attrs: dict) -> None:
    """Every shard of every array of a complete teacher is an object in the store (one listing):
    a lost shard could otherwise decode to fill values that look like data (u8 codes, say)."""
    store, prefix = teacher.group.store_path.store, teacher.group.store_path.path
    arrays = set(expected_arrays(teacher, attrs))

    async def shards_present() -> dict[str, set[str]]:
        present: dict[str, set[str]] = {name: set() for name in arrays}
        async for key in store.list_prefix(prefix + "/"):
            array, shard = chunk_key_shard(key[len(prefix) + 1:], arrays)
            if array is not None:
                present[array].add(shard)
        return present

    present = zarr.core.sync.sync(shards_present())
    wanted = {str(s) for s in range(teacher.layout.num_shards(teacher.store.num_rows))}
    for name in sorted(arrays):
        lost = sorted(wanted - present[name], key=int)
        if lost:
            raise _Bad(f"it is marked complete but shard {lost[0]} of array {name!r} is missing"
                       + (f" (and {len(lost) - 1} more)" if len(lost) > 1 else ""))


def _check_done_shards_have_digests(teacher) -> None:
    """A shard in the ledger of an unfinished v3 teacher has the digests of every one of its chunks."""
    rows = teacher.layout.rows_per_chunk
    # The ledger first, then the digests, read fresh: writers write a shard's digests before its
    # ledger entry, so every shard this ledger shows has its digests visible, even while other
    # processes (torchrun ranks) are writing.
    done = teacher.shard_done()
    written = teacher.group[CHUNK_DIGESTS_ARRAY][:].any(axis=1)
    for shard in np.flatnonzero(done):
        start, stop = teacher.layout.shard_rows(int(shard), teacher.store.num_rows)
        if not written[start // rows:-(-stop // rows)].all():
            raise _Bad(f"shard {shard} is in its ledger but its chunk digests are missing")


def teacher_metadata_digest(teacher, attrs: dict) -> str:
    ledgers = (SHARD_DONE_ARRAY, CHUNK_DIGESTS_ARRAY, *((SHARD_STATS_ARRAY,) if teacher.store.is_tokens else ()))
    arrays = {name: describe_array(teacher.group[name]) for name in (*expected_arrays(teacher, attrs), *ledgers)}
    return metadata_digest(teacher.name, attrs, arrays, teacher.store.dataset)
