"""Named teacher features (format v4): what a teacher computed on the way to its logits, kept per sample.

    >>> record = {"name": "emb", "layer": "30", "reduce": "pool", "shape": [64], "codec": "fp16"}
    >>> check_feature_records([record])               # ValueError naming what is wrong
    >>> feature_array_name("emb")                     # "features/emb", an array of the teacher group
    >>> stored = encode_feature(record, values)       # float32 (n, 64) -> float16 (n, 64)
    >>> decode_feature(record, stored)                # float32 (n, 64)

A teacher that holds features records them, in order, in its attribute's ``features`` list; each is
one array ``features/NAME`` of shape (N, *shape), or (N, V, *shape) for a multi-view teacher, cut into
the same chunks and shards as the logits. Being content arrays of the teacher, they are covered by its
chunk digests, its read-back checks, its shard ledger and its resume, exactly like the logits.

What each ``reduce`` keeps per sample (the torch side is ``logitcache/features/``):

- ``pool``: the global average of a (C, H, W) map, or a (C,) output as is: C values (RKD's embedding)
- ``attention``: mean over channels of the squared activations, L2-normalised over H·W: (H, W) (AT)
- ``gram``: the (C, C) channel correlation F·Fᵀ of the (C, H·W) map, each row L2-normalised (ICKD)
- ``map``: the whole (C, H, W) map (FitNet, ReviewKD; ICKD and AT can compute theirs from it)

Values are stored with a dense codec (``fp16`` by default, ``bf16`` or ``fp32``) over flat rows, so
unwritten rows decode to NaN like the logits do. This module needs numpy only.
"""

from __future__ import annotations

import math
import re

import numpy as np

from ..codecs import get_codec
from ..errors import NonFiniteLogitsError, SpecError

FEATURES_GROUP = "features"
REDUCES = ("pool", "attention", "gram", "map")
FEATURE_CODECS = ("fp16", "bf16", "fp32")
NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAX_VALUES = 1 << 24  # values per sample of one feature (64 MiB as float32)
FIELDS = ("name", "layer", "reduce", "shape", "codec")


def feature_array_name(name: str) -> str:
    """The teacher-group path of feature ``name``'s array."""
    return f"{FEATURES_GROUP}/{name}"


def check_feature_records(records) -> list[dict]:
    """``records`` if it is a well-formed ``features`` list; else ValueError naming the problem."""
    if not isinstance(records, list) or not records:
        raise ValueError("features is not a non-empty list")
    seen = set()
    for record in records:
        if not isinstance(record, dict) or sorted(record) != sorted(FIELDS):
            raise ValueError(f"a features entry is not an object with exactly {', '.join(FIELDS)}")
        name = record["name"]
        if not isinstance(name, str) or not NAME_PATTERN.match(name) or name in seen:
            raise ValueError(f"feature name {name!r} is not a unique identifier")
        seen.add(name)
        if not isinstance(record["layer"], str) or record["reduce"] not in REDUCES:
            raise ValueError(f"feature {name!r}: layer must be a string and reduce one of {', '.join(REDUCES)}")
        if record["codec"] not in FEATURE_CODECS:
            raise ValueError(f"feature {name!r}: codec {record['codec']!r} is not one of {', '.join(FEATURE_CODECS)}")
        shape = record["shape"]
        if (not isinstance(shape, list) or not 1 <= len(shape) <= 4
                or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape)
                or math.prod(shape) > MAX_VALUES):
            raise ValueError(f"feature {name!r}: shape {shape!r} is not 1 to 4 positive sizes "
                             f"of at most {MAX_VALUES} values")
    return records


def feature_codec(name: str):
    """The dense codec features are stored with (fp16, bf16 or fp32).

    Raises:
        SpecError: another codec; features are activations, not log-probabilities or classes.
    """
    if name not in FEATURE_CODECS:
        raise SpecError(f"--feature-codec {name!r} cannot store features; choose {', '.join(FEATURE_CODECS)} "
                        "(u8, topk and sample encode class distributions, not activations)")
    return get_codec(name)


def feature_array_specs(records: list[dict], views: int = 0) -> dict[str, tuple[str, tuple, float | int]]:
    """Every feature array: name -> (dtype, per-sample shape, fill value); ``views`` > 0 adds a view axis."""
    specs = {}
    for record in records:
        spec = get_codec(record["codec"]).arrays["logits"]
        row = ((views,) if views else ()) + tuple(record["shape"])
        specs[feature_array_name(record["name"])] = (spec.dtype, row, spec.fill_value)
    return specs


def encode_feature(record: dict, values: np.ndarray) -> np.ndarray:
    """float32 (n, [V,] *shape) -> the stored array (the codec applied to flat rows).

    Raises:
        SpecError: fp16 cannot hold the values (the message names the feature and the fix).
    """
    codec = get_codec(record["codec"])
    rows = np.ascontiguousarray(values, dtype=np.float32).reshape(len(values), -1)
    try:
        stored = codec.encode(rows)["logits"]
    except SpecError:
        peak = float(np.abs(rows).max(initial=0.0))
        raise SpecError(f"feature {record['name']!r} (layer {record['layer']}) reaches {peak:.4g}, beyond "
                        f"{record['codec']}'s range; dump it with --feature-codec bf16 or fp32") from None
    return stored.reshape(values.shape)


def encode_features(records: list[dict], features: dict[str, np.ndarray], keys) -> dict[str, np.ndarray]:
    """One shard's float32 features by name -> its stored arrays by path (``keys``: the shard's sample keys).

    Raises:
        ValueError: not exactly the recorded features. NonFiniteLogitsError: a NaN/inf value, naming the samples.
    """
    if sorted(features) != sorted(f["name"] for f in records):
        raise ValueError(f"a shard needs features {sorted(f['name'] for f in records)}, got {sorted(features)}")
    encoded = {}
    for record in records:
        values = features[record["name"]]
        bad = np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(axis=1))
        if bad.size:
            raise NonFiniteLogitsError(f"the teacher's feature {record['name']!r} (layer {record['layer']}) is NaN/inf "
                                       f"for {bad.size} samples (first key: {keys[bad[0]]!r}); nothing was marked "
                                       "complete")
        encoded[feature_array_name(record["name"])] = encode_feature(record, values)
    return encoded


def decode_feature(record: dict, stored: np.ndarray) -> np.ndarray:
    """The stored array -> float32 of the same shape."""
    codec = get_codec(record["codec"])
    flat = codec.decode({"logits": np.asarray(stored).reshape(len(stored), -1)})
    return flat.reshape(stored.shape)


def unwritten_rows(record: dict, stored: np.ndarray) -> np.ndarray:
    """(n,) True where a sample's feature decodes to a value that is not finite (never written: NaN)."""
    return ~np.isfinite(decode_feature(record, stored).reshape(len(stored), -1)).all(axis=1)


def bytes_per_sample(record: dict, views: int = 1) -> int:
    """Uncompressed bytes one sample's feature takes (all its views)."""
    itemsize = np.dtype(get_codec(record["codec"]).arrays["logits"].dtype).itemsize
    return views * itemsize * math.prod(record["shape"])


def read_features(teacher, start: int, stop: int, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """A teacher's decoded float32 features by name for rows [start, stop): (n, [K,] *shape), checked as
    every read is (CRC-32C, position-bound digests) and refused where a row was never written."""
    records = [f for f in teacher.features if names is None or f["name"] in names]
    stored = teacher.read_stored(start, stop, {feature_array_name(f["name"]): None for f in records})
    return decode_features(teacher, stored, start, stop, names)


def decode_features(teacher, stored: dict[str, np.ndarray], start: int, stop: int,
                    names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Rows [start, stop) of a teacher's stored feature arrays (by path) -> decoded float32 by name, refused
    where a row was never written: what ``read_features`` gives once the checked read is done."""
    records = [f for f in teacher.features if names is None or f["name"] in names]
    missing = np.zeros(stop - start, bool)
    for record in records:
        missing |= unwritten_rows(record, stored[feature_array_name(record["name"])])
    teacher.require_rows(stored, start, stop, missing, "features")
    return {f["name"]: decode_feature(f, stored[feature_array_name(f["name"])]) for f in records}


def bad_feature_rows(teacher, start: int, stop: int) -> np.ndarray:
    """Rows in [start, stop) (offsets) where some feature is not finite: for ``verify``, which reports, not raises."""
    stored = teacher.read_stored(start, stop, {feature_array_name(f["name"]): None for f in teacher.features})
    bad = np.zeros(stop - start, bool)
    for record in teacher.features:
        bad |= unwritten_rows(record, stored[feature_array_name(record["name"])])
    return np.flatnonzero(bad)


def nbytes_features(teacher) -> dict[str, int]:
    """Bytes each feature's array takes in the store (compressed, with shard indexes), by name."""
    return {f["name"]: int(teacher.feature_arrays[feature_array_name(f["name"])].nbytes_stored())
            for f in teacher.features}
