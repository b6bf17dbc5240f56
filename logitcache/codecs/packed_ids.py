"""Class ids bit-packed at ceil(log2 C) bits: how sparse codecs keep ids above 65,536 classes compact.

    >>> bits = packed_index_bits(131072)          # 17; None up to 65,536 classes (whole uint16 ids)
    >>> packed = pack_ids(ids, bits)              # (n, K) ids -> (n, ceil(K * 17 / 8)) uint8
    >>> unpack_ids(packed, bits, k)               # -> (n, K) int64, the same ids

A row's K ids are one little-endian bit string: id j holds bits [j * b, (j + 1) * b), and the last
byte's unused high bits are 0. Every row takes the same bytes, so rows, chunks and shards keep fixed
sizes. A row never written holds the fill byte 255, which unpacks to 2**b - 1 for every id: sparse
codecs tell unwritten rows by their other arrays (NaN log-probabilities, zero counts), never by an id,
since at C = 2**b that id is a class. Packing and unpacking are numpy over whole arrays (no loop per
row): every eighth id at once, as unaligned little-endian words of its row, shifted and masked.
Stores with packed ids are format v5 (``PACKED_VERSION``), which older readers refuse.
"""

from __future__ import annotations

import math

import numpy as np

PACKED_VERSION = 5  # the store format that added packed ids and samples kept without log-probabilities
PACKED_ABOVE = 65536  # ids of more classes than this are packed; up to it they stay whole uint16 (RESULTS.md)
PACKED_FILL = 255  # the packed array's fill byte: an unwritten row
MAX_INDEX_BITS = 32


def packed_index_bits(num_classes: int | None) -> int | None:
    """The bits a class id is packed at for ``num_classes`` classes, ceil(log2 C); None (whole
    uint16 ids) up to ``PACKED_ABOVE`` classes, where 16 bits are as small or the store is older."""
    if num_classes is None or num_classes <= PACKED_ABOVE:
        return None
    return least_index_bits(num_classes)


def least_index_bits(num_classes: int) -> int:
    """ceil(log2 C): the fewest bits that hold every id below ``num_classes`` (at least 1)."""
    return max(1, math.ceil(math.log2(num_classes)))


def packed_width(k: int, bits: int) -> int:
    """Bytes a row of ``k`` ids packed at ``bits`` takes."""
    return -(-k * bits // 8)


def _phases(k: int, bits: int):
    """Eight ids take ``bits`` whole bytes, so id ``8q + p`` starts at byte ``q * bits + (p * bits) // 8``
    of its row, at bit ``(p * bits) % 8``: for each phase p, its ids (columns p, p + 8, ...), their
    first byte in the first group, and their shift."""
    for phase in range(min(8, k)):
        yield slice(phase, None, 8), (phase * bits) >> 3, (phase * bits) & 7


def _words(rows: np.ndarray, word: np.dtype, first: int, step: int, count: int) -> np.ndarray:
    """The (n, count) little-endian words of a (n, width) uint8 array that start at bytes first,
    first + step, ...: an unaligned strided view (no copy, no index array)."""
    return np.ndarray((len(rows), count), dtype=word, buffer=rows, offset=first, strides=(rows.strides[0], step))


def _word(bits: int) -> np.dtype:
    """The little-endian word that holds any id shifted by up to 7 bits."""
    return np.dtype("<u4" if bits + 7 <= 32 else "<u8")


def pack_ids(ids: np.ndarray, bits: int) -> np.ndarray:
    """(n, K) integer ids, each below 2**bits (8 <= bits <= 32) -> (n, ``packed_width(K, bits)``) uint8.

    Per phase, its ids shifted into place are OR-ed into the words where they start; the words of
    one phase are ``bits`` >= their size bytes apart, so they never overlap."""
    assert 8 <= bits <= MAX_INDEX_BITS and (ids.size == 0 or (ids.min() >= 0 and ids.max() < 1 << bits)), bits
    rows, k = ids.shape
    word, width = _word(bits), packed_width(k, bits)
    out = np.zeros((rows, -(-k // 8) * bits + word.itemsize), dtype=np.uint8)
    for columns, first, shift in _phases(k, bits):
        part = ids[:, columns]
        _words(out, word, first, bits, part.shape[1])[...] |= part.astype(word) << word.type(shift)
    return np.ascontiguousarray(out[:, :width])


def unpack_ids(packed: np.ndarray, bits: int, k: int) -> np.ndarray:
    """``pack_ids``'s (n, width) uint8 -> (n, k) int64 ids: each id's word, shifted and masked."""
    rows, width = packed.shape
    word = _word(bits)
    padded = np.zeros((rows, -(-k // 8) * bits + word.itemsize), dtype=np.uint8)
    padded[:, :width] = packed
    ids = np.empty((rows, k), dtype=np.int64)
    mask = word.type((1 << bits) - 1)
    for columns, first, shift in _phases(k, bits):
        count = len(range(k)[columns])
        ids[:, columns] = (_words(padded, word, first, bits, count) >> word.type(shift)) & mask
    return ids
