"""The store format's names, version and layout rules (docs/FORMAT.md is the prose version).

    >>> FORMAT_NAME, FORMAT_VERSION
    ('logitcache', 7)
    >>> choose_layout(num_samples=50_000, num_classes=100, itemsize=2)
    Layout(rows_per_chunk=512, rows_per_shard=16384)

Everything a reader needs to interpret a store is written into the store's Zarr attributes
under the keys defined here; bump FORMAT_VERSION on any change an older reader would misread.
A store records the lowest version that describes everything in it: stores written before v3 keep
their version (and open as before); every teacher written now carries v3's position-bound digests;
token stores (language models, ``_tokens.py``) and stores with a teacher that has features are v4,
which older readers refuse; a teacher whose codec's arrays are v5's (sparse class ids bit-packed
above 65,536 classes, samples kept without log-probabilities: ``Codec.format_version``) makes v5,
a sample teacher whose ids are kept as gaps makes v6, and one that keeps each row's log-probability
sum instead of per-class values (``sample:K[:T]``, the default form) makes v7.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..errors import ConfigError

FORMAT_NAME = "logitcache"
FORMAT_VERSION = 7  # the newest version this code reads and writes
VIEWS_VERSION = 2  # the first version with multi-view teachers (view_params, a view axis)
INTEGRITY_VERSION = 3  # the first version with position-bound digests (chunk_digests, integrity)
TOKENS_VERSION = 4  # the first version with token stores (sequences in the store, rows = positions)
FEATURES_VERSION = 4  # the first version with named teacher features (features/NAME arrays, `features`)
# v5, the first with bit-packed class ids (`index_bits`) and sample:K:counts, is a codec's (Codec.format_version,
# codecs/packed_ids.py PACKED_VERSION): a teacher whose codec needs it raises its store to it; so is v6, the first
# with a sample's ids kept as gaps (`index_gaps`, GAPS_VERSION), and v7, the first with a sample's log-probabilities
# kept as one sum per row (`logprob_sum`, LOGPROB_SUM_VERSION)
BASE_VERSION = INTEGRITY_VERSION  # what a new store is created as: its teachers will carry digests

ROOT_ATTR = "logitcache"  # root group attribute: format, version, dataset
TEACHER_ATTR = "logitcache_teacher"  # teacher group attribute: provenance and status
TEACHERS_GROUP = "teachers"
SHARD_DONE_ARRAY = "shard_done"
VIEW_PARAMS_ARRAY = "view_params"
VIEW_HASHES_ARRAY = "view_hashes"

STATUS_CREATING = "creating"  # arrays being made: not yet resumable, redone by the next dump
STATUS_WRITING = "writing"
STATUS_COMPLETE = "complete"

# Compressed reads decode a whole inner chunk; ~128 KiB keeps random batch reads cheap while
# compression still sees enough rows. A shard (~8 MiB raw, at most 16384 rows) is the unit one
# writer writes and the unit a resumed dump redoes, so a crash loses at most one shard's work.
CHUNK_TARGET_BYTES = 128 * 1024
SHARD_TARGET_BYTES = 8 * 1024 * 1024
MAX_SHARD_ROWS = 16384
RAW_SHARD_BYTES = 256 * 1024 * 1024  # the float32 logits a dump holds for one shard before encoding


@dataclass(frozen=True)
class Layout:
    """How a teacher's (N, C) arrays are cut: rows per inner chunk and rows per shard."""

    rows_per_chunk: int
    rows_per_shard: int

    def __post_init__(self):
        if self.rows_per_chunk < 1 or self.rows_per_shard < 1:
            raise ConfigError(f"chunk and shard rows must be >= 1, got {self}")
        if self.rows_per_shard % self.rows_per_chunk:
            raise ConfigError(
                f"rows per shard ({self.rows_per_shard}) must be a multiple of rows per chunk "
                f"({self.rows_per_chunk})"
            )

    def num_shards(self, num_samples: int) -> int:
        return -(-num_samples // self.rows_per_shard)

    def shard_rows(self, shard: int, num_samples: int) -> tuple[int, int]:
        """[start, stop) rows of one shard; the last shard may be short."""
        start = shard * self.rows_per_shard
        return start, min(start + self.rows_per_shard, num_samples)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Layout:
        return cls(int(data["rows_per_chunk"]), int(data["rows_per_shard"]))


def _power_of_two_at_most(value: float) -> int:
    return 1 << max(0, int(value).bit_length() - 1) if value >= 1 else 1


def choose_layout(
    num_samples: int,
    num_classes: int,
    itemsize: int,
    rows_per_chunk: int | None = None,
    rows_per_shard: int | None = None,
    row_bytes: int | None = None,
) -> Layout:
    """Pick chunk and shard rows for N samples of C classes at ``itemsize`` bytes per value
    (or ``row_bytes`` per sample, for codecs whose rows are not C values)."""
    row_bytes = max(1, row_bytes if row_bytes is not None else num_classes * itemsize)
    if rows_per_chunk is None:
        rows_per_chunk = _power_of_two_at_most(CHUNK_TARGET_BYTES / row_bytes)
        if rows_per_shard is not None:  # the largest power of two that divides the shard
            rows_per_chunk = math.gcd(rows_per_chunk, rows_per_shard)
        rows_per_chunk = min(rows_per_chunk, _power_of_two_at_most(max(num_samples, 1)))
    if rows_per_shard is None:
        target = min(SHARD_TARGET_BYTES / row_bytes, MAX_SHARD_ROWS, max(1, RAW_SHARD_BYTES // (4 * num_classes)))
        chunks = max(1, int(target // rows_per_chunk))
        needed = -(-max(num_samples, 1) // rows_per_chunk)
        rows_per_shard = rows_per_chunk * min(chunks, needed)
    return Layout(rows_per_chunk, rows_per_shard)
