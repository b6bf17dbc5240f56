"""Where a dump writes: the store and the teacher, opened or made under their locks, and what a
rerun of the same command continues.

    >>> store, teacher = open_for_dump(config, source, num_classes, settings, provenance)

Called by the holder of the teacher's lock (``dump.run._dump``), so whatever stands at the teacher's
path is its own to delete: an ``--overwrite``, or a creation a killed dump left unfinished.

A token dump's corpus comes as a stream (``dump/token_dump.TokenInputs``): a new store is written from
it a block at a time, an existing one is compared with it a block at a time, and the corpus's
description, complete once that pass has ended, is what the teacher's provenance records. A
token store's creation killed midway is finished by the same command, mid-corpus from its last
progress record (``create_streamed_token_store(resume=True)``); an image store's is deleted and
written again. The teacher's shards resume one by one.
"""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np

from ..codecs import get_new_codec
from ..errors import (
    CorruptStoreError,
    LogitCacheError,
    NotAStoreError,
    StoreExistsError,
    StoreMismatchError,
    StoreNotFoundError,
)
from ..store import (
    STATUS_CREATING,
    Layout,
    LogitStore,
    Teacher,
    check_teacher,
    clear_unfinished,
    create_store,
    holds_files,
    is_unfinished_creation,
    local_path,
    open_store,
    remove_location,
    writer_lock,
)
from ..store._root import create_streamed_token_store
from ..store._tokens import StoredSequences, stored_token_fingerprint


def open_for_dump(config, source, num_classes: int, settings: dict, provenance: dict) -> tuple:
    """Open or create the store and the teacher, holding the store's metadata lock meanwhile
    (another teacher's dump may be creating the same new store this instant)."""
    with writer_lock(config.store, "store", config.storage_options, wait=120,
                     what=f"the metadata of {config.store}"):
        store = _open_or_create_store(config, source)
        store.remove_partial_metadata()
        if hasattr(source, "stream"):  # a token corpus, described once read
            provenance = {**provenance, "dataset": source.description}
        return store, _open_or_create_teacher(store, config, num_classes, settings, provenance)


def _open_or_create_store(config, source) -> LogitStore:
    location, options = config.store, config.storage_options
    try:
        store = open_store(location, read_only=False, storage_options=options)
    except LogitCacheError as err:
        if not _is_absent_or_unfinished(location, err, options):
            raise
        unfinished = is_unfinished_creation(location, options)
        if hasattr(source, "stream"):  # an unfinished token store: its whole chunks are kept, the rest written
            return create_streamed_token_store(location, source.stream, vocab_size=source.vocab_size,
                                               tokenizer=source.tokenizer.describe(),
                                               describe=lambda: source.description, storage_options=options,
                                               resume=unfinished)
        if unfinished:
            remove_location(location, options)
        return create_store(location, keys=source.keys, labels=source.labels, dataset=source.describe(),
                            class_names=source.classes, storage_options=options)
    try:
        if hasattr(source, "stream"):
            _check_same_tokens(store, source)
        else:
            store.check_dataset(source.keys, source.labels)
    except StoreMismatchError as err:
        raise StoreMismatchError(f"{err}; a store holds one dataset — dump into another STORE path") from None
    return store


def _check_same_tokens(store: LogitStore, source) -> None:
    """A token dump into an existing store must feed the teacher exactly the stored sequences: the
    stored ones must be the fingerprint's (the teacher reads its batches from them), and the corpus
    must give them again, block by block."""
    if not store.is_tokens:
        raise StoreMismatchError(f"{store.location} holds labelled samples, not token sequences")
    if stored_token_fingerprint(store.group, store.vocab_size, store.location) != store.fingerprint:
        raise CorruptStoreError(f"{store.location}: the stored tokens, loss mask, lengths or keys do not match the "
                                "store's token fingerprint; the store was damaged or edited")
    sequences, differs = StoredSequences(store).differs_from(source.stream)
    stored, length = store.dataset, source.stream.seq_len
    if differs or (length, source.vocab_size) != (stored["seq_len"], stored["vocab_size"]):
        why = (f"{sequences} sequences of {length} tokens (vocabulary {source.vocab_size}) "
               f"where the store has {stored['num_samples']} of {stored['seq_len']} ({stored['vocab_size']})")
        same_shape = (sequences, length, source.vocab_size) == (
            stored["num_samples"], stored["seq_len"], stored["vocab_size"])
        raise StoreMismatchError(f"the token sequences differ from store {store.location}'s: "
                                 + ("same shape, other tokens, mask or keys" if same_shape else why))


def _is_absent_or_unfinished(location: str, err: Exception, options: dict) -> bool:
    if isinstance(err, StoreNotFoundError):
        return True
    path = local_path(location)
    empty_dir = path is not None and path.is_dir() and not holds_files(path)
    return isinstance(err, NotAStoreError) and (empty_dir or is_unfinished_creation(location, options))


def _open_or_create_teacher(store, config, num_classes, settings, provenance) -> Teacher:
    """Resume the teacher, or (re)make it. Called with the teacher's lock held, so whatever is at
    its path is ours to delete: an overwrite, or a creation a killed dump left unfinished."""
    name = config.teacher_name
    if store.has_teacher(name) and not config.overwrite:
        try:
            existing = store.teacher(name, check=False)
        except CorruptStoreError as err:  # its metadata cannot be read: only --overwrite may replace it
            raise StoreExistsError(f"{err} (pass --overwrite to dump teacher {name!r} again)") from None
        if existing.status != STATUS_CREATING:
            return _resumable_teacher(store, existing, num_classes, settings)
    store.delete_teacher(name)  # also any leftovers of a deletion or creation cut short
    codec = get_new_codec(config.codec, num_classes)
    return store.create_teacher(name, num_classes=num_classes, codec=codec,
                                layout=Layout.from_dict(settings["layout"]), settings=settings,
                                provenance=provenance, run={"started_at": now_utc(), "sessions": 0, "seconds": 0.0},
                                views=settings.get("views"), features=settings.get("features"))


def _resumable_teacher(store, teacher: Teacher, num_classes: int, settings: dict) -> Teacher:
    """An existing teacher this dump may continue: unfinished, valid, made with the same settings."""
    name = teacher.name
    try:
        check_teacher(teacher)
    except CorruptStoreError as err:
        raise StoreExistsError(f"{err} (pass --overwrite to dump teacher {name!r} again)") from None
    same = teacher.num_classes == num_classes and teacher.attrs["settings"] == settings
    if teacher.is_complete and same:
        return teacher  # the same command again, after it finished (or was killed just after): nothing to do
    if teacher.is_complete:
        raise StoreExistsError(
            f"{store.location} already holds a complete teacher {name!r} made with other settings; "
            "pass --overwrite to replace it or --teacher-name to add another"
        )
    if teacher.num_classes != num_classes:
        raise StoreMismatchError(
            f"teacher {name!r} in {store.location} has {teacher.num_classes} classes but the model outputs {num_classes}"
        )
    if teacher.attrs["settings"] != settings:
        old = teacher.attrs["settings"]
        differ = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        raise StoreMismatchError(
            f"an unfinished dump of teacher {name!r} in {store.location} used other settings "
            f"({', '.join(differ)} differ); rerun the original command, or pass --overwrite"
        )
    clear_unfinished(teacher, [int(s) for s in np.flatnonzero(~teacher.shard_done())])
    return teacher


def mark_dumped(teacher: Teacher, lock, dist, seconds: float, metrics, **record) -> None:
    """Rank 0 adds this session to the teacher's run record (``record``: more fields for it) and marks
    the teacher complete with ``metrics()``; every rank learns whether that worked (a lost lock, a
    failed write) at the barrier, so none returns success alone."""
    error = None
    if dist.is_main:
        try:
            lock.ensure_held()
            run = teacher.attrs["run"]
            run.update(finished_at=now_utc(), sessions=run["sessions"] + 1,
                       seconds=round(run["seconds"] + seconds, 3), processes=dist.world_size, **record)
            teacher.mark_complete(metrics=metrics(), run=run)
        except Exception as err:  # every rank must reach the barrier; LogitCacheErrors are one line there
            error = err
    dist.agree(error)


def now_utc() -> str:
    """UTC now, as the run record writes times."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
