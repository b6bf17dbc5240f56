"""Token stores (format v4): the sequences a language-model teacher read, inside the store.

A token store's samples are N sequences of L token positions. The root holds

- ``tokens`` (N, L): token ids, in the smallest unsigned dtype the vocabulary allows (uint8 up to
  256 ids, uint16 up to 65,536, else uint32);
- ``loss_mask`` (N, L) bool: True at position t when ``tokens[i, t + 1]`` is a training target
  (never at t = L - 1, nor at or after ``lengths[i] - 1``);
- ``lengths`` (N,) int64: real tokens per sequence, the rest right-padding;
- ``keys`` (N,): where each sequence came from (``hamlet.md#3``);

and the ``dataset`` record adds ``kind: "tokens"``, ``seq_len``, ``vocab_size`` (the teacher head's
width: every token id and every stored target is below it), ``tokenizer`` (its spec, identity and
vocabulary) and a token fingerprint over all four arrays. Teacher rows are positions:
row ``i * L + t`` holds the teacher's distribution over the token after position t of sequence i,
so a student's positions can only ever meet the teacher outputs for these exact tokens.

    >>> store = create_token_store("lm.zarr", tokens=..., loss_mask=..., lengths=..., keys=...,
    ...                            vocab_size=256, tokenizer={...}, dataset={...})
    >>> store.tokens, store.loss_mask, store.lengths      # checked against the fingerprint
    >>> sequences = StoredSequences(store)                # or a range at a time, a chunk read at a time
    >>> tokens, loss_mask, lengths = sequences.rows(first, last)
    >>> stored_token_fingerprint(store.group, 256)        # the fingerprint, the arrays read a chunk at a time
    >>> check_stored_sequences(store)                     # fingerprint, rules and counts, a block at a time

The fingerprint is one sha256 over the four arrays one after another, so it is computed from the
stored arrays, read back a chunk at a time, once they are written: a corpus streamed into a store
(``_root.py``) is never held whole, and the definition is the one every store has had.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator

import numpy as np

from ..codecs import get_codec
from ..errors import ConfigError, CorruptStoreError, StoreNotFoundError
from ._backend import remote_errors
from ._schema import CHUNK_TARGET_BYTES, SHARD_TARGET_BYTES, Layout

DATASET_KIND_TOKENS = "tokens"
TOKENS_ARRAY = "tokens"
LOSS_MASK_ARRAY = "loss_mask"
LENGTHS_ARRAY = "lengths"
LOGSUMEXP_ARRAY = "logsumexp"  # a topk token teacher's rows: log-sum-exp of the raw logits
SHARD_STATS_ARRAY = "shard_stats"  # per shard of a token teacher: its own statistics over the targets
SHARD_STATS = ("targets", "nll_sum", "top1_hits", "mass_sum")  # float64 columns of shard_stats
TOKEN_ARRAYS = ("keys", TOKENS_ARRAY, LOSS_MASK_ARRAY, LENGTHS_ARRAY)
MAX_SEQ_LEN = 1 << 20
MAX_VOCAB = 1 << 24

_PREFIX = b"logitcache-tokens-v1\n"
STREAM_BLOCK_BYTES = 64 << 20  # what a streamed pass over a root array reads at once (as 8-byte values)


def token_extra_arrays(codec_name: str) -> dict[str, tuple[str, float]]:
    """Per-row arrays a token teacher keeps beside its codec's: for a codec that ``keeps_logsumexp``
    (``topk:K``), the log-sum-exp of the raw logits, so the top K's raw logits are ``logprobs +
    logsumexp`` (what raw-logit losses and the NeMo layout need). Dense codecs hold raw logits
    already, and ``sample:K:T`` serves its T only."""
    return {LOGSUMEXP_ARRAY: ("float32", float("nan"))} if get_codec(codec_name).keeps_logsumexp else {}


def token_dtype(vocab_size: int) -> str:
    """The smallest unsigned dtype that holds every id below ``vocab_size``."""
    return "uint8" if vocab_size <= 1 << 8 else "uint16" if vocab_size <= 1 << 16 else "uint32"


def token_fingerprint(keys, tokens: np.ndarray, loss_mask: np.ndarray, lengths: np.ndarray, vocab_size: int) -> str:
    """sha256 over the sequences exactly: ``logitcache-tokens-v1\\n``, then N, L and V as uint64
    LE, each key (uint64 LE length + UTF-8), the lengths as int64 LE, the tokens as uint32 LE and
    the mask as one byte per position, all row-major."""
    tokens = np.asarray(tokens)
    return fingerprint_of_parts(*tokens.shape, vocab_size, [keys], [lengths], [tokens], [loss_mask])


def fingerprint_of_parts(num_sequences: int, seq_len: int, vocab_size: int, keys: Iterable, lengths: Iterable,
                         tokens: Iterable, loss_mask: Iterable) -> str:
    """``token_fingerprint`` of arrays given as consecutive row blocks, each array's blocks in turn."""
    digest = _fingerprint_start(num_sequences, seq_len, vocab_size)
    parts = (("keys", keys), (LENGTHS_ARRAY, lengths), (TOKENS_ARRAY, tokens), (LOSS_MASK_ARRAY, loss_mask))
    for name, blocks in parts:
        for block in blocks:
            _fingerprint_update(digest, name, block)
    return "sha256:" + digest.hexdigest()


def _fingerprint_start(num_sequences: int, seq_len: int, vocab_size: int):
    return hashlib.sha256(_PREFIX + np.asarray([num_sequences, seq_len, vocab_size], dtype="<u8").tobytes())


def _fingerprint_update(digest, name: str, block) -> None:
    """One block of rows of array ``name`` into the fingerprint (``token_fingerprint``'s encoding)."""
    if name == "keys":
        for key in block:
            raw = str(key).encode("utf-8")
            digest.update(np.asarray([len(raw)], dtype="<u8").tobytes() + raw)
    else:
        dtype = {LENGTHS_ARRAY: "<i8", TOKENS_ARRAY: "<u4", LOSS_MASK_ARRAY: "u1"}[name]
        digest.update(np.ascontiguousarray(block, dtype=dtype).data)


def stored_token_fingerprint(group, vocab_size: int, location: str = "") -> str:
    """The token fingerprint of the sequences in a root group, read back a chunk at a time."""
    tokens = group[TOKENS_ARRAY]
    return fingerprint_of_parts(*tokens.shape, vocab_size, *(chunks_of(group[name], location) for name in
                                                              ("keys", LENGTHS_ARRAY, TOKENS_ARRAY, LOSS_MASK_ARRAY)))


def check_stored_sequences(store, per_sequence: bool = False) -> dict:
    """A token store's four arrays read a block of whole chunks at a time (``chunks_of``) and checked
    as ``read_token_arrays`` checks them whole: the fingerprint, the format's rules, the counts. Memory
    is a block's, whatever the corpus; with ``per_sequence``, also the (N,) lengths and targets per
    sequence (what a reader that streams the sequences needs up front).

    Returns:
        ``num_sequences``, ``seq_len``, ``num_tokens``, ``num_targets`` (and ``lengths``,
        ``targets_per_sequence`` with ``per_sequence``).

    Raises:
        CorruptStoreError: a chunk cannot be read, or the arrays differ from what the store recorded,
            or break the format's rules.
    """
    group, dataset, location = store.group, store.dataset, store.location
    (n, length), vocab = group[TOKENS_ARRAY].shape, dataset["vocab_size"]
    digest, why = _fingerprint_start(n, length, vocab), None
    counts = {"num_sequences": n, "seq_len": length, "num_tokens": 0, "num_targets": 0}
    for block in chunks_of(group["keys"], location):
        _fingerprint_update(digest, "keys", block)
    for block in chunks_of(group[LENGTHS_ARRAY], location):
        _fingerprint_update(digest, LENGTHS_ARRAY, block)
        counts["num_tokens"] += int(block.sum())
        if why is None and (block.min() < 1 or block.max() > length):
            why = f"sequence lengths must be in [1, {length}]"
    for block in chunks_of(group[TOKENS_ARRAY], location):
        _fingerprint_update(digest, TOKENS_ARRAY, block)
        if why is None and block.max() >= vocab:
            why = f"token ids reach {int(block.max())}, outside a vocabulary of {vocab}"
    first, per_row = 0, []
    for block in chunks_of(group[LOSS_MASK_ARRAY], location):
        _fingerprint_update(digest, LOSS_MASK_ARRAY, block)
        lengths = read_rows(group[LENGTHS_ARRAY], first, first + len(block), location)
        if why is None and (block & (np.arange(length)[None, :] >= lengths[:, None] - 1)).any():
            why = "loss_mask marks a position whose next token is padding or beyond the sequence"
        targets = block.sum(axis=1)
        counts["num_targets"] += int(targets.sum())
        if per_sequence:
            per_row.append((lengths, targets))
        first += len(block)
    _check_found(store, "sha256:" + digest.hexdigest(), why, counts)
    if per_sequence:
        counts["lengths"] = np.concatenate([lengths for lengths, _ in per_row]).astype(np.int64)
        counts["targets_per_sequence"] = np.concatenate([targets for _, targets in per_row]).astype(np.int64)
    return counts


def _check_found(store, fingerprint: str, why: str | None, counts: dict) -> None:
    """What the arrays were found to be against what the store recorded, in ``read_token_arrays``'s order."""
    dataset = store.dataset
    if fingerprint != dataset["fingerprint"]:
        raise CorruptStoreError(f"{store.location}: the stored tokens, loss mask, lengths or keys do not match the "
                                "store's token fingerprint; the store was damaged or edited")
    if why:
        raise CorruptStoreError(f"{store.location}: {why}; the store was damaged or edited")
    for field in ("num_tokens", "num_targets"):
        if dataset[field] != counts[field]:
            raise CorruptStoreError(f"{store.location}: dataset.{field} says {dataset[field]}, the sequences hold "
                                    f"{counts[field]}; the store was damaged or edited")


def chunks_of(array, location: str = "", first: int = 0, last: int | None = None) -> Iterator[np.ndarray]:
    """Rows [first, last) of a root array, a block of whole chunks at a time (about
    ``STREAM_BLOCK_BYTES``, at least one chunk), so memory is a block's, not the array's."""
    last = array.shape[0] if last is None else last
    row_bytes = int(np.prod(array.shape[1:], dtype=np.int64)) * max(8, array.dtype.itemsize)  # a key: about 8
    rows = array.chunks[0] * max(1, STREAM_BLOCK_BYTES // (row_bytes * array.chunks[0]))
    start = first
    while start < last:
        stop = min((start // rows + 1) * rows, last)
        yield read_rows(array, start, stop, location)
        start = stop


def read_rows(array, first: int, last: int, location: str = "") -> np.ndarray:
    """Rows [first, last) of a root array; a damaged chunk is a ``CorruptStoreError``."""
    try:
        with remote_errors(location):
            return array[first:last]
    except (CorruptStoreError, StoreNotFoundError):
        raise
    except Exception as err:  # zarr raises several types for a bad checksum or truncated chunk
        if isinstance(err, (ConnectionError, PermissionError)):
            raise
        raise CorruptStoreError(f"store array {array.basename!r} cannot be read: {err}") from None


class StoredSequences:
    """A token store's sequences read a range at a time, whole chunks cached, so walking them in
    order (the dump's batches, a comparison) reads each chunk once."""

    def __init__(self, store):
        self.location = store.location
        self._arrays = {name: store.group[name] for name in TOKEN_ARRAYS}
        self._cached: dict[str, tuple[int, np.ndarray]] = {}  # name -> (first row, rows of whole chunks)

    def __len__(self) -> int:
        return self._arrays[TOKENS_ARRAY].shape[0]

    def rows(self, first: int, last: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tokens as int64, loss_mask, lengths) of sequences [first, last)."""
        return (self.read(TOKENS_ARRAY, first, last).astype(np.int64), self.read(LOSS_MASK_ARRAY, first, last),
                self.read(LENGTHS_ARRAY, first, last))

    def keys(self, first: int, last: int) -> list[str]:
        return [str(key) for key in self.read("keys", first, last)]

    def read(self, name: str, first: int, last: int) -> np.ndarray:
        array, chunk = self._arrays[name], self._arrays[name].chunks[0]
        start, rows = self._cached.get(name, (0, None))
        if rows is None or first < start or last > start + len(rows):
            start = first // chunk * chunk
            stop = min(max(-(-last // chunk) * chunk, start + chunk), array.shape[0])
            rows = read_rows(array, start, stop, self.location)
            self._cached[name] = (start, rows)
        return rows[first - start: last - start]

    def differs_from(self, blocks: Iterable) -> tuple[int, bool]:
        """(rows in ``blocks``, whether any of them differs from the stored one in tokens, loss mask,
        length or key). Reads every block, to count the rows, but compares only while they agree."""
        seen, differs = 0, False
        for block in blocks:
            first, last = seen, seen + len(block.keys)
            seen = last
            if differs or last > len(self) or block.tokens.shape[1] != self._arrays[TOKENS_ARRAY].shape[1]:
                differs = True
                continue
            tokens, loss_mask, lengths = self.rows(first, last)
            differs = not (np.array_equal(tokens, block.tokens) and np.array_equal(loss_mask, block.loss_mask)
                           and np.array_equal(lengths, block.lengths) and self.keys(first, last) == list(block.keys))
        return seen, differs or seen != len(self)


class SequenceRows:
    """A token store's tokens and loss mask by sequence, shaped as ``stored_rows.StoredRows`` reads a
    teacher: a layout of whole chunks (the tokens array's), reads of row ranges and of chunks, an
    identity (the token fingerprint) that a reader reopening the store must find again. Each chunk
    read is checked by its CRC-32C; the fingerprint is checked once before, a block at a time
    (``check_stored_sequences``), so no reader needs the arrays whole."""

    name, label = "sequences", "the token sequences"  # label: what a reader's error calls them

    def __init__(self, store):
        self.store, self.location = store, store.location
        self.arrays = {name: store.group[name] for name in (TOKENS_ARRAY, LOSS_MASK_ARRAY)}
        tokens = self.arrays[TOKENS_ARRAY]
        chunk, self.num_samples = tokens.chunks[0], tokens.shape[0]
        held = chunk * tokens.shape[1] * (tokens.dtype.itemsize + 1)
        self.layout = Layout(chunk, chunk * max(1, STREAM_BLOCK_BYTES // held))  # held whole: a block at a time
        self.identity = store.fingerprint

    def read_stored(self, start: int, stop: int, arrays=None) -> dict[str, np.ndarray]:
        """Rows [start, stop) of the arrays (default: both)."""
        return {name: read_rows(self.arrays[name], start, stop, self.location) for name in (arrays or self.arrays)}

    def read_chunks(self, chunks, arrays=None) -> list[dict[str, np.ndarray]]:
        """The rows of each of these whole chunks (of the tokens array)."""
        rows = self.layout.rows_per_chunk
        return [self.read_stored(int(c) * rows, min((int(c) + 1) * rows, self.num_samples), arrays) for c in chunks]


def sequence_rows(store, _name: str = "") -> SequenceRows:
    """A store's ``SequenceRows`` (as ``StoredRows`` reopens what it reads, in each process)."""
    return SequenceRows(store)


def choose_token_layout(num_sequences: int, seq_len: int, row_bytes: int, rows_per_shard: int | None = None) -> Layout:
    """Chunks and shards of whole sequences: an inner chunk holds ~128 KiB of rows (at least one
    sequence), a shard ~8 MiB, so the dump's batches, which never cross a shard, are whole
    sequences, and a resumed dump redoes whole sequences.

    Raises:
        ConfigError: ``rows_per_shard`` is not a whole number of sequences.
    """
    per_chunk = max(1, round(CHUNK_TARGET_BYTES / (row_bytes * seq_len)))
    if rows_per_shard is not None:
        if rows_per_shard % seq_len:
            raise ConfigError(f"--rows-per-shard counts token positions in a token store and must be a multiple "
                              f"of --seq-len {seq_len}, got {rows_per_shard}")
        sequences = rows_per_shard // seq_len
        return Layout(seq_len * math.gcd(per_chunk, sequences), rows_per_shard)
    per_chunk = min(per_chunk, max(1, num_sequences))
    chunks = max(1, min(round(SHARD_TARGET_BYTES / (row_bytes * seq_len * per_chunk)), -(-num_sequences // per_chunk)))
    return Layout(seq_len * per_chunk, seq_len * per_chunk * chunks)


def token_layout_horizon(seq_len: int, row_bytes: int) -> int:
    """How many sequences decide ``choose_token_layout``: from this many on, the layout is the same
    for any number, so a dump needs to count a streamed corpus's rows only this far."""
    per_chunk = max(1, round(CHUNK_TARGET_BYTES / (row_bytes * seq_len)))
    return per_chunk * max(1, round(SHARD_TARGET_BYTES / (row_bytes * seq_len * per_chunk)))


def check_sequences(tokens: np.ndarray, loss_mask: np.ndarray, lengths: np.ndarray, vocab_size: int) -> str | None:
    """What makes these arrays not a token dataset, in a few words (None when they are one)."""
    if tokens.ndim != 2 or tokens.shape[0] < 1 or tokens.shape[1] < 2:
        return f"tokens must be (sequences >= 1, length >= 2), not {tokens.shape}"
    n, length = tokens.shape
    if loss_mask.shape != (n, length) or lengths.shape != (n,):
        return f"loss_mask {loss_mask.shape} and lengths {lengths.shape} do not match tokens {tokens.shape}"
    if tokens.min() < 0 or tokens.max() >= vocab_size:
        return f"token ids reach {int(tokens.max())}, outside a vocabulary of {vocab_size}"
    if lengths.min() < 1 or lengths.max() > length:
        return f"sequence lengths must be in [1, {length}]"
    positions = np.arange(length)[None, :]
    if (loss_mask & (positions >= lengths[:, None] - 1)).any():
        return "loss_mask marks a position whose next token is padding or beyond the sequence"
    return None


def token_dataset_record(dataset: dict, *, num_sequences: int, seq_len: int, vocab_size: int, num_tokens: int,
                         num_targets: int, tokenizer: dict, fingerprint: str) -> dict:
    """The root's ``dataset`` record for these sequences."""
    return {
        **dataset,
        "kind": DATASET_KIND_TOKENS,
        "num_samples": int(num_sequences),
        "seq_len": int(seq_len),
        "vocab_size": int(vocab_size),
        "num_tokens": int(num_tokens),
        "num_targets": int(num_targets),
        "tokenizer": dict(tokenizer),
        "class_names": [],
        "fingerprint": fingerprint,
    }


def check_token_root(store, bad) -> None:
    """A token store's record and arrays agree (shapes, dtypes, sane sizes); ``bad`` is the caller's
    exception class for one-line reasons. The values are checked by ``read_token_arrays``."""
    dataset = store.dataset
    for field, high in (("seq_len", MAX_SEQ_LEN), ("vocab_size", MAX_VOCAB)):
        value = dataset.get(field)
        if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= high:
            raise bad(f"dataset.{field} is {value!r}, not a whole number in [2, {high}]")
    if not isinstance(dataset.get("tokenizer"), dict):
        raise bad("dataset.tokenizer is not an object")
    n, length = dataset["num_samples"], dataset["seq_len"]
    for field in ("num_tokens", "num_targets"):  # counts info and the pipeline report; read_token_arrays proves them
        value = dataset.get(field)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= n * length:
            raise bad(f"dataset.{field} is {value!r}, not a whole number in [0, {n * length}]")
    shapes = {"keys": ((n,), None), TOKENS_ARRAY: ((n, length), token_dtype(dataset["vocab_size"])),
              LOSS_MASK_ARRAY: ((n, length), "bool"), LENGTHS_ARRAY: ((n,), "int64")}
    for name, (shape, dtype) in shapes.items():
        if name not in store.group:
            raise bad(f"array {name!r} is missing")
        array = store.group[name]
        if tuple(array.shape) != shape or (dtype and np.dtype(array.dtype) != np.dtype(dtype)):
            raise bad(f"array {name!r} is {array.dtype} {tuple(array.shape)}, not {dtype or 'str'} {shape}")


def read_token_arrays(store, read) -> dict[str, np.ndarray]:
    """keys, tokens, loss_mask and lengths, read with ``read(name)`` and checked against the
    fingerprint and the format's rules.

    Raises:
        CorruptStoreError: they differ from what the store recorded, or break the format's rules.
    """
    arrays = {name: read(name) for name in TOKEN_ARRAYS}
    dataset = store.dataset
    found = token_fingerprint(arrays["keys"], arrays[TOKENS_ARRAY], arrays[LOSS_MASK_ARRAY],
                              arrays[LENGTHS_ARRAY], dataset["vocab_size"])
    why = check_sequences(arrays[TOKENS_ARRAY], arrays[LOSS_MASK_ARRAY], arrays[LENGTHS_ARRAY], dataset["vocab_size"])
    counted = {"num_tokens": int(arrays[LENGTHS_ARRAY].sum()), "num_targets": int(arrays[LOSS_MASK_ARRAY].sum())}
    _check_found(store, found, why, counted)
    return arrays
