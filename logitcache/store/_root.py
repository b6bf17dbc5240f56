"""Make a store's root: the samples (keys and labels, or token sequences) and the root attribute,
written last so a creation cut short leaves something ``open_store`` refuses and the next dump
redoes (``is_unfinished_creation``, ``remove_location``).

    >>> create_store("digits.zarr", keys=keys, labels=labels, dataset={"spec": "digits"})
    >>> create_token_store("lm.zarr", tokens=t, loss_mask=m, lengths=n, keys=k, vocab_size=256,
    ...                    tokenizer={"spec": "bytes", ...}, dataset={"spec": "text:plays/*.md"})
"""

from __future__ import annotations

import numpy as np
import zarr
import zarr.codecs

from ..errors import DatasetError, StoreExistsError, StoreWriteError
from ._backend import local_path, remote_errors, zarr_store
from ._create import compressors
from ._fingerprint import dataset_fingerprint
from ._lock import LOCK_DIR
from ._schema import BASE_VERSION, FORMAT_NAME, ROOT_ATTR, TOKENS_VERSION
from ._store import LogitStore, open_store
from ._tokens import (
    LENGTHS_ARRAY,
    LOSS_MASK_ARRAY,
    TOKEN_ARRAYS,
    TOKENS_ARRAY,
    check_sequences,
    token_dataset_record,
    token_dtype,
)

INDEX_CHUNK_ROWS = 65536  # keys and labels: small, read whole, one checksummed chunk per 64k rows
ROOT_ARRAYS = ("keys", "labels", *TOKEN_ARRAYS)  # what a root may hold before its attribute is written


def create_store(location, *, keys, labels, dataset: dict, class_names=None, storage_options=None) -> LogitStore:
    """Create a new, empty store for a labelled dataset: keys, labels and the root attribute.

    ``dataset`` describes where the data came from (spec, split, transform); the number of
    samples, class names and fingerprint are added here.

    Raises:
        StoreExistsError: something is already at ``location``.
        StoreWriteError: the location cannot be written.
    """
    keys = [str(k) for k in keys]
    labels = np.asarray(labels, dtype=np.int64)
    record = {**dataset, "num_samples": len(keys), "class_names": list(class_names or []),
              "fingerprint": dataset_fingerprint(keys, labels)}
    return _create_root(location, {"keys": keys, "labels": labels}, record, BASE_VERSION, storage_options)


def create_token_store(location, *, tokens, loss_mask, lengths, keys, vocab_size: int, tokenizer: dict,
                       dataset: dict, storage_options=None) -> LogitStore:
    """Create a new, empty token store (format v4, ``_tokens.py``) for these sequences.

    Raises:
        DatasetError: the arrays are not token sequences of this vocabulary.
        StoreExistsError, StoreWriteError: as ``create_store``.
    """
    keys = [str(k) for k in keys]
    tokens, loss_mask = np.asarray(tokens), np.asarray(loss_mask, dtype=bool)
    lengths = np.asarray(lengths, dtype=np.int64)
    why = check_sequences(tokens, loss_mask, lengths, vocab_size) or (
        None if len(keys) == len(tokens) else f"{len(keys)} keys for {len(tokens)} sequences")
    if why:
        raise DatasetError(f"cannot make a token store: {why}")
    arrays = {"keys": keys, TOKENS_ARRAY: tokens.astype(token_dtype(vocab_size)), LOSS_MASK_ARRAY: loss_mask,
              LENGTHS_ARRAY: lengths}
    record = token_dataset_record(dataset, tokens, loss_mask, lengths, keys, vocab_size, tokenizer)
    return _create_root(location, arrays, record, TOKENS_VERSION, storage_options)


def _create_root(location, arrays: dict, record: dict, version: int, storage_options) -> LogitStore:
    """Write the arrays (a list of strings is a string array), then the root attribute, last."""
    location = str(location)
    path = local_path(location)
    if path is not None and path.exists() and (not path.is_dir() or holds_files(path)):
        raise StoreExistsError(f"{location} already exists and is not empty")
    try:
        with remote_errors(location):
            # Mode "a", not "w-": the caller holds the store's lock, whose file already sits there.
            store = zarr_store(location, read_only=False, storage_options=storage_options)
            if zarr.core.sync.sync(store.exists("zarr.json")):
                raise StoreExistsError(f"{location} already holds Zarr data")
            group = zarr.open_group(store, mode="a", zarr_format=3)
            for name, values in arrays.items():
                _write_index_array(group, name, values)
            group.attrs[ROOT_ATTR] = {"format": FORMAT_NAME, "version": version, "dataset": record}
    except (zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError, FileExistsError):
        raise StoreExistsError(f"{location} already holds Zarr data") from None
    except FileNotFoundError as err:  # e.g. the bucket does not exist
        raise StoreWriteError(f"cannot write a store at {location}: {err}") from None
    except OSError as err:
        if isinstance(err, (ConnectionError, PermissionError)):
            raise
        raise StoreWriteError(f"cannot write a store at {location}: {err.strerror or err}") from None
    return open_store(location, read_only=False, storage_options=storage_options)


def _write_index_array(group, name: str, values) -> None:
    """One root array, chunked along its first axis (whole rows), zstd plus a CRC-32C per chunk."""
    if isinstance(values, list):
        array = group.create_array(name, shape=(len(values),), dtype=str, chunks=(max(1, min(INDEX_CHUNK_ROWS,
                                   len(values))),), compressors=[zarr.codecs.ZstdCodec(level=5),
                                                                zarr.codecs.Crc32cCodec()])
        array[:] = np.asarray(values, dtype=object)
        return
    row_bytes = max(1, values[:1].nbytes)
    rows = max(1, min(len(values), INDEX_CHUNK_ROWS, (4 << 20) // row_bytes))
    array = group.create_array(name, shape=values.shape, dtype=values.dtype, chunks=(rows, *values.shape[1:]),
                               compressors=compressors())
    array[...] = values


def holds_files(path) -> bool:
    """Any file in a local directory tree but the writers' locks (empty folders a deletion left, and
    the locks a dump takes before it creates the store, don't count)."""
    return any(p.is_file() or p.is_symlink() for p in path.rglob("*") if LOCK_DIR not in p.relative_to(path).parts)


def is_unfinished_creation(location, storage_options=None) -> bool:
    """True for what a ``_create_root`` cut short leaves: a root group without its attribute, holding
    nothing but (some of) its arrays."""
    store = zarr_store(str(location), read_only=True, storage_options=storage_options)

    async def look() -> bool:
        if not await store.exists("zarr.json"):
            return False
        allowed = ("zarr.json", *(f"{name}/" for name in ROOT_ARRAYS), LOCK_DIR + "/")
        return all([key.startswith(allowed) or key.endswith(".partial") async for key in store.list()])

    try:
        if not zarr.core.sync.sync(look()):
            return False
        group = zarr.open_group(store, mode="r")
        return ROOT_ATTR not in group.attrs
    except Exception:
        return False


def remove_location(location, storage_options=None) -> None:
    """Delete everything at a store location but its locks (used, holding the store's lock, to redo
    an unfinished creation)."""
    store = zarr_store(str(location), read_only=False, storage_options=storage_options)

    async def remove() -> None:
        for key in [key async for key in store.list() if not key.startswith(LOCK_DIR + "/")]:
            await store.delete(key)

    zarr.core.sync.sync(remove())
