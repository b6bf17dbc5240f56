"""Verify a store end to end: every chunk's checksum, completeness, finiteness, fingerprint.

    >>> report = verify_store("digits.zarr", dataset_keys=keys, dataset_labels=labels)
    >>> report.ok, report.problems       # problems name the array, shard and rows that failed

Reads every byte the store holds, shard by shard, so memory stays at one shard.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import LogitCacheError
from ._features import bad_feature_rows
from ._fingerprint import dataset_fingerprint, describe_mismatch
from ._store import open_store
from ._tokens import check_stored_sequences


@dataclass
class VerifyReport:
    location: str
    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_store(location, dataset_keys=None, dataset_labels=None, storage_options=None,
                 teachers: list[str] | None = None) -> VerifyReport:
    """Check a store (all teachers, or the ones named); problems are collected, not raised.

    Raises:
        StoreNotFoundError, NotAStoreError, StoreVersionError: not a readable store at all.
    """
    store = open_store(location, storage_options=storage_options)
    report = VerifyReport(str(location))
    readable = _verify_tokens(store, report) if store.is_tokens else _verify_samples(store, report, dataset_keys,
                                                                                        dataset_labels)
    if not readable:
        return report
    if not store.all_teacher_names:
        report.problems.append("the store holds no teacher")
    for name in teachers or store.all_teacher_names:
        try:
            _verify_teacher(store.teacher(name), report)
        except LogitCacheError as err:
            report.problems.append(str(err))
        except Exception as err:  # whatever an edited store makes zarr raise: a problem, never a crash
            report.problems.append(f"teacher {name!r} cannot be read: {type(err).__name__}: {err}")
    return report


def _verify_samples(store, report: VerifyReport, dataset_keys, dataset_labels) -> bool:
    """The keys and labels against the store's fingerprint, and against a given dataset's; False
    when they cannot be read at all."""
    try:
        keys, labels = store.keys, store.labels
    except LogitCacheError as err:
        report.problems.append(str(err))
        return False
    if dataset_fingerprint(keys, labels) != store.fingerprint:
        report.problems.append("keys/labels do not match the fingerprint recorded in the store")
    else:
        report.checked.append(f"{len(keys)} keys and labels match fingerprint {store.fingerprint[:19]}…")
    if dataset_keys is not None:
        why = describe_mismatch(keys, labels, dataset_keys, np.asarray(dataset_labels))
        if why:
            report.problems.append(f"dataset differs from the store: {why}")
        else:
            report.checked.append("the given dataset matches the store's fingerprint")
    return True


def _verify_tokens(store, report: VerifyReport) -> bool:
    """A token store's sequences against its token fingerprint and the format's rules, streamed a
    block of chunks at a time (memory is a block's, not the corpus's); False when they fail."""
    try:
        counts = check_stored_sequences(store)
    except LogitCacheError as err:
        report.problems.append(str(err))
        return False
    report.checked.append(f"{counts['num_sequences']} sequences of {counts['seq_len']} positions "
                          f"({counts['num_tokens']} tokens, {counts['num_targets']} targets) match token fingerprint "
                          f"{store.fingerprint[:19]}…")
    return True


def _verify_teacher(teacher, report: VerifyReport) -> None:
    label = f"teacher {teacher.name!r}"
    if not teacher.is_complete:
        report.problems.append(f"{label}: status is {teacher.status!r}, not 'complete'")
    done = teacher.shard_done()
    bad_before = len(report.problems)
    for shard in range(teacher.num_shards):
        start, stop = teacher.layout.shard_rows(shard, teacher.num_samples)
        where = f"{label}: shard {shard} (rows {start}-{stop})"
        if not done[shard]:
            report.problems.append(f"{where} was never written")
            continue
        try:
            rows = np.flatnonzero(~teacher.rows_ok(teacher.read_stored(start, stop)))
            if teacher.views:
                params = teacher.read_view_params(start, stop)
                rows = np.union1d(rows, np.flatnonzero(~np.isfinite(params).reshape(len(params), -1).all(axis=1)))
                if teacher.has_view_hashes:
                    teacher.read_view_hashes(start, stop)  # checksums only: values need the dataset
            if teacher.features:
                rows = np.union1d(rows, bad_feature_rows(teacher, start, stop))
        except LogitCacheError as err:
            report.problems.append(f"{err} [shard {shard}]")
            continue
        if rows.size:
            report.problems.append(f"{where}: {rows.size} rows are not finite (first: row {start + rows[0]})")
    if len(report.problems) > bad_before:
        return
    report.checked.append(f"{label}: {teacher.num_shards} shards read, checksums and values good")
    if teacher.has_digests:
        report.checked.append(f"{label}: every chunk matches its position-bound digest; metadata digest good; "
                              f"teacher digest {teacher.digest}")
    else:
        report.checked.append(f"{label}: written before format v3, so it has chunk checksums but no "
                              "position-bound digests (a swapped chunk or edited metadata cannot be detected)")
