"""Make a store's root: the samples (keys and labels, or token sequences) and the root attribute,
written last so a creation cut short leaves something ``open_store`` refuses and the next dump
redoes (``is_unfinished_creation``, ``remove_location``).

    >>> create_store("digits.zarr", keys=keys, labels=labels, dataset={"spec": "digits"})
    >>> create_token_store("lm.zarr", tokens=t, loss_mask=m, lengths=n, keys=k, vocab_size=256,
    ...                    tokenizer={"spec": "bytes", ...}, dataset={"spec": "text:plays/*.md"})
    >>> create_streamed_token_store("lm.zarr", stream, vocab_size=256, tokenizer={...},
    ...                             describe=lambda: stream.description)   # a corpus larger than memory

A streamed token store's arrays are written a few chunks at a time as the row blocks come, then
read back for the token fingerprint, then the attribute: the bytes are those of the same arrays
written at once (each array's chunk rows are the rule ``_write_index_array`` applies to the whole;
the arrays grow by doubling and are cut to their length at the end, as zarr stores edge chunks).
A creation that fails is deleted again; one that is killed is what ``is_unfinished_creation`` finds,
and a token store's is finished by ``create_streamed_token_store(..., resume=True)``, mid-corpus
from its last progress record (``_token_writes.py``), with the same bytes again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

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
from ._token_writes import INDEX_CHUNK_ROWS, write_token_arrays
from ._tokens import TOKEN_ARRAYS, check_sequences, stored_token_fingerprint, token_dataset_record

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
    block = _Rows(tokens, loss_mask, lengths, keys)
    return create_streamed_token_store(location, [block], vocab_size=vocab_size, tokenizer=tokenizer,
                                       describe=lambda: dataset, storage_options=storage_options)


def create_streamed_token_store(location, rows: Iterable, *, vocab_size: int, tokenizer: dict,
                                describe: Callable[[], dict], storage_options=None, resume: bool = False) -> LogitStore:
    """Create a token store from blocks of rows (each with ``tokens``, ``loss_mask``, ``lengths``
    and ``keys``), written as they come; ``describe()``, called once they are all written, gives the
    ``dataset`` record. Anything the blocks raise leaves nothing behind, but a ``KeyboardInterrupt``,
    which leaves what is written, as a kill does.

    With ``resume``, ``location`` holds a creation cut short (``is_unfinished_creation``): a stream
    (``sources.TokenStream``) of the same corpus continues from the creation's last progress record,
    the records before it read but not tokenised; otherwise the blocks are read from the start and
    each array's whole chunks already stored with their values are kept, the rest written. Either
    way the bytes are those of a creation never cut short (``_token_writes.py``).

    Raises:
        DatasetError: a block is not token sequences of this vocabulary, or there are none.
        StoreExistsError, StoreWriteError: as ``create_store``.
    """
    location = str(location)
    with _root_errors(location):
        group = _unfinished_root(location, storage_options) if resume else _new_root(location, storage_options)
        try:
            counts = write_token_arrays(group, rows, vocab_size, resume)
            fingerprint = stored_token_fingerprint(group, vocab_size, location)
            record = token_dataset_record(describe(), **counts, vocab_size=vocab_size, tokenizer=tokenizer,
                                          fingerprint=fingerprint)
        except KeyboardInterrupt:  # Ctrl-C, like a kill: what is written stays for the same command to resume
            raise
        except BaseException:
            with contextlib.suppress(Exception):
                remove_location(location, storage_options)
            raise
        # the attribute alone: a streamed creation's progress record goes in the same write
        group.attrs.put({ROOT_ATTR: {"format": FORMAT_NAME, "version": TOKENS_VERSION, "dataset": record}})
    return open_store(location, read_only=False, storage_options=storage_options)


class _Rows:
    """A block of token rows, as ``create_streamed_token_store`` takes them."""

    def __init__(self, tokens, loss_mask, lengths, keys):
        self.tokens, self.loss_mask, self.lengths, self.keys = tokens, loss_mask, lengths, keys


def _create_root(location, arrays: dict, record: dict, version: int, storage_options) -> LogitStore:
    """Write the arrays (a list of strings is a string array), then the root attribute, last."""
    location = str(location)
    with _root_errors(location):
        group = _new_root(location, storage_options)
        for name, values in arrays.items():
            _write_index_array(group, name, values)
        group.attrs[ROOT_ATTR] = {"format": FORMAT_NAME, "version": version, "dataset": record}
    return open_store(location, read_only=False, storage_options=storage_options)


def _new_root(location: str, storage_options):
    """The root group of a new store, at a location that holds nothing but locks."""
    path = local_path(location)
    if path is not None and path.exists() and (not path.is_dir() or holds_files(path)):
        raise StoreExistsError(f"{location} already exists and is not empty")
    # Mode "a", not "w-": the caller holds the store's lock, whose file already sits there.
    store = zarr_store(location, read_only=False, storage_options=storage_options)
    if zarr.core.sync.sync(store.exists("zarr.json")):
        raise StoreExistsError(f"{location} already holds Zarr data")
    return zarr.open_group(store, mode="a", zarr_format=3)


def _unfinished_root(location: str, storage_options):
    """The root group of a creation cut short, to finish (``create_streamed_token_store(resume=True)``):
    its token arrays are kept, anything else it may hold (an image store's labels, a killed write's
    ``.partial`` file) is deleted."""
    store = zarr_store(location, read_only=False, storage_options=storage_options)

    async def clear() -> None:
        for key in [key async for key in store.list()]:
            if key.endswith(".partial") or key.startswith(tuple(f"{name}/" for name in ROOT_ARRAYS
                                                                if name not in TOKEN_ARRAYS)):
                await store.delete(key)

    zarr.core.sync.sync(clear())
    return zarr.open_group(store, mode="a", zarr_format=3)


@contextlib.contextmanager
def _root_errors(location: str):
    """A root's creation failing: one line, ``StoreExistsError`` or ``StoreWriteError``."""
    try:
        with remote_errors(location):
            yield
    except (zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError, FileExistsError):
        raise StoreExistsError(f"{location} already holds Zarr data") from None
    except FileNotFoundError as err:  # e.g. the bucket does not exist
        raise StoreWriteError(f"cannot write a store at {location}: {err}") from None
    except OSError as err:
        if isinstance(err, (ConnectionError, PermissionError)):
            raise
        raise StoreWriteError(f"cannot write a store at {location}: {err.strerror or err}") from None


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
