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
and a token store's is finished by ``create_streamed_token_store(..., resume=True)``: each array's
whole chunks already stored with the same rows are kept, the rest written (the same bytes again).
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
from ._tokens import (
    LENGTHS_ARRAY,
    LOSS_MASK_ARRAY,
    TOKEN_ARRAYS,
    TOKENS_ARRAY,
    check_sequences,
    stored_token_fingerprint,
    token_dataset_record,
    token_dtype,
)

INDEX_CHUNK_ROWS = 65536  # keys and labels: small, read whole, one checksummed chunk per 64k rows
INDEX_CHUNK_BYTES = 4 << 20  # and a chunk of a wider array (tokens, loss_mask) holds at most 4 MiB
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

    With ``resume``, ``location`` holds a creation cut short (``is_unfinished_creation``): each
    array's whole chunks already stored with these rows' values are kept, not written again, and
    the rest is written from the first chunk that differs or is missing, so the bytes are those of
    a creation never cut short. The blocks are still read from the start (the corpus is tokenised
    again up to where the creation stopped; only the writing resumes).

    Raises:
        DatasetError: a block is not token sequences of this vocabulary, or there are none.
        StoreExistsError, StoreWriteError: as ``create_store``.
    """
    location = str(location)
    with _root_errors(location):
        group = _unfinished_root(location, storage_options) if resume else _new_root(location, storage_options)
        try:
            counts = _write_token_arrays(group, rows, vocab_size, resume)
            fingerprint = stored_token_fingerprint(group, vocab_size, location)
            record = token_dataset_record(describe(), **counts, vocab_size=vocab_size, tokenizer=tokenizer,
                                          fingerprint=fingerprint)
        except KeyboardInterrupt:  # Ctrl-C, like a kill: what is written stays for the same command to resume
            raise
        except BaseException:
            with contextlib.suppress(Exception):
                remove_location(location, storage_options)
            raise
        group.attrs[ROOT_ATTR] = {"format": FORMAT_NAME, "version": TOKENS_VERSION, "dataset": record}
    return open_store(location, read_only=False, storage_options=storage_options)


class _Rows:
    """A block of token rows, as ``create_streamed_token_store`` takes them."""

    def __init__(self, tokens, loss_mask, lengths, keys):
        self.tokens, self.loss_mask, self.lengths, self.keys = tokens, loss_mask, lengths, keys


def _write_token_arrays(group, rows: Iterable, vocab_size: int, resume: bool = False) -> dict:
    """Every block into the four arrays, each checked first; the counts the dataset record holds."""
    writers, counts = {}, {"num_sequences": 0, "seq_len": None, "num_tokens": 0, "num_targets": 0}
    for block in rows:
        tokens, loss_mask = np.asarray(block.tokens), np.asarray(block.loss_mask, dtype=bool)
        lengths, keys = np.asarray(block.lengths, dtype=np.int64), [str(k) for k in block.keys]
        why = check_sequences(tokens, loss_mask, lengths, vocab_size) or (
            None if len(keys) == len(tokens) else f"{len(keys)} keys for {len(tokens)} sequences") or (
            None if counts["seq_len"] in (None, tokens.shape[1]) else
            f"a block of {tokens.shape[1]} positions after blocks of {counts['seq_len']}")
        if why:
            raise DatasetError(f"cannot make a token store: {why}")
        if not writers:
            writers = {name: _GrowingArray(group, name, resume) for name in TOKEN_ARRAYS}
        for name, values in (("keys", keys), (TOKENS_ARRAY, tokens.astype(token_dtype(vocab_size))),
                             (LOSS_MASK_ARRAY, loss_mask), (LENGTHS_ARRAY, lengths)):
            writers[name].append(values)
        counts.update(num_sequences=counts["num_sequences"] + len(keys), seq_len=tokens.shape[1],
                      num_tokens=counts["num_tokens"] + int(lengths.sum()),
                      num_targets=counts["num_targets"] + int(loss_mask.sum()))
    if not writers:
        raise DatasetError("cannot make a token store: tokens must be (sequences >= 1, length >= 2), not none")
    for writer in writers.values():
        writer.close()
    return counts


class _GrowingArray:
    """One root array written a whole number of chunks at a time, with the chunk rows
    ``_write_index_array`` gives the whole array: rows are held until a chunk is full, and the
    first chunk's rows are known once that many have come or the rows end.

    Resuming, an array already there with this one's metadata (but its shape) is kept, and its
    whole chunks that hold the rows' values are skipped; from the first that does not (or is
    missing, or cannot be read) the array is cut there and written as new. A chunk is written
    whole by this one writer (zarr's stores put an object whole), so one that is there is complete."""

    def __init__(self, group, name: str, resume: bool = False):
        self.group, self.name, self.resuming = group, name, resume
        self.array, self.chunk, self.written = None, None, 0
        self.pending: list = []
        self.pending_rows = 0

    def append(self, values) -> None:
        self.pending.append(values)
        self.pending_rows += len(values)
        if self.chunk is None and self.pending_rows >= _chunk_cap(values):
            self._create(_chunk_cap(values))
        if self.array is not None and self.pending_rows >= self.chunk:
            self._flush(self.pending_rows // self.chunk * self.chunk)

    def close(self) -> None:
        if self.array is None:
            self._create(max(1, self.pending_rows))
        if self.pending_rows:
            self._flush(self.pending_rows)
        self.array.resize((self.written, *self.array.shape[1:]))

    def _create(self, chunk: int) -> None:
        self.chunk, first = chunk, self.pending[0]
        if isinstance(first, list):
            spec = {"shape": (chunk,), "dtype": str, "chunks": (chunk,),
                    "compressors": [zarr.codecs.ZstdCodec(level=5), zarr.codecs.Crc32cCodec()]}
        else:
            spec = {"shape": (chunk, *first.shape[1:]), "dtype": first.dtype, "chunks": (chunk, *first.shape[1:]),
                    "compressors": compressors()}
        if self.resuming and self.name in self.group:
            existing = self.group[self.name]
            if _without_shape(existing) == _without_shape(zarr.create_array(zarr.storage.MemoryStore(), **spec)):
                self.array = existing
                return
            del self.group[self.name]
        self.resuming = False
        self.array = self.group.create_array(self.name, **spec)

    def _flush(self, rows: int) -> None:
        """The first ``rows`` pending rows into the array (grown by doubling when they do not fit)."""
        joined = self._joined()
        values, rest = joined[:rows], joined[rows:]
        stored = self._stored_rows(values) if self.resuming else 0
        end = self.written + rows
        if end > self.array.shape[0]:
            self.array.resize((max(end, 2 * self.array.shape[0]), *self.array.shape[1:]))
        if stored < rows:
            new = values[stored:]
            self.array[self.written + stored:end] = np.asarray(new, dtype=object) if isinstance(new, list) else new
        self.written, self.pending, self.pending_rows = end, [rest] if len(rest) else [], len(rest)

    def _stored_rows(self, values) -> int:
        """How many of ``values`` (whole chunks from ``written`` on) the array holds already; at the
        first chunk it does not, the array is cut there and the resume ends."""
        same = 0
        while same + self.chunk <= len(values) and self.written + same + self.chunk <= self.array.shape[0]:
            start = self.written + same
            try:
                held = self.array[start:start + self.chunk]
            except Exception:  # a damaged chunk: written again below
                break
            wanted = values[same:same + self.chunk]
            if not (held.tolist() == wanted if isinstance(wanted, list) else np.array_equal(held, wanted)):
                break
            same += self.chunk
        if same < len(values):
            self.array.resize((self.written + same, *self.array.shape[1:]))  # drops every chunk from there on
            self.resuming = False
        return same

    def _joined(self):
        if isinstance(self.pending[0], list):
            return [value for part in self.pending for value in part]
        return np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]


def _without_shape(array) -> dict:
    """An array's metadata but its shape: what a resumed creation must find to keep its chunks."""
    return {key: value for key, value in array.metadata.to_dict().items() if key != "shape"}


def _chunk_cap(values) -> int:
    """The most rows ``_write_index_array`` puts in a chunk of this array, whatever its length."""
    if isinstance(values, list):
        return INDEX_CHUNK_ROWS
    return max(1, min(INDEX_CHUNK_ROWS, INDEX_CHUNK_BYTES // max(1, values[:1].nbytes)))


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
