"""Whole shards as bytes: Zarr's ``sharding_indexed`` layout, encoded and decoded here with the same
numcodecs blosc and CRC-32C zarr uses, byte for byte what zarr writes
(``tests/store/test_fast_against_slow_paths.py`` compares the two on every codec's arrays).

    >>> shards = ShardBytes.for_array(array)      # None unless the array is laid out as logitcache makes them
    >>> data = shards.encode(values, map=pool.map) # one shard's object (values: its rows), chunks compressed in parallel
    >>> index = shards.index(data[-shards.index_bytes:])   # (chunks, 2) offsets and lengths
    >>> shards.decode_chunk(data[offset:offset + length])  # one inner chunk's rows, its CRC-32C checked

Why not zarr's own pipeline: it runs every inner chunk through a chain of asyncio tasks (~0.5 ms
of Python per chunk, and a NaN-aware comparison of the whole chunk with its fill value), which at
C = 1000 (64-row chunks) costs three times the compression itself, and at C = 32000 (2-row chunks)
far more. Zarr stays the format's reader of record: any zarr reads these objects, and an array
configured in any other way is left to zarr entirely.
"""

from __future__ import annotations

from dataclasses import dataclass

import google_crc32c
import numcodecs
import numpy as np
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec
from zarr.codecs.sharding import ShardingCodecIndexLocation

MISSING = np.uint64(2**64 - 1)  # an absent inner chunk's offset and length in the shard index
_SHUFFLE = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}


def crc32c(data) -> bytes:
    """CRC-32C as zarr's ``crc32c`` codec appends it: 4 bytes, little-endian."""
    return np.uint32(google_crc32c.value(data)).astype("<u4").tobytes()


@dataclass(frozen=True)
class ShardBytes:
    """One array's shards: inner chunks of ``chunk_rows`` rows, ``chunks_per_shard`` of them."""

    dtype: np.dtype  # little-endian
    row_shape: tuple[int, ...]
    chunk_rows: int
    chunks_per_shard: int
    fill_value: object
    write_empty_chunks: bool
    blosc: numcodecs.Blosc

    @classmethod
    def for_array(cls, array) -> ShardBytes | None:
        """The shard layout of a zarr v3 array whose only codec is ``sharding_indexed`` with inner
        codecs bytes -> blosc -> crc32c, index codecs bytes -> crc32c at the end, sharded and chunked
        along the first axis only; None for anything else (zarr then does the work)."""
        try:
            (sharding,) = array.metadata.codecs
        except (AttributeError, ValueError):
            return None
        if not isinstance(sharding, ShardingCodec) or sharding.index_location != ShardingCodecIndexLocation.end:
            return None
        inner, index = sharding.codecs, sharding.index_codecs
        if (len(inner) != 3 or not isinstance(inner[0], BytesCodec) or not isinstance(inner[1], BloscCodec)
                or not isinstance(inner[2], Crc32cCodec) or len(index) != 2 or not isinstance(index[0], BytesCodec)
                or not isinstance(index[1], Crc32cCodec)):
            return None
        dtype = np.dtype(array.dtype)
        endian = getattr(inner[0].endian, "value", inner[0].endian)
        if dtype.itemsize > 1 and endian != "little" or getattr(index[0].endian, "value", None) != "little":
            return None
        shape, chunk, shard = tuple(array.shape), tuple(sharding.chunk_shape), tuple(array.shards or ())
        if len(shard) != len(shape) or chunk[1:] != shape[1:] or shard[1:] != shape[1:] or shard[0] % chunk[0]:
            return None
        blosc = inner[1]
        codec = numcodecs.Blosc(cname=getattr(blosc.cname, "value", blosc.cname), clevel=blosc.clevel,
                                shuffle=_SHUFFLE[getattr(blosc.shuffle, "value", blosc.shuffle)],
                                blocksize=blosc.blocksize, typesize=blosc.typesize)
        return cls(dtype.newbyteorder("<"), shape[1:], chunk[0], shard[0] // chunk[0],
                   np.asarray(array.metadata.fill_value, dtype=dtype)[()], bool(array.config.write_empty_chunks),
                   codec)

    @property
    def index_bytes(self) -> int:
        """Size of the index at the end of every shard object: 16 bytes per chunk and its CRC."""
        return 16 * self.chunks_per_shard + 4

    def _is_fill(self, chunk: np.ndarray) -> bool:
        """zarr's ``all_equal``: every value is the fill value (NaN equal to NaN; a float 0 fill by bits)."""
        flat, fill = chunk.reshape(-1), self.fill_value
        if self.dtype.kind == "f" and np.isnan(fill):
            return bool(np.isnan(flat[0])) and bool(np.isnan(flat).all())
        if self.dtype.kind == "f" and fill == 0:
            bits = flat.view(f"u{self.dtype.itemsize}")
            return bool(bits[0] == 0) and not bits.any()
        return bool(flat[0] == fill) and bool((flat == fill).all())

    def _chunk(self, values: np.ndarray, i: int) -> np.ndarray:
        """Inner chunk ``i`` of a shard's rows, padded with the fill value past the rows given."""
        chunk = values[i * self.chunk_rows:(i + 1) * self.chunk_rows]
        if len(chunk) < self.chunk_rows:
            padded = np.full((self.chunk_rows, *self.row_shape), self.fill_value, dtype=self.dtype)
            padded[:len(chunk)] = chunk
            chunk = padded
        return np.ascontiguousarray(chunk, dtype=self.dtype)

    def _encode_chunk(self, chunk: np.ndarray) -> bytes | None:
        if not self.write_empty_chunks and self._is_fill(chunk):
            return None
        body = self.blosc.encode(chunk.reshape(-1).view(np.uint8))
        return bytes(body) + crc32c(body)

    def encode(self, values: np.ndarray, map=map) -> bytes | None:
        """One shard's object for its first ``len(values)`` rows (the rest of the shard unwritten), or
        None where zarr would delete the object (every chunk holds only the fill value). ``map``
        (e.g. a thread pool's) compresses the chunks; blosc releases the GIL."""
        count = -(-len(values) // self.chunk_rows)
        bodies = list(map(lambda i: self._encode_chunk(self._chunk(values, i)), range(count)))
        index = np.full((self.chunks_per_shard, 2), MISSING, dtype="<u8")
        parts, offset = [], 0
        for i, body in enumerate(bodies):
            if body is None:
                continue
            index[i] = (offset, len(body))
            parts.append(body)
            offset += len(body)
        if not parts:
            return None
        table = index.tobytes()
        return b"".join([*parts, table, crc32c(table)])

    def index(self, tail) -> np.ndarray:
        """(chunks_per_shard, 2) uint64 offsets and lengths from a shard's last ``index_bytes`` bytes.

        Raises:
            ValueError: the index is truncated or fails its CRC-32C.
        """
        tail = np.frombuffer(tail, np.uint8)
        if len(tail) != self.index_bytes or bytes(tail[-4:]) != crc32c(tail[:-4]):
            raise ValueError("shard index checksum mismatch (corrupted or truncated bytes)")
        return tail[:-4].view("<u8").reshape(self.chunks_per_shard, 2)

    def decode_chunk(self, data) -> np.ndarray:
        """One inner chunk's (chunk_rows, ...) values from its bytes.

        Raises:
            ValueError: the chunk fails its CRC-32C.
        """
        data = np.frombuffer(data, np.uint8)
        if len(data) < 4 or bytes(data[-4:]) != crc32c(data[:-4]):
            raise ValueError("chunk checksum mismatch (corrupted or truncated bytes)")
        out = np.empty((self.chunk_rows, *self.row_shape), dtype=self.dtype)
        self.blosc.decode(data[:-4], out=out)  # straight into a writable array of the chunk's shape
        return out

    def fill_chunk(self) -> np.ndarray:
        """An absent chunk's values: all fill."""
        return np.full((self.chunk_rows, *self.row_shape), self.fill_value, dtype=self.dtype)
