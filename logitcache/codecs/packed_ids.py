"""Class ids of more than 65,536 classes in ceil(log2 C) bits: how sparse codecs keep them compact.

    >>> bits = packed_index_bits(131072)              # 17; None up to 65,536 classes (whole uint16 ids)
    >>> low, high = split_ids(ids, bits)              # (n, K) ids -> (n, K) uint16, (n, ceil(K / 8)) uint8
    >>> join_ids(low, high, bits)                     # -> (n, K) int64, the same ids

An id of b bits is kept as its low 16 bits, in the uint16 ``indices`` array every store below 65,536
classes has, and its b - 16 high bits, bit-packed: the K ids' high bits of a row are one little-endian
bit string (id j holds bits [j (b - 16), (j + 1)(b - 16)), bit i being bit i % 8 of byte i // 8, the
last byte's unused bits 0) in a uint8 ``indices_high`` row. A row takes 2K + ceil(K (b - 16) / 8) =
ceil(K b / 8) bytes, exactly a row of b-bit ids, and every row the same, so rows, chunks and shards
keep fixed sizes. Splitting at 16 bits rather than packing whole ids costs nothing raw and keeps the
low bytes where blosc's byte shuffle and zstd find them: on disk about as small as uint32 ids, whose
zero bytes the shuffle squeezed out already, where fully packed ids, straddling bytes, compress worse
(benchmarks/RESULTS.md). Numpy over whole arrays, no loop per row. A row never written holds the fills 65535 and 255, which join to 2**b - 1:
sparse codecs tell unwritten rows by their other arrays (NaN log-probabilities, zero counts), never
by an id, since at C = 2**b that id is a class. Stores with split ids are format v5 (``PACKED_VERSION``).

A sample row's ids are ascending, so from v6 (``GAPS_VERSION``) its stored values are gaps: the first id,
then each id less the one before it less one (``to_gaps``, ``from_gaps``), 0 in unused slots. They are
small where draws cluster, which zstd finds: the same bytes raw, fewer on disk (benchmarks/RESULTS.md).

    >>> to_gaps(np.array([[3, 4, 9, 65535]]), np.array([[True, True, True, False]]))
    array([[3, 0, 4, 0]])
"""

from __future__ import annotations

import math

import numpy as np

PACKED_VERSION = 5  # the store format that added packed ids and samples kept without log-probabilities
GAPS_VERSION = 6  # the store format that keeps a sample row's ascending ids as gaps
LOGPROB_SUM_VERSION = 7  # the store format whose sample:K rows keep one log-probability sum (codecs/sample.py)
PACKED_ABOVE = 65536  # ids of more classes than this are packed; up to it they stay whole uint16
HIGH_FILL = 255  # the high bits' fill byte: an unwritten row
MAX_INDEX_BITS = 32
NARROW_ROWS = 32  # up to this K, gaps are summed a column at a time (faster than cumsum along short rows)


def packed_index_bits(num_classes: int | None) -> int | None:
    """The bits an id of ``num_classes`` classes is kept in, ceil(log2 C); None (whole uint16 ids)
    up to ``PACKED_ABOVE`` classes, where 16 bits hold every id."""
    if num_classes is None or num_classes <= PACKED_ABOVE:
        return None
    return least_index_bits(num_classes)


def least_index_bits(num_classes: int) -> int:
    """ceil(log2 C): the fewest bits that hold every id below ``num_classes`` (at least 1)."""
    return max(1, math.ceil(math.log2(num_classes)))


def high_width(k: int, bits: int) -> int:
    """Bytes of a row's packed high bits: K ids of ``bits`` bits, their bits above the 16th."""
    return -(-k * (bits - 16) // 8)


def split_ids(ids: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, K) integer ids below 2**bits (17 <= bits <= 32) -> (their low 16 bits as uint16, their
    high bits packed: (n, ``high_width(K, bits)``) uint8)."""
    assert 16 < bits <= MAX_INDEX_BITS and (ids.size == 0 or (ids.min() >= 0 and ids.max() < 1 << bits)), bits
    wide = ids.astype(np.uint32)
    return (wide & 0xFFFF).astype(np.uint16), pack_bits(wide >> 16, bits - 16)


def join_ids(low: np.ndarray, high: np.ndarray, bits: int) -> np.ndarray:
    """``split_ids``'s two arrays -> (n, K) int64 ids."""
    return low.astype(np.int64) | (unpack_bits(high, bits - 16, low.shape[1]) << 16)


def pack_bits(values: np.ndarray, width: int) -> np.ndarray:
    """(n, K) values below 2**width -> (n, ceil(K * width / 8)) uint8, each row one little-endian
    bit string of its K values."""
    rows, k = values.shape
    planes = (values[:, :, None] >> np.arange(width, dtype=values.dtype)) & 1  # (n, K, width): bit b of each
    return np.packbits(planes.astype(np.uint8).reshape(rows, k * width), axis=1, bitorder="little")


def unpack_bits(packed: np.ndarray, width: int, k: int) -> np.ndarray:
    """``pack_bits``'s (n, bytes) uint8 -> (n, k) int64 values."""
    planes = np.unpackbits(packed, axis=1, count=k * width, bitorder="little").reshape(len(packed), k, width)
    if width == 1:
        return planes[:, :, 0].astype(np.int64)
    return planes.astype(np.int64) @ (1 << np.arange(width, dtype=np.int64))


def to_gaps(ids: np.ndarray, used: np.ndarray) -> np.ndarray:
    """(n, K) ids, ascending in each row's used slots (which come first) -> the first id, then each
    id's distance from the one before less one; 0 in unused slots. Every gap is below the largest id."""
    gaps = np.empty_like(ids)
    gaps[:, :1] = ids[:, :1]
    np.subtract(ids[:, 1:], ids[:, :-1] + 1, out=gaps[:, 1:])
    return np.where(used, gaps, 0)


def from_gaps(gaps: np.ndarray, used: np.ndarray, padding: int) -> np.ndarray:
    """``to_gaps``'s (n, K) values -> int64 ids, ``padding`` in unused slots: id j is the sum of the
    first j + 1 gaps, plus j."""
    k = gaps.shape[1]
    if k > NARROW_ROWS:
        ids = np.cumsum(gaps, axis=1, dtype=np.int64)
        ids += np.arange(k, dtype=np.int64)
    else:  # a column at a time: numpy's cumsum along short rows is ~2x slower (benchmarks/packed_ids.py)
        ids = gaps.astype(np.int64)
        ids[:, 1:] += 1
        for column in range(1, k):
            ids[:, column] += ids[:, column - 1]
    np.copyto(ids, padding, where=~used)  # in place: a batch's arrays are not made twice
    return ids
