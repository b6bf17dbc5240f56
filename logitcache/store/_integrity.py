"""Position-bound digests (format v3): what ties every stored byte to its place and its metadata.

Zarr's CRC-32C proves a chunk's bytes are the bytes written *somewhere*; it cannot tell two
swapped chunk files apart, nor an edited ``zarr.json``. A v3 teacher therefore records

- ``chunk_digests`` (n_chunks, 32) uint8: sha256 of each inner chunk's rows of every teacher array,
  bound to the chunk index, the rows and each array's name, dtype and shape;
- in its attribute, ``integrity.metadata``: sha256 of the teacher's name, its attribute (less the
  volatile ``run`` record and ``integrity`` itself), every array's shape/dtype/chunking/fill value,
  and the store's ``dataset`` record (whose fingerprint binds the keys and labels);
- ``integrity.content``: sha256 over all chunk digests, and ``integrity.teacher``: sha256 of the two,
  one value that names exactly these logits for exactly these samples (``--expect-teacher`` pins it).

    >>> chunk_digest(3, 384, 512, {"logits": values})      # 32 bytes
    >>> metadata_digest("default", attrs, arrays, dataset)  # "sha256:..."

Digests carry no key: they prove consistency (accidents, partial copies, naive edits), not who wrote
the store. Anyone can recompute them after an edit; a digest published out of band cannot be forged.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

CHUNK_DIGESTS_ARRAY = "chunk_digests"
DIGEST_BYTES = 32
ALGORITHM = "sha256"
VOLATILE_FIELDS = ("run", "integrity")  # attribute fields outside the metadata digest

_CHUNK_TAG = b"logitcache-chunk-v3\n"
_CONTENT_TAG = b"logitcache-content-v3\n"
_METADATA_TAG = b"logitcache-metadata-v3\n"
_TEACHER_TAG = b"logitcache-teacher-v3\n"


def _u64(*values: int) -> bytes:
    return np.asarray(values, dtype="<u8").tobytes()


def chunk_digest(chunk: int, start: int, stop: int, stored: dict[str, np.ndarray]) -> bytes:
    """sha256 of one inner chunk: its index and rows, then each array (by name) with its bytes."""
    digest = hashlib.sha256(_CHUNK_TAG + _u64(chunk, start, stop))
    for name in sorted(stored):
        values = np.ascontiguousarray(stored[name])
        dtype = values.dtype.newbyteorder("<") if values.dtype.byteorder == ">" else values.dtype
        header = f"{name}\0{dtype.str}\0{values.shape}\0".encode()
        digest.update(_u64(len(header)) + header)
        digest.update(values.astype(dtype, copy=False).reshape(-1).view(np.uint8))  # the bytes, not a copy
    return digest.digest()


def shard_chunk_digests(stored: dict[str, np.ndarray], start: int, stop: int, rows_per_chunk: int,
                        map=map) -> np.ndarray:
    """(chunks, 32) uint8: the digest of every inner chunk of rows [start, stop) (start chunk-aligned).
    ``map`` (a thread pool's) hashes the chunks in parallel: sha256 releases the GIL."""

    def one(lo: int) -> bytes:
        hi = min(lo + rows_per_chunk, stop)
        piece = {name: values[lo - start:hi - start] for name, values in stored.items()}
        return chunk_digest(lo // rows_per_chunk, lo, hi, piece)

    digests = [np.frombuffer(d, np.uint8) for d in map(one, range(start, stop, rows_per_chunk))]
    return np.stack(digests) if digests else np.zeros((0, DIGEST_BYTES), np.uint8)


def content_digest(digests: np.ndarray) -> str:
    """One digest over every chunk digest, in chunk order."""
    digests = np.ascontiguousarray(digests, dtype=np.uint8)
    return f"{ALGORITHM}:" + hashlib.sha256(_CONTENT_TAG + _u64(len(digests)) + digests.tobytes()).hexdigest()


def describe_array(array) -> dict:
    """What a teacher array's zarr.json says about its values: shape, dtype, chunking, fill value."""
    dtype = np.dtype(array.dtype)
    return {
        "shape": [int(n) for n in array.shape],
        "dtype": dtype.str,
        "chunks": [int(n) for n in array.chunks],
        "shards": [int(n) for n in array.shards] if array.shards else None,
        "fill_value": np.asarray(array.fill_value, dtype=dtype).tobytes().hex(),
    }


def metadata_digest(name: str, attrs: dict, arrays: dict[str, dict], dataset: dict) -> str:
    """sha256 of everything that says what the stored values mean (``describe_array`` per array)."""
    record = {
        "teacher": name,
        "attributes": {k: v for k, v in attrs.items() if k not in VOLATILE_FIELDS},
        "arrays": arrays,
        "dataset": dataset,
    }
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=True)
    return f"{ALGORITHM}:" + hashlib.sha256(_METADATA_TAG + text.encode()).hexdigest()


def teacher_digest(metadata: str, content: str) -> str:
    """The one value that names a complete teacher: its metadata and its content together."""
    return f"{ALGORITHM}:" + hashlib.sha256(_TEACHER_TAG + f"{metadata}\n{content}".encode()).hexdigest()


def integrity_record(metadata: str, content: str) -> dict:
    return {"algorithm": ALGORITHM, "metadata": metadata, "content": content,
            "teacher": teacher_digest(metadata, content)}
