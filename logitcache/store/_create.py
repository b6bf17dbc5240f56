"""Make a teacher's group (its attribute, its empty arrays, in the order that keeps a kill safe), and
clear what a killed writer left of the shards still to write.

    >>> group = create_teacher_arrays(store.group["teachers"], "default", num_samples=N, num_classes=C,
    ...                               codec=get_codec("fp16"), layout=layout, settings={}, provenance={})

The group starts as ``creating`` and becomes ``writing`` only when every array exists, so a dump
killed half-way leaves something readers skip and the next dump (holding the lock) remakes.
"""

from __future__ import annotations

import zarr
import zarr.codecs

from ..codecs import Codec
from ._features import feature_array_specs
from ._integrity import CHUNK_DIGESTS_ARRAY, DIGEST_BYTES
from ._schema import (
    SHARD_DONE_ARRAY,
    STATUS_CREATING,
    STATUS_WRITING,
    TEACHER_ATTR,
    VIEW_HASHES_ARRAY,
    VIEW_PARAMS_ARRAY,
    Layout,
)
from ._tokens import SHARD_STATS, SHARD_STATS_ARRAY, token_extra_arrays


def compressors(shuffle: str = "shuffle") -> list:
    """Blosc/zstd then a crc32c checksum on every chunk (the sharding index has its own)."""
    return [zarr.codecs.BloscCodec(cname="zstd", clevel=5, shuffle=shuffle), zarr.codecs.Crc32cCodec()]


def teacher_status(group: zarr.Group) -> str:
    attrs = group.attrs.get(TEACHER_ATTR)
    return str(attrs.get("status")) if isinstance(attrs, dict) else STATUS_CREATING


def create_teacher_arrays(
    teachers: zarr.Group,
    name: str,
    *,
    num_samples: int,
    num_classes: int,
    codec: Codec,
    layout: Layout,
    settings: dict,
    provenance: dict,
    run: dict | None = None,
    views: dict | None = None,
    tokens: bool = False,
    features: list[dict] | None = None,
) -> zarr.Group:
    """Create a teacher's empty arrays, then mark it ``writing`` (resumable) as the last step.

    ``views`` (for multi-view teachers): ``count`` K, ``params`` (the view_params column names),
    ``hashes`` (the hash name, or None for no view_hashes array), plus what describes the views.
    ``tokens``: a token store's teacher, whose rows are positions and which may keep more per row
    (``_tokens.token_extra_arrays``) and its shards' statistics.
    ``features`` (format v4): the records of the named features (``_features.py``), one array each.
    A codec whose ids are bit-packed (format v5) has their bits recorded as ``index_bits``; one
    whose ids are kept as gaps (format v6), ``index_gaps``; one that keeps a log-probability sum per
    row (format v7), ``logprob_sum``.
    """
    # Status "creating" until every array exists: a dump killed part-way leaves a group that
    # readers skip and the next dump (holding the teacher's lock) deletes and makes again.
    attrs = {
        "status": STATUS_CREATING,
        "num_classes": num_classes,
        "codec": codec.name,
        **({"index_bits": codec.index_bits} if codec.index_bits is not None else {}),
        **({"index_gaps": True} if codec.index_gaps else {}),
        **({"logprob_sum": True} if codec.logprob_sum else {}),
        "layout": layout.to_dict(),
        "settings": settings,
        "provenance": provenance,
        "metrics": None,
        "run": run or {},
        "integrity": {"algorithm": "sha256", "metadata": None, "content": None, "teacher": None},
        **({"views": views} if views else {}),
        **({"features": features} if features else {}),
    }
    group = teachers.create_group(name, attributes={TEACHER_ATTR: attrs})
    per_sample = (views["count"],) if views else ()
    for array_name, (dtype, row, fill_value) in _content_arrays(codec, num_classes, views, tokens, features).items():
        row = (*per_sample, *row)
        group.create_array(
            array_name,
            shape=(num_samples, *row),
            dtype=dtype,
            chunks=(layout.rows_per_chunk, *row),
            shards=(layout.rows_per_shard, *row),
            compressors=compressors(),
            fill_value=fill_value,
        )
    _create_ledgers(group, layout, num_samples, tokens)
    group.attrs[TEACHER_ATTR] = {**attrs, "status": STATUS_WRITING}
    return group


def _content_arrays(codec: Codec, num_classes: int, views: dict | None, tokens: bool,
                    features: list[dict] | None) -> dict[str, tuple]:
    """Each content array's (dtype, per-row shape, fill value): the codec's, the views' parameters
    and hashes, a token teacher's extras, the features' (the view axis is added by the caller)."""
    arrays = {name: (spec.dtype, (spec.width or num_classes,) if spec.per_class else (), spec.fill_value)
              for name, spec in codec.arrays.items()}
    if views:
        arrays[VIEW_PARAMS_ARRAY] = (views.get("dtype", "float16"), (len(views["params"]),), float("nan"))
        if views.get("hashes"):
            arrays[VIEW_HASHES_ARRAY] = ("uint64", (), 0)
    if tokens:
        arrays.update({name: (dtype, (), fill) for name, (dtype, fill) in token_extra_arrays(codec.name).items()})
    arrays.update(feature_array_specs(features or []))
    return arrays


def _create_ledgers(group: zarr.Group, layout: Layout, num_samples: int, tokens: bool) -> None:
    """The small per-shard arrays: chunk digests, the done ledger, a token teacher's statistics."""
    chunks_per_shard = layout.rows_per_shard // layout.rows_per_chunk
    group.create_array(  # one zarr chunk per shard: the shard's writer writes its digests whole
        CHUNK_DIGESTS_ARRAY, shape=(-(-num_samples // layout.rows_per_chunk), DIGEST_BYTES), dtype="uint8",
        chunks=(chunks_per_shard, DIGEST_BYTES), compressors=[zarr.codecs.Crc32cCodec()], fill_value=0,
    )
    group.create_array(
        SHARD_DONE_ARRAY, shape=(layout.num_shards(num_samples),), dtype="uint8", chunks=(1,),
        compressors=[zarr.codecs.Crc32cCodec()], fill_value=0,
    )
    if tokens:  # one chunk per shard, written by the shard's writer just before its ledger entry
        group.create_array(
            SHARD_STATS_ARRAY, shape=(layout.num_shards(num_samples), len(SHARD_STATS)), dtype="float64",
            chunks=(1, len(SHARD_STATS)), compressors=[zarr.codecs.Crc32cCodec()], fill_value=float("nan"),
        )


def chunk_key_shard(key: str, arrays) -> tuple[str | None, str | None]:
    """(array, shard) of a chunk object's key relative to the teacher group (``ARRAY/c/SHARD/...``;
    ARRAY may be a path, ``features/NAME``), or (None, None) for any other key."""
    for array in arrays:
        if key.startswith(array + "/c/"):
            return array, key[len(array) + 3:].split("/")[0]
    return None, None


def clear_unfinished(teacher, pending: list[int]) -> int:
    """Delete what a killed writer may have left of the shards still to write: zarr's ``*.partial``
    temp files and any chunk objects of those shards (even corrupt ones), so each is written
    from nothing and the resumed store holds exactly an uninterrupted dump's bytes. Only for the
    holder of the teacher's lock. Returns how many objects were removed."""
    store, prefix = teacher.group.store_path.store, teacher.group.store_path.path
    pending_keys = {str(shard) for shard in pending}
    arrays = [*teacher.content_arrays, CHUNK_DIGESTS_ARRAY]

    def unfinished(key: str) -> bool:
        if key.endswith(".partial"):
            return True
        array, shard = chunk_key_shard(key[len(prefix):].strip("/"), arrays)  # ARRAY/c/SHARD[/...]
        return array is not None and shard in pending_keys

    async def sweep() -> int:
        orphans = [key async for key in store.list_prefix(prefix + "/") if unfinished(key)]
        for key in orphans:
            await store.delete(key)
        return len(orphans)

    return zarr.core.sync.sync(sweep())
