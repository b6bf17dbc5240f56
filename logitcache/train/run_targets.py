"""Which targets a run learnt from: each store it reads, its teachers' digests and its samples'
fingerprint, recorded beside the options so that a ``--resume`` (or a pipeline's skip) refuses a
store whose teacher was re-dumped since, instead of training on, or reporting, other targets.

    >>> record = targets_record(config, store)   # {"store": {"path": ..., "teachers": {"default": "sha256:..."},
    ...                                          #            "samples": "sha256:..."}, "val_store": None}
    >>> targets_changes(recorded["targets"], record)   # [] when the run read exactly these targets

Everything here is stored metadata (a teacher's ``integrity.teacher`` digest, the store's dataset
fingerprint): no logit is read or hashed. A teacher without a digest (a store before format v3, or
one still being written under ``--allow-partial``) is named by ``Teacher.identity``, its settings
and the start of its dump. A store the run does not read (an image run's label-only loss) is not
recorded, so rewriting it refuses nothing; a token store is always read (its sequences).
"""

from __future__ import annotations

from ..distributed import Distributed
from ..errors import LogitCacheError
from ..losses import loss_spec, token_loss
from ..store import open_store


def agreed_targets_record(config, store, tokens: bool, dist: Distributed) -> dict:
    """Rank 0's ``targets_record`` on every rank (it writes the record; every rank checks a --resume
    against the same one); an error on rank 0 is raised on every rank."""
    record, error = None, None
    if dist.is_main:
        try:
            record = targets_record(config, store, tokens)
        except LogitCacheError as err:
            error = err
    dist.agree(error)
    return dist.broadcast(record)


def targets_record(config, store, tokens: bool) -> dict:
    """What ``config`` (resolved) trains from: per store flag (``store``, ``val_store``) the path,
    the teachers it reads with their digests, and its samples' fingerprint; None for a store the
    run does not give or read. ``store``: --store, opened (``resolve``); ``tokens``: a token run."""
    record = {"store": None, "val_store": None}
    if store is not None:
        names = _read_teachers(config, tokens)
        if names is not None or tokens:
            record["store"] = _store_entry(config.store, store, names)
    if config.val_store:
        try:
            val_store = open_store(config.val_store, storage_options=config.storage_options)
        except LogitCacheError:  # the task's own read says why, in its words
            return record
        name = config.teacher if config.teacher in val_store.all_teacher_names else None
        record["val_store"] = _store_entry(config.val_store, val_store,
                                           [name] if val_store.all_teacher_names else [])
    return record


def _read_teachers(config, tokens: bool) -> list | None:
    """The teacher names the run reads from --store ([None]: the store's only one), or None when it
    reads none (a label-only image run)."""
    if tokens:
        return [config.teacher] if token_loss(config.loss).needs_teacher else []
    if not (loss_spec(config.loss).needs_teacher or config.feature_loss):
        return None
    return [name for name in (config.teacher or "").split(",") if name] or [None]


def _store_entry(path: str, store, names: list) -> dict:
    """A store's entry: the teachers (by name, as read: a name left out is the store's only one)
    with their digests. Read with ``check=False``: the attributes only, no chunk digest; a name the
    store does not resolve is left out here and refused by the task when it reads the store."""
    teachers = {}
    for name in names:
        try:
            teacher = store.teacher(name if name is not None else _only_teacher(store), check=False)
        except LogitCacheError:
            continue
        teachers[teacher.name] = teacher.identity
    return {"path": path, "teachers": teachers, "samples": store.dataset.get("fingerprint")}


def _only_teacher(store) -> str | None:
    """The teacher a run that names none reads: the only complete one, or the only one if none is
    complete (``lm.open_teacher``, ``paired_data``); None lets ``store.teacher`` say why there is none."""
    complete, every = store.teacher_names, store.all_teacher_names
    if len(complete) == 1:
        return complete[0]
    return every[0] if not complete and len(every) == 1 else None


def targets_changes(recorded: dict | None, current: dict) -> list[str]:
    """How ``current`` (``targets_record``'s) differs from the targets a run ``recorded``, one phrase
    each ("teacher 'default' in s.zarr is now sha256:ab12.. (the run learnt from sha256:cd34..)");
    empty when they are the same, or when the run recorded none (a run from before this record)."""
    if not isinstance(recorded, dict):
        return []
    changes = []
    for flag in ("store", "val_store"):
        before, after = recorded.get(flag), current.get(flag)
        if isinstance(before, dict) and isinstance(after, dict):
            changes += _store_changes(before, after)
    return changes


def _store_changes(before: dict, after: dict) -> list[str]:
    where = after["path"]
    old, new = before.get("teachers") or {}, after["teachers"]
    changes = []
    for name in old:
        if name not in new:
            if new:  # else none resolves now: the task's own read says why (no such teacher, several, ...)
                changes.append(f"{where} no longer serves the teacher {name!r} the run learnt from (it reads "
                               f"{', '.join(map(repr, new))})")
        elif new[name] != old[name]:
            changes.append(f"teacher {name!r} in {where} is now {short(new[name])} "
                           f"(the run learnt from {short(old[name])})")
    if not changes and before.get("samples") != after.get("samples"):
        changes.append(f"{where} now holds other samples (fingerprint {short(after.get('samples'))}, "
                       f"the run learnt from {short(before.get('samples'))})")
    return changes


def short(digest: str | None) -> str:
    """A digest as a line shows it: its algorithm and first 12 hex digits."""
    if not digest:
        return "none"
    algorithm, _, value = digest.rpartition(":")
    return f"{algorithm}:{value[:12]}" if algorithm else value[:12]
