"""A token store's four root arrays written from blocks of rows as they come, a whole number of
chunks at a time, and a creation cut short resumed (``_root.create_streamed_token_store``).

    >>> counts = write_token_arrays(group, stream, vocab_size=256)              # a new creation
    >>> counts = write_token_arrays(group, stream, vocab_size=256, resume=True)  # one a kill cut short

Each array gets the chunk rows ``_root._write_index_array`` gives the whole array (the first
chunk's rows are known once that many rows have come, or the rows end); arrays grow by doubling
and are cut to their length at the end, so the bytes are those of the arrays written at once.

Resuming: a stream (``sources.TokenStream``) is continued mid-corpus from the last progress record
(``PROGRESS_ATTR`` on the root, written every ``PROGRESS_SECONDS``: the stream's position after a
block, the counts, and every row up to it made durable: the arrays' rows in them, partial chunks
included, and the rows of arrays not made yet in the record), so the records before it are read
but not tokenised again. Without a record (or for rows given otherwise), each array's whole chunks
that hold the rows' values are kept and the rest written from the first that differs. Either way the
bytes are a fresh creation's; the record is dropped when the root attribute is written.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable

import numpy as np
import zarr
import zarr.codecs

from ..errors import DatasetError
from ._create import compressors
from ._tokens import LENGTHS_ARRAY, LOSS_MASK_ARRAY, TOKEN_ARRAYS, TOKENS_ARRAY, check_sequences, token_dtype

INDEX_CHUNK_ROWS = 65536  # keys and labels: small, read whole, one checksummed chunk per 64k rows
INDEX_CHUNK_BYTES = 4 << 20  # and a chunk of a wider array (tokens, loss_mask) holds at most 4 MiB
PROGRESS_ATTR = "logitcache_creating"  # an unfinished token store's progress record (module docstring)
PROGRESS_SECONDS = 30.0  # how often a streamed creation records its progress


def write_token_arrays(group, rows: Iterable, vocab_size: int, resume: bool = False) -> dict:
    """Every block into the four arrays, each checked first; the counts the dataset record holds.
    A stream records its progress as it goes, and resuming continues from its last record."""
    stream = rows if hasattr(rows, "rows_from") else None
    record = _progress(group, stream) if resume else None
    if record is not None:
        writers = {name: _GrowingArray.continuing(group, name, record) for name in TOKEN_ARRAYS}
        counts, blocks = dict(record["counts"]), stream.rows_from(record["position"])
    else:
        writers, blocks = {}, iter(rows)
        counts = {"num_sequences": 0, "seq_len": None, "num_tokens": 0, "num_targets": 0}
    recorded = time.monotonic()
    for block in blocks:
        arrays = _checked_block(block, vocab_size, counts)
        if not writers:
            writers = {name: _GrowingArray(group, name, resume) for name in TOKEN_ARRAYS}
        for name, values in arrays.items():
            writers[name].append(values)
        counts.update(num_sequences=counts["num_sequences"] + len(arrays["keys"]),
                      seq_len=arrays[TOKENS_ARRAY].shape[1], num_tokens=counts["num_tokens"] + int(arrays[LENGTHS_ARRAY].sum()),
                      num_targets=counts["num_targets"] + int(arrays[LOSS_MASK_ARRAY].sum()))
        if stream is not None and time.monotonic() - recorded >= PROGRESS_SECONDS:
            _record_progress(group, stream, writers, counts)
            recorded = time.monotonic()
    if not writers:
        raise DatasetError("cannot make a token store: tokens must be (sequences >= 1, length >= 2), not none")
    for writer in writers.values():
        writer.close()
    return counts


def _checked_block(block, vocab_size: int, counts: dict) -> dict:
    """A block's four arrays as stored, once they are proven token sequences of this vocabulary."""
    tokens, loss_mask = np.asarray(block.tokens), np.asarray(block.loss_mask, dtype=bool)
    lengths, keys = np.asarray(block.lengths, dtype=np.int64), [str(k) for k in block.keys]
    why = check_sequences(tokens, loss_mask, lengths, vocab_size) or (
        None if len(keys) == len(tokens) else f"{len(keys)} keys for {len(tokens)} sequences") or (
        None if counts["seq_len"] in (None, tokens.shape[1]) else
        f"a block of {tokens.shape[1]} positions after blocks of {counts['seq_len']}")
    if why:
        raise DatasetError(f"cannot make a token store: {why}")
    return {"keys": keys, TOKENS_ARRAY: tokens.astype(token_dtype(vocab_size)), LOSS_MASK_ARRAY: loss_mask,
            LENGTHS_ARRAY: lengths}


def _record_progress(group, stream, writers: dict, counts: dict) -> None:
    """Every row so far made durable (``_GrowingArray.make_durable``), then the record that says so."""
    pending = {}
    for name, writer in writers.items():
        held = writer.make_durable()
        if held is not None:
            pending[name] = held if isinstance(held, list) else {
                "dtype": str(held.dtype), "shape": list(held.shape),
                "data": base64.b64encode(np.ascontiguousarray(held).tobytes()).decode()}
    group.attrs[PROGRESS_ATTR] = {"stream": stream.identity, "position": stream.position, "counts": counts,
                                  "pending": pending}


def _progress(group, stream) -> dict | None:
    """The progress record a resumed stream continues from: this stream's, with its arrays there."""
    record = group.attrs.get(PROGRESS_ATTR)
    if stream is None or not isinstance(record, dict) or record.get("stream") != stream.identity:
        return None
    return record if all(name in group for name in TOKEN_ARRAYS if name not in record["pending"]) else None


def _pending_values(held):
    """Rows a progress record holds, as ``_GrowingArray`` holds them."""
    if isinstance(held, list):
        return held
    values = np.frombuffer(base64.b64decode(held["data"]), dtype=held["dtype"])
    return values.reshape(held["shape"]).copy()


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

    @classmethod
    def continuing(cls, group, name: str, record: dict) -> _GrowingArray:
        """The writer of ``name`` as it was when ``record`` was made: its whole chunks kept, the rows of
        its last partial chunk (or, for an array not made yet, the record's rows) held again."""
        writer, rows = cls(group, name), int(record["counts"]["num_sequences"])
        if name in record["pending"]:
            if name in group:  # made after the record: made again
                del group[name]
            held = _pending_values(record["pending"][name])
            writer.pending, writer.pending_rows = ([held] if len(held) else []), len(held)
            return writer
        array = group[name]
        writer.array, writer.chunk = array, array.chunks[0]
        writer.written = rows // writer.chunk * writer.chunk
        held = array[writer.written:rows]
        held = held.tolist() if array.dtype.kind not in "biuf" else held
        writer.pending, writer.pending_rows = ([held] if len(held) else []), len(held)
        array.resize((writer.written, *array.shape[1:]))  # its chunks from there on are written again
        return writer

    def make_durable(self):
        """The rows held but not yet written as whole chunks, made durable: into the array (a partial
        chunk, written whole again when it fills), or, before the array is made (its chunk rows are
        not known yet), returned for the progress record (None when they are in the array)."""
        if self.array is None:
            return self._joined() if self.pending else []
        if self.pending_rows:
            end = self.written + self.pending_rows
            if end > self.array.shape[0]:
                self.array.resize((max(end, 2 * self.array.shape[0]), *self.array.shape[1:]))
            values = self._joined()
            self.array[self.written:end] = np.asarray(values, dtype=object) if isinstance(values, list) else values
        return None

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


